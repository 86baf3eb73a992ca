"""The limit of turns starting at once: places taken in order of arrival, given back on cancellation, and
a limit that grows while latency shows no queue, shrinks to its floor when it does, and learns nothing
from calls that never used it whole."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import service_settings
from doubles.clock import FakeClock

from orchestrator.gate import StartLimit
from orchestrator.settings import OrchestratorSettings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_clock() -> FakeClock:
    """Time from 0, so that the latencies the limit measures are exactly those the tests set."""
    return FakeClock(EPOCH)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_no_more_than_the_limit_run_and_the_others_go_in_order_of_arrival() -> None:
    limit = StartLimit(2, 2)
    release = {name: asyncio.Event() for name in "abcde"}
    started: list[str] = []

    async def call(name: str) -> None:
        async with limit.slot():
            started.append(name)
            await release[name].wait()

    tasks = [asyncio.create_task(call(name)) for name in "abcde"]
    await settle()
    assert started == ["a", "b"]
    assert (limit.in_flight, limit.waiting) == (2, 3)
    release["b"].set()
    await settle()
    assert started == ["a", "b", "c"]
    for event in release.values():
        event.set()
    await asyncio.gather(*tasks)
    assert started == ["a", "b", "c", "d", "e"]
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_a_waiter_cancelled_leaves_the_queue_and_one_handed_a_place_passes_it_on() -> None:
    limit = StartLimit(1, 1)
    hold = asyncio.Event()
    started: list[str] = []

    async def call(name: str) -> None:
        async with limit.slot():
            started.append(name)
            await hold.wait()

    async def first() -> None:
        await call("first")
        # Its place was just handed to "handed", which is cancelled before it could run: "last" has it.
        handed.cancel()

    holder = asyncio.create_task(first())
    gone = asyncio.create_task(call("gone"))
    handed = asyncio.create_task(call("handed"))
    last = asyncio.create_task(call("last"))
    await settle()
    gone.cancel()
    await settle()
    assert limit.waiting == 2  # "handed" and "last"
    hold.set()
    await asyncio.wait_for(asyncio.gather(holder, last), 5)  # a place lost with "handed" would hang "last"
    await asyncio.gather(gone, handed, return_exceptions=True)
    assert gone.cancelled()
    assert handed.cancelled()
    assert started == ["first", "last"]
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def at_once(limit: StartLimit, clock: FakeClock, calls: int, latency: float) -> None:
    """`calls` calls started together, each taking `latency` however many run."""
    done = asyncio.Event()

    async def call() -> None:
        async with limit.slot():
            await done.wait()

    tasks = [asyncio.create_task(call()) for _ in range(calls)]
    await settle()
    clock.advance(latency)
    done.set()
    await asyncio.gather(*tasks)


async def test_the_limit_grows_while_latency_shows_no_queue() -> None:
    clock = epoch_clock()
    limit = StartLimit(2, 5, clock=clock.time)
    for _ in range(10):
        await at_once(limit, clock, limit.limit, 0.020)  # a far memory: 20 ms whatever the load
    assert limit.limit == 5  # and no further than the ceiling


async def test_the_limit_shrinks_to_its_floor_when_latency_grows_with_the_calls() -> None:
    clock = epoch_clock()
    limit = StartLimit(5, 50, clock=clock.time)
    limit.limit = 12
    hold = asyncio.Event()

    async def call(latency: float) -> None:
        async with limit.slot():
            await hold.wait()
            clock.advance(latency)

    await call_alone(limit, clock, 0.002)  # the base: 2 ms
    calls = [asyncio.create_task(call(0.030)) for _ in range(40)]  # 30 ms each: mostly queueing
    await settle()
    hold.set()
    await asyncio.gather(*calls)
    assert limit.limit == 5


async def call_alone(limit: StartLimit, clock: FakeClock, latency: float) -> None:
    async with limit.slot():
        clock.advance(latency)


async def test_calls_fewer_than_the_limit_teach_it_nothing() -> None:
    clock = epoch_clock()
    limit = StartLimit(4, 16, clock=clock.time)
    for _ in range(20):
        await at_once(limit, clock, 3, 0.001)
    assert limit.limit == 4


async def test_a_failed_call_teaches_nothing_and_gives_its_place_back() -> None:
    clock = epoch_clock()
    limit = StartLimit(1, 8, clock=clock.time)
    with pytest.raises(RuntimeError):
        async with limit.slot():
            clock.advance(0.001)
            raise RuntimeError("memory is unavailable")
    assert (limit.limit, limit.in_flight, limit.base) == (1, 0, float("inf"))


async def test_the_base_latency_is_forgotten_after_two_windows() -> None:
    clock = epoch_clock()
    limit = StartLimit(1, 8, window_seconds=10, clock=clock.time)
    await call_alone(limit, clock, 0.001)
    assert limit.base == pytest.approx(0.001)
    clock.set(EPOCH + timedelta(seconds=15))  # the next window: the old lowest still counts
    await call_alone(limit, clock, 0.005)
    assert limit.base == pytest.approx(0.001)
    clock.set(EPOCH + timedelta(seconds=30))  # and no longer
    await call_alone(limit, clock, 0.004)
    assert limit.base == pytest.approx(0.004)


def test_a_floor_above_the_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        StartLimit(8, 4)


def test_settings_with_a_floor_above_the_ceiling_stop_start_up(tmp_path: Path) -> None:
    assert OrchestratorSettings(**service_settings(tmp_path, turn_starts_at_once=4, turn_starts_at_most=4))
    with pytest.raises(
        ValueError, match=r"turn_starts_at_once \(9\) must not exceed turn_starts_at_most \(8\)"
    ):
        OrchestratorSettings(**service_settings(tmp_path, turn_starts_at_once=9, turn_starts_at_most=8))
