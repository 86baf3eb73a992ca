"""Stopping a service waits for its cancelled background tasks, but not forever."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from mesh.app import _stopped


async def test_a_task_that_swallows_its_cancellation_is_logged_and_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:  # as redis-py may in a blocked read: the cancellation is lost
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()

    async def polite() -> None:
        await asyncio.sleep(60)

    tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(polite(), name="polite")]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="mesh.app"):
        await _stopped(tasks, within=0.2)
    assert time.monotonic() - started < 5
    assert tasks[1].cancelled()
    [record] = [
        r for r in caplog.records if r.getMessage() == "a background task did not stop when cancelled"
    ]
    assert record.__dict__["task"] == "stubborn"
    assert "test_mesh_stop.py" in record.__dict__["at"]
    release.set()
    await asyncio.wait(tasks)
