"""Reading an Apple Health export (`export.zip` from the Health app, or the `export.xml` inside it) into days.

Apple publishes no format; the layout is the DTD inside `export.xml` (../shared/PROVIDERS.md §6): a
`HealthData` root holding `Record` elements (`type`, `sourceName`, `unit`, `startDate`, `endDate`, `value`)
and `Workout` elements (`duration`, `durationUnit`, `startDate`), dates as `2026-11-02 06:58:00 +0100`.
Real exports run to hundreds of megabytes, so the file is fed to expat in pieces and only the start tags
of the elements we read are looked at: memory stays bounded by the days, never by the file. Entity
declarations are refused (no entity expansion), external entities never read.

What is read, per civil day as the device recorded it (the date of `startDate` in its own offset; sleep on
the date it ended): steps, heart rate, resting heart rate, active energy (kcal; kJ converted), body mass
(kg; lb converted), minutes asleep (`HKCategoryValueSleepAnalysisAsleep*`, not in bed or awake) and
workout minutes. Each source (`sourceName`: the phone, the watch) is summed apart, then a day's total is
the largest source's — the phone and the watch count the same steps — and a rate's average is over every
sample of every source.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import IO, Any
from xml.parsers import expat

from integrations.health import APPLE_HEALTH, TOTALS, Day, Metric

FEED_BYTES = 1 << 20
"""Bytes handed to the parser at a time."""
EXPORT_MEMBER = "export.xml"

_QUANTITIES: dict[str, Metric] = {
    "HKQuantityTypeIdentifierStepCount": Metric.STEPS,
    "HKQuantityTypeIdentifierHeartRate": Metric.HEART_RATE,
    "HKQuantityTypeIdentifierRestingHeartRate": Metric.RESTING_HEART_RATE,
    "HKQuantityTypeIdentifierActiveEnergyBurned": Metric.ACTIVE_ENERGY_KCAL,
    "HKQuantityTypeIdentifierBodyMass": Metric.WEIGHT_KG,
}
_SLEEP = "HKCategoryTypeIdentifierSleepAnalysis"
_ASLEEP = frozenset(
    {
        "HKCategoryValueSleepAnalysisAsleep",  # before iOS 16
        "HKCategoryValueSleepAnalysisAsleepUnspecified",
        "HKCategoryValueSleepAnalysisAsleepCore",
        "HKCategoryValueSleepAnalysisAsleepDeep",
        "HKCategoryValueSleepAnalysisAsleepREM",
    }
)
_UNIT_FACTORS: dict[str, float] = {
    "lb": 0.45359237,
    "g": 0.001,
    "kJ": 1 / 4.184,
    "hr": 60.0,
    "s": 1 / 60,
}
"""Factors to our units (kg, kcal, min); a unit not named here is taken as ours (count, count/min, kg,
kcal and `Cal`, min)."""


class ExportUnreadable(Exception):
    """The file is not an Apple Health export we can read; `message` tells the person why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class _Tally:
    total: float = 0.0
    count: int = 0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value


@dataclass
class ExportRead:
    """What an export held: one `Day` per metric and date (source `APPLE_HEALTH`)."""

    days: dict[Metric, list[Day]] = field(default_factory=dict)
    records: int = 0
    """Records, sleep periods and workouts read."""

    @property
    def day_count(self) -> int:
        return len({day.day for days in self.days.values() for day in days})


def _parse_moment(text: str) -> datetime:
    # "2026-11-02 06:58:00 +0100" → fromisoformat takes it without the space before the offset
    return datetime.fromisoformat(text[:19] + text[20:] if len(text) > 20 else text)


class _Reader:
    """Expat callbacks tallying (metric, source, day)."""

    def __init__(self) -> None:
        self.tallies: dict[tuple[Metric, str, str], _Tally] = {}
        self.records = 0
        self.root: str | None = None

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if self.root is None:
            self.root = name
            if name != "HealthData":
                raise ExportUnreadable("This file is not an Apple Health export (export.xml or export.zip).")
            return
        try:
            if name == "Record":
                self._record(attrs)
            elif name == "Workout":
                self._workout(attrs)
        except (KeyError, ValueError):
            return  # a record without the attributes we need, or a value that is not a number: skipped

    def _tally(self, metric: Metric, source: str, day: str, value: float) -> None:
        key = (metric, source, day)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = _Tally()
        tally.add(value)
        self.records += 1

    def _record(self, attrs: dict[str, str]) -> None:
        kind = attrs["type"]
        metric = _QUANTITIES.get(kind)
        if metric is not None:
            value = float(attrs["value"]) * _UNIT_FACTORS.get(attrs.get("unit", ""), 1.0)
            self._tally(metric, attrs.get("sourceName", ""), attrs["startDate"][:10], value)
        elif kind == _SLEEP and attrs.get("value") in _ASLEEP:
            start, end = _parse_moment(attrs["startDate"]), _parse_moment(attrs["endDate"])
            minutes = (end - start).total_seconds() / 60
            if minutes > 0:
                self._tally(Metric.SLEEP_MINUTES, attrs.get("sourceName", ""), attrs["endDate"][:10], minutes)

    def _workout(self, attrs: dict[str, str]) -> None:
        minutes = float(attrs["duration"]) * _UNIT_FACTORS.get(attrs.get("durationUnit", "min"), 1.0)
        if minutes > 0:
            self._tally(Metric.WORKOUT_MINUTES, attrs.get("sourceName", ""), attrs["startDate"][:10], minutes)

    def result(self) -> ExportRead:
        by_day: dict[tuple[Metric, str], list[_Tally]] = {}
        for (metric, _source, day), tally in self.tallies.items():
            by_day.setdefault((metric, day), []).append(tally)
        read = ExportRead(records=self.records)
        for (metric, day), tallies in sorted(by_day.items()):
            when = date.fromisoformat(day)
            if metric in TOTALS:
                value = max(t.total for t in tallies)
                found = Day(when, round(value, 3), round(value, 3), round(value, 3), APPLE_HEALTH)
            else:
                total, count = sum(t.total for t in tallies), sum(t.count for t in tallies)
                found = Day(
                    when,
                    round(total / count, 3),
                    round(min(t.low for t in tallies), 3),
                    round(max(t.high for t in tallies), 3),
                    APPLE_HEALTH,
                )
            read.days.setdefault(metric, []).append(found)
        return read


def _refuse_entities(*_: Any) -> None:
    raise ExportUnreadable("The export declares XML entities, which an Apple Health export never does.")


def read_xml(stream: IO[bytes], progress: Callable[[int], None] = lambda _: None) -> ExportRead:
    """Reads an `export.xml` from `stream` in pieces; `progress` gets the bytes read so far after each."""
    reader = _Reader()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.EntityDeclHandler = _refuse_entities
    parser.StartElementHandler = reader.start
    parser.buffer_text = True
    done = 0
    try:
        while piece := stream.read(FEED_BYTES):
            parser.Parse(piece, False)
            done += len(piece)
            progress(done)
    except expat.ExpatError as exc:
        raise ExportUnreadable(
            f"The export is not well-formed XML (line {exc.lineno}: {expat.errors.messages[exc.code]})."
        ) from None
    if done == 0:
        raise ExportUnreadable("The file is empty.")
    try:
        parser.Parse(b"", True)
    except expat.ExpatError as exc:  # what was read was fine, and then the file stopped
        raise ExportUnreadable(
            f"The export ends in the middle (line {exc.lineno}): export it again from the Health app."
        ) from None
    return reader.result()


def _export_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    candidates = [info for info in archive.infolist() if info.filename.rsplit("/", 1)[-1] == EXPORT_MEMBER]
    if not candidates:
        raise ExportUnreadable("The zip holds no export.xml: upload the export.zip the Health app made.")
    return min(candidates, key=lambda info: info.filename.count("/"))


def read_export(source: IO[bytes], progress: Callable[[float], None] = lambda _: None) -> ExportRead:
    """Reads an export from `source` (seekable): a zip holding `export.xml`, or the XML itself.
    `progress` gets the share read so far, 0 to 1."""
    source.seek(0, io.SEEK_END)
    size = source.seek(0)
    head = source.read(4)
    source.seek(0)
    if head.startswith(b"PK\x03\x04"):
        try:
            archive = zipfile.ZipFile(source)
            member = _export_member(archive)
            with archive.open(member) as xml:
                total = max(member.file_size, 1)
                return read_xml(xml, lambda done: progress(min(done / total, 1.0)))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ExportUnreadable(
                f"The zip is damaged ({exc}): export it again from the Health app."
            ) from None
    return read_xml(source, lambda done: progress(min(done / max(size, 1), 1.0)))


def iter_days(read: ExportRead) -> Iterator[tuple[Metric, Day]]:
    for metric, days in read.days.items():
        for day in days:
            yield metric, day
