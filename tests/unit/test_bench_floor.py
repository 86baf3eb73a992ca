"""bench.floor's report: both series, each phase's overhead over the model, CPU only where it was measured."""

from __future__ import annotations

from bench.floor import markdown


def _phase(
    mesh: tuple[float, float], direct: tuple[float, float], cpu: dict[str, float]
) -> dict[str, object]:
    return {
        "first_delta_ms": {"mesh": {50: mesh[0], 95: mesh[1]}, "direct": {50: direct[0], 95: direct[1]}},
        "overhead_ms": {50: mesh[0] - direct[0], 95: mesh[1] - direct[1]},
        "errors": 0,
        "cpu_ms_per_turn": cpu,
        "cpu_stolen_percent": 0.5,
    }


def test_the_report_shows_each_series_mesh_and_floor_with_their_overheads() -> None:
    result = {
        "command": "python -m bench.floor",
        "commit": "abc1234",
        "when": "2026-12-03 10:00 UTC",
        "machine": {"cpus": 2},
        "series": [
            {
                "streams": 1,
                "rounds": 300,
                "delay_ms": 0,
                "mesh": _phase((12.0, 15.0), (3.5, 5.0), {}),
                "floor": _phase((8.0, 10.0), (3.5, 5.0), {}),
            },
            {
                "streams": 50,
                "rounds": 10,
                "delay_ms": 20,
                "mesh": _phase((185.0, 340.0), (65.0, 105.0), {"memory": 10.0, "orchestrator": 10.5}),
                "floor": _phase((75.0, 140.0), (55.0, 95.0), {"memory": 0.8, "orchestrator": 5.3}),
                "floor_one_hop_less": _phase((70.0, 120.0), (55.0, 95.0), {"orchestrator": 5.6}),
            },
        ],
    }
    report = markdown(result)
    assert "## One stream at a time, instant model (300 turns)" in report
    assert "| mesh | 12.0 / 15.0 | 3.5 / 5.0 | **8.5 / 10.0** |" in report
    assert "| floor | 8.0 / 10.0 | 3.5 / 5.0 | **4.5 / 5.0** |" in report
    assert "## 50 streams at once, model pacing 20 ms a word (10 rounds)" in report
    assert "| | memory | orchestrator | sum |" in report
    assert "| floor | 0.80 | 5.30 | 6.1 |" in report
    assert report.count("CPU milliseconds per turn") == 1, "one-stream rounds measure no CPU"
    # The third phase where it ran (the one-stream series above predates it: no row there).
    assert "| floor, one hop less | 70.0 / 120.0 | 55.0 / 95.0 | **15.0 / 25.0** |" in report
    assert "| floor, one hop less | 0.00 | 5.60 | 5.6 |" in report
    assert report.count("floor, one hop less") == 2
