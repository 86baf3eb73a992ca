"""mesh.quiet: background work waits for a gap between calls, and never falls further behind than allowed."""

from __future__ import annotations

import asyncio

from mesh.quiet import Quiet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_work_waits_for_a_gap_between_calls() -> None:
    clock = Clock()
    quiet = Quiet(clock)
    quiet.call_started()
    waiting = asyncio.create_task(quiet.wait(0.05, at_most=10))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # a call is being served
    quiet.call_ended()
    clock.now += 0.01
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the gap is not long enough yet
    clock.now += 0.05
    await asyncio.wait_for(waiting, 1)


async def test_a_stream_held_open_does_not_keep_the_service_busy() -> None:
    clock = Clock()
    quiet = Quiet(clock)
    quiet.call_started(streaming=True)
    clock.now += 1
    assert quiet.quiet_for() == 1
    await asyncio.wait_for(quiet.wait(0.05, at_most=10), 1)


async def test_without_gaps_work_runs_once_it_is_behind_by_at_most_and_keeps_running() -> None:
    clock = Clock()
    quiet = Quiet(clock)
    quiet.call_started()  # busy from now on
    first = asyncio.create_task(quiet.wait(0.05, at_most=10))
    await asyncio.sleep(0.01)
    clock.now += 9
    await asyncio.sleep(0.01)
    assert not first.done()
    clock.now += 1
    await asyncio.wait_for(first, 1)
    # Still busy: the next pieces do not wait another 10 s each (the work would never keep up).
    await asyncio.wait_for(quiet.wait(0.05, at_most=10), 0.5)
    # A gap: caught up; the next piece waits for a gap again.
    quiet.call_ended()
    clock.now += 1
    await asyncio.wait_for(quiet.wait(0.05, at_most=10), 0.5)
    quiet.call_started()
    later = asyncio.create_task(quiet.wait(0.05, at_most=10))
    await asyncio.sleep(0.01)
    assert not later.done()
    later.cancel()


async def test_zero_means_no_waiting() -> None:
    quiet = Quiet()
    quiet.call_started()
    await asyncio.wait_for(quiet.wait(0, at_most=10), 0.5)


async def test_work_held_elsewhere_keeps_the_service_busy_until_released_or_expired() -> None:
    clock = Clock()
    quiet = Quiet(clock)
    quiet.hold("answer-1", 30)
    clock.now += 5
    assert quiet.quiet_for() == 0  # a turn's answer is streaming
    quiet.release("answer-1")
    clock.now += 1
    assert quiet.quiet_for() == 1
    quiet.hold("answer-2", 30)
    clock.now += 31  # its holder gave up: the hold ran out
    assert quiet.quiet_for() > 0
    quiet.release("answer-2")  # releasing what expired changes nothing


async def test_the_service_is_busy_while_any_hold_of_many_is_live() -> None:
    clock = Clock()
    quiet = Quiet(clock)
    quiet.hold("short", 5)
    quiet.hold("long", 20)
    quiet.hold("middle", 10)
    quiet.release("short")  # the earliest end goes; the others still hold
    clock.now += 6
    assert quiet.quiet_for() == 0
    clock.now += 5  # "middle" ran out, "long" holds on
    assert quiet.quiet_for() == 0
    quiet.hold("middle", 30)  # held again, for longer than "long"
    clock.now += 10  # "long" ran out, "middle" (again) holds on
    assert quiet.quiet_for() == 0
    clock.now += 20
    assert quiet.quiet_for() > 0
    quiet.hold("again", 1)  # a new hold after all ran out counts at once
    assert quiet.quiet_for() == 0
    quiet.hold("later", 20)
    quiet.release("later")  # the latest end goes: the earlier one alone decides
    clock.now += 2
    assert quiet.quiet_for() > 0


async def fallen_behind(clock: Clock) -> Quiet:
    """A service after a long busy spell: its background work waited 10 s for a gap and ran anyway, and the
    call that kept it busy just ended."""
    quiet = Quiet(clock)
    quiet.call_started()
    behind = asyncio.create_task(quiet.wait(0.05, at_most=10))
    await asyncio.sleep(0.01)
    clock.now += 10
    await asyncio.wait_for(behind, 1)
    quiet.call_ended()
    return quiet


async def test_a_gap_nobody_waited_in_ends_falling_behind() -> None:
    clock = Clock()
    quiet = await fallen_behind(clock)  # the work caught up; then a quiet minute in which nothing waited
    clock.now += 60
    quiet.call_started()  # the next burst of calls: what it leaves waits for a gap again
    after = asyncio.create_task(quiet.wait(0.05, at_most=10))
    await asyncio.sleep(0.01)
    assert not after.done()
    clock.now += 9
    await asyncio.sleep(0.01)
    assert not after.done()
    clock.now += 1
    await asyncio.wait_for(after, 1)


async def test_calls_back_to_back_are_no_gap() -> None:
    clock = Clock()
    quiet = await fallen_behind(clock)
    clock.now += 0.01  # shorter than the quiet the work waits for
    quiet.call_started()
    await asyncio.wait_for(quiet.wait(0.05, at_most=10), 0.5)  # still behind: runs at once
