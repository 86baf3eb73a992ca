"""The supervisor's restart backoff (`devstack.supervisor`), on a fake clock: kubelet-like doubling, capped,
starting over once a part has run well for a while."""

from __future__ import annotations

import signal

import pytest
from doubles.clock import FakeClock

from devstack.supervisor import Backoff, RestartPolicy, describe_exit

POLICY = RestartPolicy(initial_delay=1.0, factor=2.0, max_delay=30.0, reset_after=60.0)


def crash_loop(backoff: Backoff, clock: FakeClock, runs: list[float]) -> list[float]:
    """The delays the supervisor waits when the part exits after running each of `runs` seconds, each
    restart made once the previous delay has passed."""
    delays = []
    for seconds in runs:
        clock.advance(seconds)
        delay = backoff.next_delay()
        delays.append(delay)
        clock.advance(delay)
        backoff.started()
    return delays


def test_a_crash_looping_part_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    clock = FakeClock()
    backoff = Backoff(POLICY, clock.time)
    assert crash_loop(backoff, clock, [0.5] * 8) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_part_that_ran_well_is_restarted_after_the_initial_delay_again() -> None:
    clock = FakeClock()
    backoff = Backoff(POLICY, clock.time)
    assert crash_loop(backoff, clock, [2.0, 2.0, 2.0]) == [1, 2, 4]
    # Short of `reset_after` the streak goes on; a run of `reset_after` seconds ends it.
    assert crash_loop(backoff, clock, [59.0, 60.0, 1.0]) == [8, 1, 2]


def test_the_first_exit_after_a_long_run_waits_the_initial_delay() -> None:
    clock = FakeClock()
    backoff = Backoff(POLICY, clock.time)
    clock.advance(3600)
    assert backoff.uptime() == 3600
    assert backoff.next_delay() == 1


def test_the_policy_is_configurable() -> None:
    clock = FakeClock()
    fast = RestartPolicy(initial_delay=0.25, factor=3.0, max_delay=5.0, reset_after=10.0)
    assert crash_loop(Backoff(fast, clock.time), clock, [0.0] * 5) == [0.25, 0.75, 2.25, 5.0, 5.0]


@pytest.mark.parametrize(
    ("returncode", "described"),
    [
        (0, "exit code 0"),
        (3, "exit code 3"),
        (-signal.SIGKILL, "signal 9 (SIGKILL)"),
        (-signal.SIGSEGV, "signal 11 (SIGSEGV)"),
        (-200, "signal 200"),
    ],
)
def test_exits_are_described_by_code_or_signal(returncode: int, described: str) -> None:
    assert describe_exit(returncode) == described
