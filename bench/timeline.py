"""`make bench-timeline`: where one turn's time goes, read from the mesh's own traces.

One user, one stream at a time, the model answering at once (bench-chat's instant series), every turn
traced: the load generator sends a sampled `traceparent` as the web app does, and every part exports its
spans over OTLP/gRPC to a sink in this process that keeps them (`devstack.otlp_sink`). For each kind of span
of a turn (the part that made it and its name; a database span by its statement's first words), the median
moment it started and ended, from the start of the edge's span of that turn, over `--turns` turns after a
warm-up; and where the client saw its first delta on the same clock. Read down the table: what starts only
when something above it ended is on the way to the first delta.

Then a **burst** (`--burst` streams started at once, 50; `--rounds` rounds, 5; the model pacing 20 ms a word,
as bench-chat's 50-stream series, every user with one memory): for each kind of span, when the burst's
turns reached it, p50 and p95 of its start and end from the moment the burst was sent, pooled over the
rounds, and the client's first delta on the same clock. Where a burst's first-delta p95 goes: waiting to
be taken by a process shows as a late start, work as a long span.

Tracing costs each span some microseconds (bench-chat measures what it adds to a turn), so the figures say
where the time goes, not how little it can be. Results go to bench/results/timeline.json and timeline.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from bench.chat import Processes, at_once, mesh_stream, percentile, running_mesh
from bench.provenance import StolenTime, commit, machine, write_results
from devstack.otlp_sink import OtlpSink, ReceivedSpan, serve
from devstack.process import free_port
from mesh.collection import collect_as_a_server

RESULTS = Path(__file__).resolve().parent / "results"
WARM_UP = 10
EXPORTED_SECONDS = 2.0
"""Long enough for every part's batch span processor to export what it holds (its delay is set to 0.2 s)."""
EDGE_SPAN = ("athena-edge", "/athena.chat.v1.ChatService/Chat")
STATEMENT_ATTRIBUTES = ("db.statement", "db.query.text")
CALL = "client: the call, until its first delta"
FIRST_DELTA = "client: its first delta"
BURST_DELAY_MS = 20
"""The model's pace in the burst, as bench-chat's series of streams at once."""
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


def _place(
    found: Sequence[ReceivedSpan], origin: int, starts: dict[str, list[float]], ends: dict[str, list[float]]
) -> None:
    """Adds each span of one turn's `found` under its label (a second of a kind as "(#2)"), its start and end
    in ms from `origin` (ns)."""
    seen: dict[str, int] = defaultdict(int)
    for span in sorted(found, key=lambda span: span.span.start_time_unix_nano):
        label = span_label(span)
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label} (#{seen[label]})"
        starts[label].append((span.span.start_time_unix_nano - origin) / 1e6)
        ends[label].append((span.span.end_time_unix_nano - origin) / 1e6)


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
        _place(found, origin, starts, ends)
    medians = sorted(
        ((statistics.median(starts[label]), statistics.median(ends[label]), label) for label in starts),
        key=lambda row: (row[0], -row[1]),
    )
    rows = [
        {"span": label, "turns": len(starts[label]), "start_ms": start, "end_ms": end}
        for start, end, label in medians
    ]
    return {"turns": len(turns), "spans": rows}


def burst_timeline(
    spans: Sequence[ReceivedSpan], bursts: Sequence[tuple[int, Sequence[float]]]
) -> dict[str, Any]:
    """Per kind of span of the turns whose edge span is among `spans`, when the turns of their burst
    reached it: p50 and p95 of its start and end, in ms from the burst's start, pooled over `bursts` (each:
    when it was sent, in ns, and its streams' first deltas in ms after that). A turn belongs to the last
    burst sent before its edge span started."""
    traces: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    sent = sorted(start for start, _ in bursts)
    starts: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)
    turns = 0
    for found in traces.values():
        edge = next((span for span in found if (span.service, span.name) == EDGE_SPAN), None)
        if edge is None:
            continue
        origin = next((start for start in reversed(sent) if start <= edge.span.start_time_unix_nano), None)
        if origin is None:
            continue
        turns += 1
        _place(found, origin, starts, ends)
    firsts = [first for _, burst in bursts for first in burst]
    if firsts:
        starts[FIRST_DELTA] = ends[FIRST_DELTA] = firsts
    order = sorted(starts, key=lambda label: (percentile(starts[label], 50), -percentile(ends[label], 50)))
    rows = [
        {
            "span": label,
            "turns": len(starts[label]),
            "start_p50_ms": percentile(starts[label], 50),
            "start_p95_ms": percentile(starts[label], 95),
            "end_p50_ms": percentile(ends[label], 50),
            "end_p95_ms": percentile(ends[label], 95),
        }
        for label in order
    ]
    return {"bursts": len(bursts), "turns": turns, "spans": rows}


async def run(turns: int, burst: int = 0, rounds: int = 0) -> dict[str, Any]:
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
            stolen_percent = stolen.percent()
            await asyncio.sleep(EXPORTED_SECONDS)
        spans = sink.spans(lambda span: span.trace_id not in warm)
        bursts = await _bursts(sink, tracing, burst, rounds) if burst and rounds else None
    finally:
        server.stop(None)
    return {
        "command": f"python -m bench.timeline --turns {turns} --burst {burst} --rounds {rounds}",
        "commit": commit(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cpu_stolen_percent": stolen_percent,
        "errors": errors,
        "first_delta_ms": statistics.median(first for _, first in calls) if calls else None,
        **timeline(spans, calls),
        "burst": bursts,
    }


async def _bursts(sink: OtlpSink, tracing: dict[str, str], streams: int, rounds: int) -> dict[str, Any]:
    """`rounds` traced bursts of `streams` streams at once on a mesh of their own (after a warm-up burst),
    each sent once the last one's work is done; `burst_timeline` of their turns."""
    sent: list[tuple[int, list[float]]] = []
    errors = 0
    data = Path(tempfile.mkdtemp(prefix="bench-timeline-burst-"))
    async with running_mesh(data, BURST_DELAY_MS, streams, tracing) as mesh:
        processes = Processes(mesh.stack)
        await at_once(streams, lambda user: mesh_stream(mesh, user, traceparent=True))
        await processes.settled()
        await asyncio.sleep(EXPORTED_SECONDS)
        before = {span.trace_id for span in sink.spans()}
        stolen = StolenTime()
        for _ in range(rounds):
            started = time.time_ns()
            answered = await at_once(streams, lambda user: mesh_stream(mesh, user, traceparent=True))
            errors += sum(1 for stream in answered if stream.error is not None or stream.first_delta is None)
            sent.append((started, [1000 * s.first_delta for s in answered if s.first_delta is not None]))
            await processes.settled()
        await asyncio.sleep(EXPORTED_SECONDS)
    spans = sink.spans(lambda span: span.trace_id not in before)
    return {
        "streams": streams,
        "delay_ms": BURST_DELAY_MS,
        "errors": errors,
        "cpu_stolen_percent": stolen.percent(),
        **burst_timeline(spans, sent),
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
    if result.get("burst"):
        lines += _burst_lines(result["burst"])
    return "\n".join(lines) + "\n"


def _burst_lines(burst: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## A burst: {burst['streams']} streams at once, the model pacing {burst['delay_ms']} ms a word",
        "",
        f"{burst['bursts']} bursts, {burst['turns']} traced turns, {burst['errors']} errors, CPU time stolen "
        f"by the hypervisor meanwhile: {burst['cpu_stolen_percent']:.1f} %. When the turns reached each kind "
        "of span, in ms from the moment their burst was sent, pooled over the bursts (every span costs some "
        "CPU: a traced burst is slower than bench-chat's; the order and the shares are what it shows).",
        "",
        "| span | starts p50 | p95 | ends p50 | p95 | turns |",
        "|---|---|---|---|---|---|",
    ]
    for row in burst["spans"]:
        if 2 * row["turns"] < burst["turns"]:
            continue
        lines.append(
            f"| {row['span']} | {row['start_p50_ms']:.1f} | {row['start_p95_ms']:.1f} | "
            f"{row['end_p50_ms']:.1f} | {row['end_p95_ms']:.1f} | {row['turns']} |"
        )
    return lines


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--turns", type=int, default=200, help="traced turns, after a warm-up (200)")
    parser.add_argument("--burst", type=int, default=50, help="streams at once in a burst (50; 0: none)")
    parser.add_argument("--rounds", type=int, default=5, help="traced bursts, after a warm-up one (5)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to write (default: {RESULTS})")
    args = parser.parse_args(list(argv) if argv is not None else None)
    collect_as_a_server()  # as every service and bench.chat's load generator
    result = uvloop.run(run(args.turns, args.burst, args.rounds))
    write_results(args.results, "timeline", result, markdown(result))


if __name__ == "__main__":
    main()
