"""What a benchmark records about the machine it ran on."""

from __future__ import annotations

import psutil

from bench.provenance import StolenTime, cpu_ticks, round_trip_microseconds


def test_the_round_trip_between_two_processes_is_measured_and_the_echo_reaped() -> None:
    before = {child.pid for child in psutil.Process().children()}
    measured = round_trip_microseconds(round_trips=200)
    assert 0 < measured < 100_000
    assert {child.pid for child in psutil.Process().children()} <= before, "the echo process is gone"


def test_stolen_ticks_are_read_from_the_eighth_field_of_the_cpu_line() -> None:
    stat = "cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 50 2 25 400 5 0 2 15 0 0\n"
    # Guest time (7) is already counted in user time: all = user..steal.
    assert cpu_ticks(stat) == (30, 100 + 5 + 50 + 800 + 10 + 0 + 5 + 30)
    assert cpu_ticks("") == (0, 0)


def test_the_share_stolen_is_a_percentage_of_the_time_since_it_was_made() -> None:
    share = StolenTime().percent()
    assert 0.0 <= share <= 100.0
