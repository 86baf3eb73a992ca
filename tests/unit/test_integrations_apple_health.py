"""Reading Apple Health exports (integrations.apple_health); merging health sources (integrations.health)."""

from __future__ import annotations

import io
import zipfile
from datetime import date
from pathlib import Path

import pytest

from bench.apple_health import write_export
from integrations.apple_health import ExportUnreadable, read_export
from integrations.health import APPLE_HEALTH, GOOGLE, Day, Metric, merge_days

HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="en_GB">\n'
    '<ExportDate value="2026-11-30 08:00:00 +0100"/>\n'
)


def _export(*records: str) -> io.BytesIO:
    return io.BytesIO((HEAD + "\n".join(records) + "\n</HealthData>\n").encode())


def _record(
    kind: str, value: str, start: str, end: str | None = None, source: str = "Watch", unit: str = ""
) -> str:
    return (
        f'<Record type="{kind}" sourceName="{source}" unit="{unit}" startDate="{start}" '
        f'endDate="{end or start}" value="{value}"/>'
    )


def _values(days: list[Day]) -> dict[str, float]:
    return {day.day.isoformat(): day.value for day in days}


@pytest.mark.parametrize("as_zip", [False, True])
def test_steps_per_day_match_the_file(tmp_path: Path, as_zip: bool) -> None:
    path = tmp_path / ("export.zip" if as_zip else "export.xml")
    expected = write_export(path, days=20, records_per_day=60, as_zip=as_zip)
    shares: list[float] = []
    with path.open("rb") as source:
        read = read_export(source, shares.append)
    assert _values(read.days[Metric.STEPS]) == {d.isoformat(): float(n) for d, n in expected.steps.items()}
    assert read.records == expected.records
    assert read.day_count == 20
    assert shares == sorted(shares)
    assert shares[-1] == pytest.approx(1.0)


def test_each_metric_in_our_units_and_days() -> None:
    read = read_export(
        _export(
            _record(
                "HKQuantityTypeIdentifierStepCount", "1000", "2026-11-02 08:00:00 +0100", source="iPhone"
            ),
            _record("HKQuantityTypeIdentifierStepCount", "300", "2026-11-02 09:00:00 +0100", source="iPhone"),
            _record("HKQuantityTypeIdentifierStepCount", "1200", "2026-11-02 08:00:00 +0100", source="Watch"),
            # a late step count in its own offset stays on its own civil day
            _record("HKQuantityTypeIdentifierStepCount", "50", "2026-11-02 23:30:00 -0800", source="Watch"),
            _record("HKQuantityTypeIdentifierHeartRate", "60", "2026-11-02 08:00:00 +0100", unit="count/min"),
            _record(
                "HKQuantityTypeIdentifierHeartRate",
                "90",
                "2026-11-02 09:00:00 +0100",
                "",
                "Polar",
                "count/min",
            ),
            _record("HKQuantityTypeIdentifierBodyMass", "154", "2026-11-02 07:00:00 +0100", unit="lb"),
            _record(
                "HKQuantityTypeIdentifierActiveEnergyBurned", "418.4", "2026-11-02 10:00:00 +0100", unit="kJ"
            ),
            _record("HKQuantityTypeIdentifierRestingHeartRate", "52", "2026-11-02 00:00:00 +0100"),
            _record(
                "HKCategoryTypeIdentifierSleepAnalysis",
                "HKCategoryValueSleepAnalysisInBed",
                "2026-11-01 22:00:00 +0100",
                "2026-11-02 07:00:00 +0100",
            ),
            _record(
                "HKCategoryTypeIdentifierSleepAnalysis",
                "HKCategoryValueSleepAnalysisAsleepCore",
                "2026-11-01 23:00:00 +0100",
                "2026-11-02 03:00:00 +0100",
            ),
            _record(
                "HKCategoryTypeIdentifierSleepAnalysis",
                "HKCategoryValueSleepAnalysisAwake",
                "2026-11-02 03:00:00 +0100",
                "2026-11-02 03:20:00 +0100",
            ),
            _record(
                "HKCategoryTypeIdentifierSleepAnalysis",
                "HKCategoryValueSleepAnalysisAsleepREM",
                "2026-11-02 03:20:00 +0100",
                "2026-11-02 04:50:00 +0100",
            ),
            '<Workout workoutActivityType="HKWorkoutActivityTypeCycling" duration="1.5" durationUnit="hr" '
            'sourceName="Watch" startDate="2026-11-02 18:00:00 +0100" endDate="2026-11-02 19:30:00 +0100">'
            '<WorkoutStatistics type="HKQuantityTypeIdentifierActiveEnergyBurned" sum="500"/></Workout>',
            _record("HKQuantityTypeIdentifierStepCount", "not a number", "2026-11-02 08:00:00 +0100"),
            _record("HKQuantityTypeIdentifierDietaryWater", "500", "2026-11-02 08:00:00 +0100"),
        )
    )
    # the phone's 1,300 steps against the watch's 1,250: the larger source, not the sum
    assert _values(read.days[Metric.STEPS]) == {"2026-11-02": 1300.0}
    heart = read.days[Metric.HEART_RATE][0]
    assert (heart.value, heart.min, heart.max) == (75.0, 60.0, 90.0)
    assert _values(read.days[Metric.WEIGHT_KG]) == {"2026-11-02": pytest.approx(69.853)}
    assert _values(read.days[Metric.ACTIVE_ENERGY_KCAL]) == {"2026-11-02": 100.0}
    assert _values(read.days[Metric.RESTING_HEART_RATE]) == {"2026-11-02": 52.0}
    assert _values(read.days[Metric.SLEEP_MINUTES]) == {"2026-11-02": 330.0}  # 240 core + 90 REM
    assert _values(read.days[Metric.WORKOUT_MINUTES]) == {"2026-11-02": 90.0}
    assert {day.source for days in read.days.values() for day in days} == {APPLE_HEALTH}
    assert read.records == 12


def test_a_truncated_export_says_it_ends_early(tmp_path: Path) -> None:
    path = tmp_path / "export.xml"
    write_export(path, days=5)
    whole = path.read_bytes()
    with pytest.raises(ExportUnreadable, match=r"ends in the middle \(line \d+\)"):
        read_export(io.BytesIO(whole[: len(whole) * 2 // 3]))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b'<?xml version="1.0"?><rss><channel/></rss>', "not an Apple Health export"),
        (b"<HealthData><Record type='x' startDate='1' endDate='1'/><oops></HealthData>", "not well-formed"),
        (
            b'<?xml version="1.0"?><!DOCTYPE HealthData [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b"<HealthData>&lol2;</HealthData>",
            "declares XML entities",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE HealthData [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
            b"<HealthData>&secret;</HealthData>",
            "declares XML entities",
        ),
    ],
)
def test_what_is_not_an_export_is_refused_saying_why(content: bytes, problem: str) -> None:
    with pytest.raises(ExportUnreadable, match=problem):
        read_export(io.BytesIO(content))


def test_a_zip_without_an_export_or_damaged_is_refused(tmp_path: Path) -> None:
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
    with pytest.raises(ExportUnreadable, match=r"holds no export\.xml"):
        read_export(empty)
    path = tmp_path / "export.zip"
    write_export(path, days=40, as_zip=True)
    whole = bytearray(path.read_bytes())
    whole[len(whole) // 2 : len(whole) // 2 + 64] = bytes(64)  # damaged in the middle of the deflated XML
    with pytest.raises(ExportUnreadable, match=r"damaged|not well-formed"):
        read_export(io.BytesIO(bytes(whole)))


def test_merging_sources_takes_the_larger_total_and_averages_rates() -> None:
    day = date(2026, 11, 2)
    steps = merge_days(
        Metric.STEPS,
        [Day(day, 9000, 9000, 9000, GOOGLE), Day(day, 8000, 8000, 8000, APPLE_HEALTH)],
    )
    assert steps == [Day(day, 9000, 9000, 9000, GOOGLE)]
    heart = merge_days(
        Metric.HEART_RATE,
        [
            Day(day, 60, 50, 120, GOOGLE),
            Day(day, 70, 55, 130, APPLE_HEALTH),
            Day(date(2026, 11, 1), 65, 60, 70, GOOGLE),
        ],
    )
    assert heart == [
        Day(date(2026, 11, 1), 65, 60, 70, GOOGLE),
        Day(day, 65, 50, 130, "apple_health+google"),
    ]
