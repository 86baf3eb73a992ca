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

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import random
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import asyncpg
import grpc
import psutil
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from athena.uploads.v1 import uploads_pb2, uploads_pb2_grpc

from bench.provenance import commit, machine
from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

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


# -- the benchmark ---------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parent / "results"
RSS_TARGET_MB = 300
MIN_EXPORT_BYTES = 200 * 1024 * 1024


@dataclass
class Run:
    """One upload and import of a file through the mesh."""

    name: str
    size_bytes: int
    upload_seconds: float = 0.0
    import_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    state: str = ""
    records: int = 0
    days: int = 0
    steps_match: bool = False
    health_rows: int = 0


class _RssPeak:
    """Samples a process's RSS every 50 ms while it runs."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> _RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _upload(channel: grpc.aio.Channel, token: str, path: Path, run: Run) -> str:
    uploads = uploads_pb2_grpc.UploadsServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(1 << 20):
            digest.update(piece)
    created = await uploads.CreateUpload(
        uploads_pb2.CreateUploadRequest(
            kind=uploads_pb2.UPLOAD_KIND_APPLE_HEALTH_EXPORT,
            file_name=path.name,
            size_bytes=run.size_bytes,
            sha256=digest.hexdigest(),
        ),
        metadata=metadata,
    )
    started = time.perf_counter()
    offset = 0
    with path.open("rb") as source:
        while piece := source.read(created.max_chunk_bytes):
            await uploads.AppendChunk(
                uploads_pb2.AppendChunkRequest(
                    upload_id=created.upload.id,
                    offset=offset,
                    data=piece,
                    sha256=hashlib.sha256(piece).hexdigest(),
                ),
                metadata=metadata,
            )
            offset += len(piece)
    run.upload_seconds = time.perf_counter() - started
    started = time.perf_counter()
    while True:
        got = await uploads.GetUpload(
            uploads_pb2.GetUploadRequest(upload_id=created.upload.id), metadata=metadata
        )
        if got.upload.state not in (uploads_pb2.UPLOAD_STATE_RECEIVING, uploads_pb2.UPLOAD_STATE_IMPORTING):
            break
        await asyncio.sleep(0.1)
    run.import_seconds = time.perf_counter() - started
    run.state = uploads_pb2.UploadState.Name(got.upload.state)
    run.records, run.days = got.upload.records_imported, got.upload.days_imported
    if got.upload.status_message:
        run.state += f" ({got.upload.status_message})"
    return created.upload.id


async def _steps(channel: grpc.aio.Channel, token: str, first: date, last: date) -> dict[date, float]:
    integrations = integrations_pb2_grpc.IntegrationsServiceStub(channel)
    found: dict[date, float] = {}
    start = first
    while start <= last:
        end = min(start + timedelta(days=365), last)
        answer = await integrations.WearableStats(
            integrations_pb2.WearableStatsRequest(
                metric="steps", start_date=start.isoformat(), end_date=end.isoformat()
            ),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        found |= {date.fromisoformat(day.date): day.value for day in answer.days}
        start = end + timedelta(days=1)
    return found


async def run_benchmark(days: int, records_per_day: int, data: Path) -> dict[str, Any]:
    export = data / "export.xml"
    archive = data / "export.zip"
    generated = time.perf_counter()
    expected = write_export(export, days=days, records_per_day=records_per_day)
    write_export(archive, days=days, records_per_day=records_per_day, as_zip=True)
    generated = time.perf_counter() - generated
    first, last = min(expected.steps), max(expected.steps)
    want = {day: float(count) for day, count in expected.steps.items()}
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    stack = Stack(StackConfig(data_dir=data / "mesh", ports=ports))
    await asyncio.to_thread(stack.start)
    runs: list[Run] = []
    try:
        edge = grpc.aio.insecure_channel(
            f"127.0.0.1:{ports.edge}", options=[("grpc.max_send_message_length", 4 << 20)]
        )
        internal = grpc.aio.insecure_channel(f"127.0.0.1:{ports.integrations}")
        login = await auth_pb2_grpc.AuthServiceStub(edge).DevLogin(
            auth_pb2.DevLoginRequest(email="bench-health@example.com")
        )
        token = login.session.access_token
        for name, path in (("export.xml", export), ("export.xml again", export), ("export.zip", archive)):
            run = Run(name, path.stat().st_size)
            async with _RssPeak(stack.process("integrations").pid) as rss:
                await _upload(edge, token, path, run)
            run.peak_rss_mb = round(rss.peak / 2**20, 1)
            run.steps_match = await _steps(internal, token, first, last) == want
            async with asyncpg.create_pool(stack.database_url, min_size=1, max_size=1) as pool:
                run.health_rows = await pool.fetchval("SELECT count(*) FROM integrations.health_days")
            runs.append(run)
            print(f"{run}", flush=True)
        await edge.close(None)
        await internal.close(None)
    finally:
        await asyncio.to_thread(stack.stop)
    return {
        "command": f"python -m bench.apple_health --days {days} --records-per-day {records_per_day}",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "export": {
            "days": days,
            "records": expected.records,
            "xml_bytes": export.stat().st_size,
            "zip_bytes": archive.stat().st_size,
            "generated_seconds": round(generated, 1),
        },
        "runs": [vars(run) for run in runs],
    }


def markdown(result: dict[str, Any]) -> str:
    export = result["export"]
    runs = result["runs"]
    big_enough = export["xml_bytes"] >= MIN_EXPORT_BYTES
    under = all(run["peak_rss_mb"] < RSS_TARGET_MB for run in runs)
    matches = all(run["steps_match"] for run in runs)
    unchanged = runs[0]["health_rows"] == runs[1]["health_rows"] and runs[1]["steps_match"]
    lines = [
        "# Apple Health import (`make bench-health`)",
        "",
        f"`{result['command']}` at {result['commit']}, {result['date']}, {result['machine']}.",
        "",
        f"Export: {export['days']} days, {export['records']:,} records, export.xml "
        f"{export['xml_bytes'] / 2**20:,.1f} MiB (export.zip {export['zip_bytes'] / 2**20:,.1f} MiB), "
        "uploaded through the edge in 2 MiB chunks to a mesh started like `make run`.",
        "",
        "| file | size (MiB) | upload (s) | import (s) | integrations peak RSS (MiB) | state | records "
        "| days | steps per day match the file | health rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['size_bytes'] / 2**20:,.1f} | {r['upload_seconds']:.1f} "
        f"| {r['import_seconds']:.1f} | {r['peak_rss_mb']} | {r['state']} | {r['records']:,} "
        f"| {r['days']:,} | {r['steps_match']} "
        f"| {r['health_rows']:,} |"
        for r in runs
    ]
    lines += [
        "",
        "Verdict (issue 15):",
        f"- export of at least 200 MB: {'met' if big_enough else 'MISSED'} "
        f"({export['xml_bytes'] / 1e6:,.0f} MB)",
        f"- importing process's RSS under {RSS_TARGET_MB} MB: {'met' if under else 'MISSED'} "
        f"(peak {max(r['peak_rss_mb'] for r in runs)} MiB)",
        f"- `wearable_stats` steps per day match the file: {'met' if matches else 'MISSED'}",
        f"- importing it again changes nothing: {'met' if unchanged else 'MISSED'} "
        f"({runs[0]['health_rows']:,} rows before, {runs[1]['health_rows']:,} after)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.apple_health", description=__doc__)
    parser.add_argument("--days", type=int, default=1100, help="days of data in the export")
    parser.add_argument(
        "--records-per-day", type=int, default=500, help="records a day (about 410 bytes each)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    with tempfile.TemporaryDirectory(prefix="athena-bench-health-") as data:
        result = asyncio.run(run_benchmark(args.days, args.records_per_day, Path(data)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "apple_health.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / "apple_health.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
