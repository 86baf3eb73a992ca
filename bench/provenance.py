"""Where a benchmark ran: the commit measured and the machine, recorded with every result file."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def machine() -> dict[str, object]:
    """CPUs (count and model), memory, Python, platform, and how fast the machine is now."""
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
    }
