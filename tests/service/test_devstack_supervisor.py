"""The supervisor (`devstack.supervisor`) over real child processes: what exits unexpectedly is restarted
with backoff and logged, with its exit code or signal, in the launcher's log and the child's own log; what
is stopped on purpose stays stopped. Delays are shrunk to milliseconds; no test waits out a real backoff."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from polling import eventually_blocking as until

from devstack.process import ManagedProcess
from devstack.supervisor import Part, RestartPolicy, Supervisor

FAST = RestartPolicy(initial_delay=0.01, factor=2.0, max_delay=0.04, reset_after=60.0)


def part(tmp_path: Path, name: str, argv: list[str]) -> Part:
    process = ManagedProcess(name=name, argv=argv, log_path=tmp_path / f"{name}.log")
    process.start()
    return Part(name, process, ready=process.alive, spawn=process.start)


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    running = Supervisor(FAST, poll_interval=0.005)
    yield running
    running.stop()


def kinds(supervisor: Supervisor, name: str) -> list[str]:
    return [event.kind for event in supervisor.events if event.part == name]


def log_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_killed_process_is_restarted_ready_and_logged_with_its_signal(
    supervisor: Supervisor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devstack.supervisor")
    sleeper = part(tmp_path, "sleeper", ["sleep", "60"])
    supervisor.watch(sleeper)
    first = sleeper.process.pid
    try:
        os.kill(first, signal.SIGKILL)
        until(lambda: "ready" in kinds(supervisor, "sleeper"))
        assert sleeper.process.pid != first
        assert sleeper.process.alive()
        assert kinds(supervisor, "sleeper") == ["exited", "restarted", "ready"]
        exited = next(e for e in supervisor.events if e.kind == "exited")
        assert "signal 9 (SIGKILL)" in exited.message
        assert "restarting in 0.01 s" in exited.message
        launcher = [record.getMessage() for record in caplog.records]
        assert any(m.startswith("sleeper exited unexpectedly with signal 9 (SIGKILL)") for m in launcher)
        restarted = f"sleeper restarted (pid {sleeper.process.pid}, restart 1)"
        assert any(m.startswith(restarted) for m in launcher)
        noted = [line["message"] for line in log_lines(sleeper.process.log_path)]
        assert noted[0].startswith("devstack: sleeper exited unexpectedly with signal 9 (SIGKILL)")
        assert noted[1].startswith("devstack: sleeper restarted")
    finally:
        supervisor.stop()
        sleeper.process.stop()


def test_a_crash_looping_process_backs_off_and_keeps_being_restarted(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    crasher = part(tmp_path, "crasher", ["sh", "-c", "exit 3"])
    supervisor.watch(crasher)
    until(lambda: kinds(supervisor, "crasher").count("exited") >= 5)
    supervisor.stop()
    exits = [e.message for e in supervisor.events if e.kind == "exited"]
    assert all("with exit code 3" in message for message in exits)
    delays = [message.rsplit("restarting in ", 1)[1] for message in exits[:5]]
    assert delays == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.04 s"]


def test_a_process_that_cannot_even_be_started_again_is_retried_with_backoff(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    sleeper = part(tmp_path, "sleeper", ["sleep", "60"])
    attempts = []

    def spawn() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise FileNotFoundError("no such file: sleep")
        sleeper.process.start()

    supervisor.watch(replace(sleeper, spawn=spawn))
    os.kill(sleeper.process.pid, signal.SIGKILL)
    until(lambda: "ready" in kinds(supervisor, "sleeper"))
    supervisor.stop()
    sleeper.process.stop()
    assert kinds(supervisor, "sleeper") == ["exited", "exited", "restarted", "ready"]
    assert (
        "could not be restarted (no such file: sleep); trying again in 0.02 s" in supervisor.events[1].message
    )


def test_a_process_stopped_on_purpose_stays_down_until_started_again(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    sleeper = part(tmp_path, "sleeper", ["sleep", "60"])
    supervisor.watch(sleeper)
    supervisor.stop_part("sleeper")
    assert not sleeper.process.alive()
    time.sleep(0.2)  # many polls and initial delays: a wrongful restart would have happened by now
    assert not sleeper.process.alive()
    assert kinds(supervisor, "sleeper") == ["stopped"]

    supervisor.start_part("sleeper")
    assert sleeper.process.alive()
    assert kinds(supervisor, "sleeper") == ["stopped", "started", "ready"]
    # Supervised again: a crash now is restarted.
    os.kill(sleeper.process.pid, signal.SIGKILL)
    until(lambda: kinds(supervisor, "sleeper")[-1:] == ["ready"] and len(kinds(supervisor, "sleeper")) == 6)
    supervisor.stop()
    sleeper.process.stop()


def test_nothing_is_restarted_once_the_stack_stops(supervisor: Supervisor, tmp_path: Path) -> None:
    sleepers = [part(tmp_path, f"sleeper-{index}", ["sleep", "60"]) for index in range(3)]
    for sleeper in sleepers:
        supervisor.watch(sleeper)
    supervisor.stop()
    for sleeper in sleepers:
        sleeper.process.stop()
    time.sleep(0.2)
    assert not any(sleeper.process.alive() for sleeper in sleepers)
    assert supervisor.events == []
