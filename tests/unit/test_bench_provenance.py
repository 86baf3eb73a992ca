"""What a benchmark records about the machine it ran on."""

from __future__ import annotations

import psutil

from bench.provenance import round_trip_microseconds


def test_the_round_trip_between_two_processes_is_measured_and_the_echo_reaped() -> None:
    before = {child.pid for child in psutil.Process().children()}
    measured = round_trip_microseconds(round_trips=200)
    assert 0 < measured < 100_000
    assert {child.pid for child in psutil.Process().children()} <= before, "the echo process is gone"
