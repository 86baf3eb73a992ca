"""`make bench-timeline`: where one turn's time goes, read from the mesh's own traces.

One user, one stream at a time, the model answering at once (bench-chat's instant series), every turn
traced: the load generator sends a sampled `traceparent` as the web app does, and every part exports its
spans over OTLP/gRPC to a sink in this process that keeps them (`devstack.otlp_sink`). For each kind of span
of a turn (the part that made it and its name; a database span by its statement's first words), the median
moment it started and ended, from the start of the edge's span of that turn, over `--turns` turns after a
warm-up; and where the client saw its first delta on the same clock. Read down the table: what starts only
when something above it ended is on the way to the first delta.

Tracing costs each span some microseconds (bench-chat measures what it adds to a turn), so the figures say
where the time goes, not how little it can be. Results go to bench/results/timeline.json and timeline.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from bench.chat import mesh_stream, running_mesh
from bench.provenance import StolenTime, commit, machine, write_results
from devstack.otlp_sink import OtlpSink, ReceivedSpan, serve
from devstack.process import free_port
from mesh.app import GC_THRESHOLDS

RESULTS = Path(__file__).resolve().parent / "results"
WARM_UP = 10
EXPORTED_SECONDS = 2.0
"""Long enough for every part's batch span processor to export what it holds (its delay is set to 0.2 s)."""
EDGE_SPAN = ("athena-edge", "/athena.chat.v1.ChatService/Chat")
STATEMENT_ATTRIBUTES = ("db.statement", "db.query.text")
CALL = "client: the call, until its first delta"
LABEL_CHARACTERS = 48
"""Of a statement shown in a label (its first words; a statement with literals would show them all)."""


def span_label(span: ReceivedSpan) -> str:
    """The part that made `span` and what it did: its name, or a database statement's first words."""
    service = span.service.removeprefix("athena-")
    attributes = span.attributes
    statement = next((attributes[key] for key in STATEMENT_ATTRIBUTES if key in attributes), None)
    if isinstance(statement, str):
        words = [word for word in statement.split() if word != "?"]  # redis-py's masked arguments
        shown = " ".join(words[:6])
        if len(shown) > LABEL_CHARACTERS:
            shown = shown[:LABEL_CHARACTERS].rsplit(" ", 1)[0]
        if shown != " ".join(words):
            shown += " …"
        return f"{service}: {attributes.get('db.system', 'database')} {shown}"
    return f"{service}: {span.name}"


def timeline(spans: Sequence[ReceivedSpan], calls: Sequence[tuple[int, float]] = ()) -> dict[str, Any]:
    """Per kind of span of the turns whose edge span is among `spans`: how many turns had it and the
    median start and end, in ms from each turn's edge span. `calls` (each client call's wall-clock start in
    ns and its first delta in ms after it) place the client on that clock too: a turn's call is the last
    one that started before its edge span."""
    traces: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    turns = []
    for found in traces.values():
        edge = [span for span in found if (span.service, span.name) == EDGE_SPAN]
        if edge:
            turns.append((edge[0].span.start_time_unix_nano, found))
    turns.sort(key=lambda turn: turn[0])
    starts: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)
    calls = sorted(calls)
    for origin, found in turns:
        call = next((call for call in reversed(calls) if call[0] <= origin), None)
        if call is not None:
            starts[CALL].append((call[0] - origin) / 1e6)
            ends[CALL].append((call[0] - origin) / 1e6 + call[1])
        seen: dict[str, int] = defaultdict(int)
        for span in sorted(found, key=lambda span: span.span.start_time_unix_nano):
            label = span_label(span)
            seen[label] += 1
            if seen[label] > 1:
                label = f"{label} (#{seen[label]})"
            starts[label].append((span.span.start_time_unix_nano - origin) / 1e6)
            ends[label].append((span.span.end_time_unix_nano - origin) / 1e6)
    medians = sorted(
        ((statistics.median(starts[label]), statistics.median(ends[label]), label) for label in starts),
        key=lambda row: (row[0], -row[1]),
    )
    rows = [
        {"span": label, "turns": len(starts[label]), "start_ms": start, "end_ms": end}
        for start, end, label in medians
    ]
    return {"turns": len(turns), "spans": rows}


async def run(turns: int) -> dict[str, Any]:
    sink = OtlpSink(keep=True)
    port = free_port()
    server = serve(sink, port)
    tracing = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    calls: list[tuple[int, float]] = []
    errors = 0
    try:
        async with running_mesh(Path(tempfile.mkdtemp(prefix="bench-timeline-")), 0, 1, tracing) as mesh:
            for _ in range(WARM_UP):  # connections, caches, code paths
                await mesh_stream(mesh, 0, traceparent=True)
            await asyncio.sleep(EXPORTED_SECONDS)
            warm = {span.trace_id for span in sink.spans()}
            stolen = StolenTime()
            for _ in range(turns):
                started = time.time_ns()
                stream = await mesh_stream(mesh, 0, traceparent=True)
                if stream.error is not None or stream.first_delta is None:
                    errors += 1
                else:
                    calls.append((started, 1000 * stream.first_delta))
            await asyncio.sleep(EXPORTED_SECONDS)
        spans = sink.spans(lambda span: span.trace_id not in warm)
    finally:
        server.stop(None)
    return {
        "command": f"python -m bench.timeline --turns {turns}",
        "commit": commit(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cpu_stolen_percent": stolen.percent(),
        "errors": errors,
        "first_delta_ms": statistics.median(first for _, first in calls) if calls else None,
        **timeline(spans, calls),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# bench-timeline",
        "",
        f"Command: `{result['command']}` (`make bench-timeline`). "
        f"Commit {result['commit']}, {result['when']}.",
        f"Machine: {result['machine']}",
        "",
        f"One stream at a time, instant model, every turn traced; {result['turns']} turns, "
        f"{result['errors']} errors, CPU time stolen by the hypervisor meanwhile: "
        f"{result['cpu_stolen_percent']:.1f} %. Medians, in ms from the start of the edge's span of each "
        "turn (bench/timeline.py says how they are measured).",
        "",
    ]
    common = [row for row in result["spans"] if 2 * row["turns"] >= result["turns"]]
    if len(common) < len(result["spans"]):
        lines += [
            f"{len(result['spans']) - len(common)} kinds of span met in fewer than half the turns (what ran "
            "beside a turn now and then) are left out here; timeline.json has them.",
            "",
        ]
    lines += ["| span | starts | ends | takes | turns |", "|---|---|---|---|---|"]
    for row in common:
        lines.append(
            f"| {row['span']} | {row['start_ms']:.2f} | {row['end_ms']:.2f} | "
            f"{row['end_ms'] - row['start_ms']:.2f} | {row['turns']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--turns", type=int, default=200, help="traced turns, after a warm-up (200)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to write (default: {RESULTS})")
    args = parser.parse_args(list(argv) if argv is not None else None)
    gc.set_threshold(*GC_THRESHOLDS)  # as every service and bench.chat's load generator
    result = uvloop.run(run(args.turns))
    write_results(args.results, "timeline", result, markdown(result))


if __name__ == "__main__":
    main()
