"""`make bench-chat`: time to first delta through edge → router → orchestrator (memory recall included)
versus the model server's own first chunk, for 1 and 200 concurrent streams, and streamed events/s.

Starts the whole mesh like `make run` (offline model answering instantly: ATHENA_OFFLINE_DELAY_MS=0) on
free loopback ports in a temporary data directory, and writes bench/results/chat.json and chat.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from openai import AsyncOpenAI

from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Series:
    name: str
    concurrency: int
    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float


def summarize(name: str, concurrency: int, seconds: list[float]) -> Series:
    ms = [s * 1000 for s in seconds]
    return Series(
        name,
        concurrency,
        len(ms),
        percentile(ms, 50),
        percentile(ms, 95),
        percentile(ms, 99),
        statistics.mean(ms),
    )


async def model_first_chunk(base_url: str, samples: int) -> list[float]:
    """The model server's own time to first content chunk, measured directly with the SDK."""
    client = AsyncOpenAI(base_url=base_url, api_key="offline", max_retries=0)
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model="athena-offline", messages=[{"role": "user", "content": "hello there"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                timings.append(time.perf_counter() - started)
                break
        await stream.close()
    await client.close()
    return timings


async def one_turn(
    stub: chat_pb2_grpc.ChatServiceAsyncStub, token: str, text: str
) -> tuple[float, int, float]:
    """(time to first delta, events received, whole turn duration) of one Chat through the edge."""
    started = time.perf_counter()
    first: float | None = None
    events = 0
    call = stub.Chat(
        chat_pb2.ChatRequest(agent_id="athena", text=text),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=120,
    )
    async for event in call:
        events += 1
        if first is None and event.HasField("text_delta"):
            first = time.perf_counter() - started
    assert first is not None, "no text delta"
    return first, events, time.perf_counter() - started


async def run(samples: int, concurrency: int) -> dict[str, object]:
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    with tempfile.TemporaryDirectory(prefix="athena-bench-") as data:
        stack = Stack(
            StackConfig(
                data_dir=Path(data),
                ports=ports,
                offline_delay_ms=0,
                # One benchmark user sends hundreds of turns a minute; per-user limits are not measured.
                extra_env={"ROUTER_TURNS_PER_MINUTE": "1000000", "ROUTER_MAX_STREAMS_PER_USER": "1000"},
            )
        )
        await asyncio.to_thread(stack.start)
        try:
            model = await model_first_chunk(f"http://127.0.0.1:{ports.offline_model}/v1", samples)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.edge}") as channel:
                session = (
                    await auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
                        auth_pb2.DevLoginRequest(email="bench@example.com")
                    )
                ).session
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                token = session.access_token
                await one_turn(stub, token, "remember I benchmark the mesh")  # a memory to recall
                for _ in range(5):
                    await one_turn(stub, token, "warm up")
                single = [(await one_turn(stub, token, "what do you know?"))[0] for _ in range(samples)]

                # Many users at once: one token each, as in production (per-user limits stay out of the way).
                tokens = []
                for index in range(concurrency):
                    login = await auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
                        auth_pb2.DevLoginRequest(email=f"bench-{index}@example.com")
                    )
                    tokens.append(login.session.access_token)
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(one_turn(stub, user_token, "what do you know?") for user_token in tokens)
                )
                wall = time.perf_counter() - started
        finally:
            await asyncio.to_thread(stack.stop)
    concurrent = [first for first, _, _ in results]
    events = sum(count for _, count, _ in results)
    model_series = summarize("model server first chunk (direct)", 1, model)
    single_series = summarize("first delta through the edge", 1, single)
    concurrent_series = summarize("first delta through the edge", concurrency, concurrent)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "series": [asdict(model_series), asdict(single_series), asdict(concurrent_series)],
        "mesh_overhead_ms": {
            "p50": single_series.p50_ms - model_series.p50_ms,
            "p95": single_series.p95_ms - model_series.p95_ms,
            "p95_at_concurrency_above_single": concurrent_series.p95_ms - single_series.p95_ms,
        },
        "events_per_second": events / wall,
        "concurrent_wall_seconds": wall,
        "concurrency": concurrency,
        "targets": "overhead p50 ≤ 5 ms, p95 ≤ 15 ms; 200 streams: p95 +50 ms at most; ≥ 5,000 events/s",
    }


def write(result: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# bench-chat",
        "",
        f"Machine: {result['machine']}",
        "",
        "| series | streams | samples | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for series in result["series"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {series['name']} | {series['concurrency']} | {series['samples']} | {series['p50_ms']:.2f} | "
            f"{series['p95_ms']:.2f} | {series['p99_ms']:.2f} |"
        )
    overhead = result["mesh_overhead_ms"]
    lines += [
        "",
        f"Mesh overhead to first token: {json.dumps(overhead)}",
        f"Streamed events/s ({result['concurrency']} streams): {result['events_per_second']:.0f}",
        f"Targets: {result['targets']}",
    ]
    (RESULTS / "chat.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    write(asyncio.run(run(args.samples, args.concurrency)))


if __name__ == "__main__":
    main()
