"""bench.ab: the per-revision summary, the report, and a revision's tree."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from bench.ab import ROOT, checkout, describe, markdown, results_name, summary


def test_a_summary_is_the_pooled_first_deltas_against_the_model_alone_and_cpu_per_turn() -> None:
    found = summary([10.0, 20.0, 30.0, 40.0, 100.0], [5.0, 6.0, 7.0, 8.0, 9.0], {"memory": 0.5}, turns=5)
    assert found["first_delta_ms"] == {50: 30.0, 95: 100.0}
    assert found["overhead_ms"] == {50: 23.0, 95: 91.0}
    assert found["cpu_ms_per_turn"] == {"memory": 100.0}


def test_the_report_has_a_row_per_revision_with_each_part_and_their_sum_without_the_load_generator() -> None:
    sides = {
        side: summary([10.0, 20.0], [5.0, 6.0], {"memory": share, "envoy": 0.01, "load generator": 9.0}, 10)
        for side, share in (("A", 0.03), ("B", 0.02))
    }
    result = {
        "command": "python -m bench.ab --a HEAD --b .",
        "commits": {"A": "abc1234", "B": "def5678-dirty"},
        "date": "2026-12-03 16:00 UTC",
        "machine": {"cpus": 2},
        "cpu_stolen_percent": 0.5,
        "direct_first_delta_ms": {50: 5.0, 95: 6.0},
        "sides": sides,
    }
    report = markdown(result)
    rows = [line for line in report.splitlines() if line.startswith("| A ") or line.startswith("| B ")]
    assert rows == [
        "| A (abc1234) | 10.00 / 20.00 | 5.00 / 14.00 | 3.00 | 1.00 | 4.00 |",
        "| B (def5678-dirty) | 10.00 / 20.00 | 5.00 / 14.00 | 2.00 | 1.00 | 3.00 |",
    ]
    assert "load generator CPU" not in report


def test_a_revision_is_checked_out_apart_and_removed_afterwards(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert describe("HEAD") == head
    with checkout("HEAD", tmp_path / "A") as tree, checkout("HEAD", tmp_path / "B") as same:
        assert tree != ROOT
        assert tree != same
        assert (tree / "memory" / "service.py").is_file()
    assert not tree.exists()
    assert not same.exists()
    with checkout(".", tmp_path) as tree:
        assert tree == ROOT


def test_results_are_named_by_a_plain_file_name() -> None:
    assert results_name("ab-gate_50.v2") == "ab-gate_50.v2"
    for bad in ("", ".hidden", "../chat", "results/ab", "a b"):
        with pytest.raises(argparse.ArgumentTypeError, match="plain file name"):
            results_name(bad)
