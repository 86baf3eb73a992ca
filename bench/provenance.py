"""Where a benchmark ran: the commit measured and the machine, recorded with every result file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_results(results: Path, name: str, result: dict[str, Any], report: str) -> None:
    """`<name>.json` (the result) and `<name>.md` (its report) in `results`; the report is printed too."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / f"{name}.md").write_text(report)
    print(report)


def commit() -> str:
    """The commit measured ("-dirty" when the work tree had changes), or "unknown" outside a checkout."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    return "unknown"


def reference_seconds() -> float:
    """Seconds this machine takes now for a fixed piece of Python work (ten million additions), best of
    three. A shared virtual machine's speed swings between runs (the same commit measured 3.7 and 9.9 ms of
    overhead on two runs of one afternoon); results are compared with this figure at hand."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(10_000_000):
            total += number
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


_ECHO = """
import socket, sys
echo = socket.socket(fileno=int(sys.argv[1]))
while data := echo.recv(1):
    echo.sendall(data)
"""
"""Sends back every byte it receives on the socket whose descriptor it is given, until that closes."""


def round_trip_microseconds(round_trips: int = 20_000) -> float:
    """Microseconds a one-byte message takes to go to another process and back over a Unix socket, best
    of three runs. The mesh is many processes passing small messages: where a machine's system calls and
    wake-ups are slow, its figures are too, though `reference_seconds` (pure Python) shows no difference
    (the same commit cost 30-40 % more CPU a turn on one host kernel than on another of equal
    `reference_seconds`)."""
    ours, theirs = socket.socketpair()
    # The echo is a fresh interpreter, not a fork: the caller may be a process with threads (grpc's).
    echo = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        ours.sendall(b"x")  # started and answering
        ours.recv(1)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(round_trips):
                ours.sendall(b"x")
                ours.recv(1)
            best = min(best, time.perf_counter() - started)
    finally:
        ours.close()
        echo.wait()
    return round(best / round_trips * 1e6, 1)


def cpu_ticks(stat: str | None = None) -> tuple[int, int]:
    """Clock ticks of all CPUs since boot: (stolen, all). Stolen ticks are those the hypervisor ran other
    guests while this machine had work; `stat` is /proc/stat's text (read when not given; (0, 0) where there
    is none)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = stat if stat is not None else Path("/proc/stat").read_text()
        # cpu user nice system idle iowait irq softirq steal [guest guest_nice: counted in user and nice]
        ticks = [int(value) for value in text.split("\n", 1)[0].split()[1:9]]
        return ticks[7], sum(ticks)
    return 0, 0


class StolenTime:
    """The share of the CPUs' time stolen by the hypervisor since this was made: on a shared virtual machine,
    much of the noise between two runs of one commit (this one: nothing stolen while idle, over a third of
    its time during one two-second check while other guests were busy)."""

    def __init__(self) -> None:
        self._start = cpu_ticks()

    def percent(self) -> float:
        stolen, total = cpu_ticks()
        elapsed = total - self._start[1]
        return round(100 * (stolen - self._start[0]) / elapsed, 1) if elapsed > 0 else 0.0


def machine() -> dict[str, object]:
    """CPUs (count and model), memory, Python, platform, and how fast the machine is now (for Python work
    and for messages between processes)."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 1024 / 1024
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "reference_seconds": reference_seconds(),
        "round_trip_us": round_trip_microseconds(),
    }
