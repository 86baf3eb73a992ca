"""Apple Health exports made to measure, and the import benchmark (`make bench-health`).

`write_export` writes an `export.xml` (or an `export.zip` holding it) shaped as the Health app writes one
(../shared/PROVIDERS.md §6: the inline DTD, `ExportDate`, `Me`, `Record`s with `MetadataEntry` children,
`Workout`s with `WorkoutStatistics`), with a phone and a watch both counting steps, and answers what
`wearable_stats` must find in it: each day's steps (the larger source's sum). The benchmark generates one of
at least 200 MB, uploads it through `UploadsService` to a real integrations service, samples that
process's RSS while it imports, checks `WearableStats` steps per day against the file, imports it again
and checks nothing changed, and writes `bench/results/apple_health.md`.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO

_DTD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!-- HealthKit Export Version: 14 -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary|ClinicalRecord)*)>
<!ATTLIST HealthData
  locale CDATA #REQUIRED
>
<!ELEMENT ExportDate EMPTY>
<!ATTLIST ExportDate
  value CDATA #REQUIRED
>
<!ELEMENT Me EMPTY>
<!ELEMENT Record ((MetadataEntry|HeartRateVariabilityMetadataList)*)>
<!ATTLIST Record
  type          CDATA #REQUIRED
  unit          CDATA #IMPLIED
  value         CDATA #IMPLIED
  sourceName    CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED
  device        CDATA #IMPLIED
  creationDate  CDATA #IMPLIED
  startDate     CDATA #REQUIRED
  endDate       CDATA #REQUIRED
>
<!ELEMENT MetadataEntry EMPTY>
<!ATTLIST MetadataEntry
  key   CDATA #REQUIRED
  value CDATA #REQUIRED
>
<!ELEMENT Workout ((MetadataEntry|WorkoutEvent|WorkoutRoute|WorkoutStatistics)*)>
<!ATTLIST Workout
  workoutActivityType   CDATA #REQUIRED
  duration              CDATA #IMPLIED
  durationUnit          CDATA #IMPLIED
  sourceName            CDATA #REQUIRED
  startDate             CDATA #REQUIRED
  endDate               CDATA #REQUIRED
>
]>
"""
_DEVICE = (
    "&lt;&lt;HKDevice: 0x283a3c2d0&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, "
    "hardware:Watch6,2, software:11.1&gt;"
)


@dataclass
class Expected:
    """What an export holds, as `wearable_stats` must report it."""

    steps: dict[date, int] = field(default_factory=dict)
    """Each day's steps: the larger of the phone's and the watch's sums."""
    records: int = 0


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")


def _element(name: str, children: str = "", **attrs: object) -> str:
    text = " ".join(f'{key}="{value}"' for key, value in attrs.items())
    return f" <{name} {text}>\n{children} </{name}>\n" if children else f" <{name} {text}/>\n"


def _lines(days: int, first: date, records_per_day: int, seed: int, expected: Expected) -> Iterator[str]:
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    zone = timezone(timedelta(hours=1))
    yield _DTD
    yield '<HealthData locale="en_GB">\n'
    yield _element("ExportDate", value=_stamp(datetime(2026, 11, 30, 8, tzinfo=zone)))
    yield _element(
        "Me",
        HKCharacteristicTypeIdentifierDateOfBirth="1990-04-01",
        HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale",
    )
    for offset in range(days):
        day = first + timedelta(days=offset)
        midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
        sums = {"iPhone": 0, "Apple Watch": 0}
        for n in range(16):  # step counts through the day, from both devices
            for source in sums:
                start = midnight + timedelta(hours=7, minutes=n * 50 + (3 if source == "iPhone" else 0))
                count = rng.randint(20, 900)
                sums[source] += count
                yield _element(
                    "Record",
                    type="HKQuantityTypeIdentifierStepCount",
                    sourceName=source,
                    sourceVersion="17.1",
                    device=_DEVICE,
                    unit="count",
                    creationDate=_stamp(start + timedelta(minutes=9)),
                    startDate=_stamp(start),
                    endDate=_stamp(start + timedelta(minutes=8)),
                    value=count,
                )
                expected.records += 1
        expected.steps[day] = max(sums.values())
        heart_rates = max(records_per_day - 40, 0)
        for n in range(heart_rates):
            at = _stamp(midnight + timedelta(seconds=n * 86_000 // max(heart_rates, 1)))
            yield _element(
                "Record",
                '  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" value="0"/>\n',
                type="HKQuantityTypeIdentifierHeartRate",
                sourceName="Apple Watch",
                sourceVersion="11.1",
                device=_DEVICE,
                unit="count/min",
                creationDate=at,
                startDate=at,
                endDate=at,
                value=rng.randint(52, 150),
            )
            expected.records += 1
        for n in range(4):
            start = midnight + timedelta(hours=n * 6)
            yield _element(
                "Record",
                type="HKQuantityTypeIdentifierActiveEnergyBurned",
                sourceName="Apple Watch",
                unit="kcal",
                startDate=_stamp(start),
                endDate=_stamp(start + timedelta(hours=6)),
                value=f"{rng.randint(50, 200)}.5",
            )
            expected.records += 1
        night = midnight - timedelta(hours=1)
        for stage, minutes in (("AsleepCore", 200), ("AsleepDeep", 90), ("Awake", 10), ("AsleepREM", 100)):
            yield _element(
                "Record",
                type="HKCategoryTypeIdentifierSleepAnalysis",
                sourceName="Apple Watch",
                startDate=_stamp(night),
                endDate=_stamp(night + timedelta(minutes=minutes)),
                value=f"HKCategoryValueSleepAnalysis{stage}",
            )
            night += timedelta(minutes=minutes)
            expected.records += stage != "Awake"
        weighed = _stamp(midnight + timedelta(hours=7))
        yield _element(
            "Record",
            type="HKQuantityTypeIdentifierBodyMass",
            sourceName="Scale",
            unit="kg",
            startDate=weighed,
            endDate=weighed,
            value=f"{70 + rng.random():.2f}",
        )
        expected.records += 1
        start = midnight + timedelta(hours=18)
        yield _element(
            "Workout",
            '  <WorkoutStatistics type="HKQuantityTypeIdentifierActiveEnergyBurned" sum="310"/>\n',
            workoutActivityType="HKWorkoutActivityTypeRunning",
            duration="32.5",
            durationUnit="min",
            sourceName="Apple Watch",
            startDate=_stamp(start),
            endDate=_stamp(start + timedelta(minutes=33)),
        )
        expected.records += 1
    yield "</HealthData>\n"


def write_export(
    path: Path,
    *,
    days: int = 30,
    first: date = date(2026, 1, 1),
    records_per_day: int = 100,
    as_zip: bool = False,
    seed: int = 7,
) -> Expected:
    """Writes an export of `days` days from `first` (about 380 bytes per record) to `path`."""
    expected = Expected()

    def write(out: IO[str]) -> None:
        for line in _lines(days, first, records_per_day, seed, expected):
            out.write(line)

    if as_zip:
        with (
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
            archive.open("apple_health_export/export.xml", "w", force_zip64=True) as raw,
        ):
            with io.TextIOWrapper(raw, encoding="utf-8") as text:
                write(text)
            archive.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
    else:
        with path.open("w", encoding="utf-8") as out:
            write(out)
    return expected
