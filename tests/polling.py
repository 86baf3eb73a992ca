"""Waiting for something a test cannot await directly (background work, another process, a scrape): poll
until it holds, with a bound, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

WITHIN_SECONDS = 15.0
"""How long a test waits by default: far above what anything takes here, so only a real failure hits it."""


async def eventually(
    check: Callable[[], Any],
    what: str = "the condition",
    *,
    within: float = WITHIN_SECONDS,
    every: float = 0.05,
) -> Any:
    """Polls `check` (answering a value, or an awaitable of one) until it answers something truthy, and
    returns that; fails naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(every)


def eventually_blocking(
    check: Callable[[], Any],
    what: str = "the condition",
    *,
    within: float = WITHIN_SECONDS,
    every: float = 0.05,
) -> Any:
    """`eventually` for a test without an event loop."""
    deadline = time.monotonic() + within
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(every)
    return found
