"""bench.chat's report (a verdict per target of issue 13, a row per series, the held one told apart) and what
it measures with (CPU of ended children, peak RSS from the kernel's high-water mark)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from bench.chat import Processes, _cpu_seconds, arguments, markdown, verdicts

PARTS = ("memory", "orchestrator")


def _spread(p50: float, p95: float) -> dict[str, float]:
    return {"p50": p50, "p95": p95}


def _paced(streams: int, overhead_p95: float, ratio: float, rss: float) -> dict[str, Any]:
    direct = {"streams": streams, "completed": streams, "errors": {}, "first_delta_ms": _spread(50, 100)}
    return {
        "streams": streams,
        "rounds": 3,
        "mesh": {**direct, "first_delta_ms": _spread(100, 100 + overhead_p95)},
        "direct": direct,
        "cpu_ms_per_turn": dict.fromkeys(PARTS, 1.0),
        "direct_cpu_ms_per_turn": dict.fromkeys(PARTS, 0.0),
        "peak_rss_mib": dict.fromkeys(PARTS, rss),
        "words_per_second": 10.0 * streams,
        "duration_ratio": _spread(ratio, ratio),
        "first_delta_overhead_ms": _spread(50, overhead_p95),
    }


def _result(**changes: Any) -> dict[str, Any]:
    instant = {"samples": 200, "overhead_ms": _spread(4.0, 9.0)}
    instant |= {
        "direct": {"first_delta_ms": _spread(4.0, 6.0)},
        "mesh": {"first_delta_ms": _spread(8.0, 15.0)},
    }
    result = {
        "command": "python -m bench.chat",
        "commit": "abc1234",
        "date": "2026-12-04 12:00 UTC",
        "machine": {"cpus": 2},
        "instant": instant,
        "tracing": None,
        "paced": [
            _paced(50, 90, 1.1, 140),
            _paced(200, 520, 1.2, 150),
            _paced(1000, 2000, 1.6, 230)
            | {"first_round": {"first_delta_overhead_ms": 2600.0, "duration_ratio": 1.71, "errors": {}}},
        ],
        "held": {
            "streams": 1000,
            "wall_seconds": 20.0,
            "mesh": {"streams": 1000, "completed": 999, "errors": {"UNAVAILABLE: x": 1}}
            | {"first_delta_ms": _spread(1, 2), "duration_ms": _spread(3, 4)},
            "cpu_ms_per_turn": dict.fromkeys(PARTS, 1.0),
            "peak_rss_mib": dict.fromkeys(PARTS, 300),
        },
    }
    return result | changes


def test_each_target_has_its_verdict_and_the_series_without_one_have_none() -> None:
    assert [(target.split(":")[0], met) for target, _, met in verdicts(_result())] == [
        ("one stream, instant model", True),
        ("one stream, instant model", True),
        ("50 streams", True),
        ("200 streams", True),
        ("200 streams", False),
        ("1000 streams complete with zero errors", False),
    ]


def test_the_report_has_a_row_per_paced_series_and_tells_the_held_one_apart_in_the_rss_table() -> None:
    report = markdown(_result())
    paced = [line for line in report.splitlines() if line.startswith(("| 200 | 1.20 |", "| 1000 | 1.60 |"))]
    assert paced == [
        "| 200 | 1.20 | 1.20 | 100 / 620 | 50 / 100 | 50 / 520 | 2000 | 0 | - | - |",
        "| 1000 | 1.60 | 1.60 | 100 / 2100 | 50 / 100 | 50 / 2000 | 10000 | 0 | - | 2600 ms, 1.71 |",
    ]
    rss = report.split("Peak RSS (MiB) by process during each series:")[1].splitlines()
    assert [row for row in rss if row.startswith("| 1000")] == [
        "| 1000 | 230 | 230 |",
        "| 1000, 200 ms a word | 300 | 300 |",
    ]


def test_the_paced_series_run_1_50_200_and_1000_streams_by_default() -> None:
    assert arguments([]).streams == [1, 50, 200, 1000]
    assert arguments([]).held == 1000


def test_the_cpu_of_a_child_that_ended_stays_counted_under_the_parent_that_reaped_it() -> None:
    # What a PostgreSQL backend spent must not vanish from the postmaster's total when the backend exits.
    me = psutil.Process()

    def reaped() -> float:
        return _cpu_seconds(me) - _cpu_seconds(me, reaped=False)

    before = reaped()
    burn = "import time\nwhile time.process_time() < 0.3:\n    pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert reaped() - before >= 0.2  # clock ticks of 10 ms: some slack


class _Part:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _Stack:
    """What `Processes` reads of a stack: its parts' names and processes."""

    def __init__(self, parts: dict[str, int]) -> None:
        self._parts = parts
        self.part_names = list(parts)

    def process(self, name: str) -> _Part:
        return _Part(self._parts[name])


_ALLOCATOR = """
import sys
for line in sys.stdin:
    block = bytearray(int(line) * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block
    print("done", flush=True)
"""


@pytest.fixture
def allocator() -> Iterator[subprocess.Popen[str]]:
    """A process that, for each number of MiB it reads, touches that much memory, frees it and says done."""
    process = subprocess.Popen(
        [sys.executable, "-c", _ALLOCATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _allocate(process: subprocess.Popen[str], mib: int) -> None:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(f"{mib}\n")
    process.stdin.flush()
    assert process.stdout.readline().strip() == "done"


def test_a_watched_block_reports_a_peak_that_came_and_went_within_it(
    allocator: subprocess.Popen[str],
) -> None:
    processes = Processes(_Stack({"part": allocator.pid}))  # type: ignore[arg-type]
    usage = processes.usage()

    async def block() -> None:
        async with usage.watch(1):
            _allocate(allocator, 96)  # freed again before the block ends: no sample would see it

    asyncio.run(block())
    assert usage.peak_rss_mib()["part"] >= 96


def test_a_peak_before_the_block_does_not_count(allocator: subprocess.Popen[str]) -> None:
    _allocate(allocator, 96)
    processes = Processes(_Stack({"part": allocator.pid}))  # type: ignore[arg-type]
    usage = processes.usage()

    async def block() -> None:
        async with usage.watch(1):
            pass

    asyncio.run(block())
    assert 0 < usage.peak_rss_mib()["part"] < 64
