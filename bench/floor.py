"""`make bench-floor`: how much of what the mesh costs a stream is its transports', how much its own work.

Two series, each on a stack started as `make bench-chat` starts its own (every user with one memory of
30-60 words, every user chatted once before), each run twice: first the **mesh** as it is, then the
**floor**: the same stack with its orchestrator and memory stopped and replaced, on the same ports behind
the same Envoy, by skeletons that make the same calls over the same transports and nothing else. Each
phase alternates its rounds with as many streams sent straight to the model (the openai SDK, as
bench-chat's direct series), streams pooled:

1. **instant** (`--instant-turns`, 300): one stream at a time, the model answering at once.
2. **paced** (`--rounds` rounds, 10, of `--streams` streams, 50, started at once): the model pacing 20 ms a
   word, answers of 30-60 words; with the CPU each process spends per turn.

The skeleton orchestrator (grpc.aio on uvloop, as every service) admits the turn with one Redis script
while it asks the model for the text's embedding (HTTP, base64 vectors), starts the turn in the skeleton
memory (one unary gRPC call carrying the vector), streams the model's answer (SSE) as chat events with the
orchestrator's coalescing (the first delta at once, then at most one event per 50 ms), and releases the
admission with a second script. The skeleton memory answers StartTurn once two trivial statements ran at
once on two pooled PostgreSQL connections (the store and the recall). No authentication, validation,
logging, metrics, tracing, encryption, SQL beyond `SELECT $1`, prompt or history.

A third phase, **one hop less**, runs the skeleton orchestrator alone: it makes the skeleton memory's two
statements itself, on a pool of its own, instead of the StartTurn call. It measures what a design whose
turn start reaches PostgreSQL without a memory hop would cost at best (such a design would hand the
orchestrator what memory alone holds now: the people's data keys).

The floor's overhead over the model is what this design (Python services on grpc.aio, Envoy, Redis,
PostgreSQL, the model's HTTP API, two cores shared with the model and the load generator) costs before any
of the mesh's own work; the mesh's overhead above the floor is that work. Results go to
bench/results/floor.json and floor.md.

`python -m bench.floor orchestrator|memory` runs one skeleton (the benchmark starts them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import uvloop
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from openai import AsyncOpenAI
from redis import asyncio as aioredis

from bench.chat import (
    LOAD_GENERATOR,
    Mesh,
    Processes,
    Stream,
    at_once,
    direct_stream,
    fact,
    mesh_stream,
    percentile,
    prompt,
    running_mesh,
)
from bench.provenance import StolenTime, commit, machine, write_results
from mesh.collection import collect_as_a_server, freeze_startup

RESULTS = Path(__file__).resolve().parent / "results"
DELAY_MS = 20
COALESCE_SECONDS = 0.05
SKELETONS = ("orchestrator", "memory")
PHASES = {"mesh": "mesh", "floor": "floor", "floor_one_hop_less": "floor, one hop less"}
"""Each phase's key in the results and its row's name."""
ADMIT = "redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 60); return 1"
"""The skeleton's admission and release: one script call each, as the orchestrator's limiter makes."""

# -- the skeletons -------------------------------------------------------------------------------------------


async def _statement(pool: asyncpg.Pool, value: object) -> None:
    async with pool.acquire() as connection:
        await connection.fetchval("SELECT $1::text", str(value))


async def _start_turn(pool: asyncpg.Pool, request: memory_pb2.StartTurnRequest) -> None:
    """What the skeleton memory does for a turn: two trivial statements at once (the store and the recall)."""
    await asyncio.gather(_statement(pool, request.chat.text), _statement(pool, len(request.recall.embedding)))


class _Memory:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def StartTurn(
        self, request: memory_pb2.StartTurnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.StartTurnResponse:
        await _start_turn(self._pool, request)
        return memory_pb2.StartTurnResponse()


class _Orchestrator:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis,
        memory: memory_pb2_grpc.ConversationServiceAsyncStub | asyncpg.Pool,
        model_url: str,
    ) -> None:
        """`memory`: the skeleton memory, or a pool on which its statements are made here (one hop less)."""
        self._session = session
        self._admit = redis.register_script(ADMIT)
        self._memory = memory
        self._model_url = model_url

    async def _embedding(self, text: str) -> list[float]:
        body = {"model": "athena-offline", "input": [text], "encoding_format": "base64"}
        async with self._session.post(f"{self._model_url}/embeddings", json=body) as response:
            answer = json.loads(await response.read())
        raw = base64.b64decode(answer["data"][0]["embedding"])
        return list(memoryview(raw).cast("f"))

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        user = dict(context.invocation_metadata() or ()).get("authorization", "")[-16:]
        _, vector = await asyncio.gather(self._admit(keys=[f"floor:{user}"]), self._embedding(request.text))
        recall = memory_pb2.TurnRecall(k=8, embedding=vector, embedding_model="athena-offline")
        start = memory_pb2.StartTurnRequest(chat=request, history_messages=20, recall=recall)
        if isinstance(self._memory, asyncpg.Pool):
            await _start_turn(self._memory, start)
        else:
            await self._memory.StartTurn(start)
        # One memory of 45 words for everyone: the mean of the users' own (30-60), which recall finds.
        body = {"model": "athena-offline", "stream": True, "messages": prompt(fact(15))}
        clock = asyncio.get_running_loop().time
        pending: list[str] = []
        sent: float | None = None
        async with self._session.post(f"{self._model_url}/chat/completions", json=body) as response:
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                choices = json.loads(line[6:])["choices"]
                if not choices or not (text := choices[0]["delta"].get("content")):
                    continue
                pending.append(text)
                if sent is None or clock() - sent >= COALESCE_SECONDS:
                    yield chat_pb2.ChatResponse(text_delta=chat_pb2.TextDelta(text="".join(pending)))
                    pending.clear()
                    sent = clock()
        if pending:
            yield chat_pb2.ChatResponse(text_delta=chat_pb2.TextDelta(text="".join(pending)))
        await self._admit(keys=[f"floor:{user}"])


def _service(module: Any, name: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[name].full_name)


async def _serve(server: grpc.aio.Server, port: int) -> None:
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    freeze_startup()
    await server.wait_for_termination()


async def serve_memory(port: int, database_url: str) -> None:
    async with asyncpg.create_pool(database_url, min_size=4, max_size=20) as pool:
        start_turn = grpc.unary_unary_rpc_method_handler(
            _Memory(pool).StartTurn,
            request_deserializer=memory_pb2.StartTurnRequest.FromString,
            response_serializer=memory_pb2.StartTurnResponse.SerializeToString,
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _service(memory_pb2, "ConversationService"), {"StartTurn": start_turn}
                ),
            )
        )
        await _serve(server, port)


async def serve_orchestrator(
    port: int, memory_port: int, model_url: str, redis_url: str, database_url: str | None = None
) -> None:
    """With `database_url`, the turn's statements are made here (one hop less) instead of in memory."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        redis = await stack.enter_async_context(aioredis.from_url(redis_url))
        memory: memory_pb2_grpc.ConversationServiceAsyncStub | asyncpg.Pool
        if database_url:
            memory = await stack.enter_async_context(
                asyncpg.create_pool(database_url, min_size=4, max_size=20)
            )
        else:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{memory_port}"))
            memory = memory_pb2_grpc.ConversationServiceStub(channel)
        server = grpc.aio.server()
        chat = grpc.unary_stream_rpc_method_handler(
            _Orchestrator(session, redis, memory, model_url).Chat,
            request_deserializer=chat_pb2.ChatRequest.FromString,
            response_serializer=chat_pb2.ChatResponse.SerializeToString,
        )
        chat_service = _service(chat_pb2, "ChatService")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(chat_service, {"Chat": chat}),))
        checks = HealthServicer()  # Envoy routes only to a serving orchestrator
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        for service in ("", chat_service):
            await checks.set(service, health_pb2.HealthCheckResponse.SERVING)
        await _serve(server, port)


# -- the benchmark -------------------------------------------------------------------------------------------


async def _phase(
    streams: int, rounds: int, mesh: Mesh, client: AsyncOpenAI, processes: Processes
) -> dict[str, Any]:
    """`rounds` bursts of `streams` through the edge and as many straight to the model, alternating. With
    more than one stream, the mesh's CPU per turn too, counted until what its turns left for later is done
    (for one stream the waits for it would count more idle time than turns)."""
    through: list[Stream] = []
    direct: list[Stream] = []
    cpu: dict[str, float] = {}
    stolen = StolenTime()
    for _ in range(rounds):
        if streams > 1:
            await processes.settled()
        before = processes.cpu() if streams > 1 else {}
        through += await at_once(streams, lambda index: mesh_stream(mesh, index))
        if streams > 1:
            await processes.settled()
            for part, seconds in processes.cpu().items():
                if part != LOAD_GENERATOR:
                    cpu[part] = cpu.get(part, 0.0) + 1000 * (seconds - before[part]) / (streams * rounds)
        direct += await at_once(streams, lambda index: direct_stream(client, fact(index)))
    first = {
        name: {
            q: percentile(sorted(1000 * s.first_delta for s in series if s.first_delta is not None), q)
            for q in (50, 95)
        }
        for name, series in (("mesh", through), ("direct", direct))
    }
    return {
        "first_delta_ms": first,
        "overhead_ms": {q: first["mesh"][q] - first["direct"][q] for q in (50, 95)},
        "errors": sum(1 for s in through + direct if s.error),
        "cpu_ms_per_turn": {part: round(ms, 2) for part, ms in cpu.items()},
        "cpu_stolen_percent": stolen.percent(),
    }


def _skeleton(role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.floor", role], env={**os.environ, **env})


async def _warm(streams: int, mesh: Mesh) -> None:
    """Connections, caches, every user's first turn."""
    for _ in range(2):
        failed = [s.error for s in await at_once(streams, lambda index: mesh_stream(mesh, index)) if s.error]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed while warming up, the first: {failed[0]}")


async def series(data: Path, streams: int, rounds: int, delay_ms: int) -> dict[str, Any]:
    """The mesh, then the skeletons in place of its orchestrator and memory, on one stack."""
    async with running_mesh(data, delay_ms, streams) as mesh:
        stack = mesh.stack
        client = AsyncOpenAI(base_url=mesh.model_url, api_key="offline", max_retries=0)
        await _warm(streams, mesh)
        whole = await _phase(streams, rounds, mesh, client, Processes(stack))
        for part in SKELETONS:
            stack.stop_part(part)
        memory = {"FLOOR_PORT": str(stack.config.ports.memory), "DATABASE_URL": stack.database_url}
        floor = await _skeletons_phase(
            streams,
            rounds,
            mesh,
            client,
            {"memory": _skeleton("memory", memory), "orchestrator": _orchestrator_skeleton(mesh)},
        )
        # One hop less: the skeleton orchestrator alone, making memory's statements itself.
        hop_less = await _skeletons_phase(
            streams,
            rounds,
            mesh,
            client,
            {"orchestrator": _orchestrator_skeleton(mesh, database_url=stack.database_url)},
        )
        await client.close()
    return {
        "streams": streams,
        "rounds": rounds,
        "delay_ms": delay_ms,
        "mesh": whole,
        "floor": floor,
        "floor_one_hop_less": hop_less,
    }


def _orchestrator_skeleton(mesh: Mesh, *, database_url: str | None = None) -> subprocess.Popen[bytes]:
    """The skeleton orchestrator on the orchestrator's port; with `database_url`, making memory's statements
    itself (one hop less) instead of calling the skeleton memory."""
    ports = mesh.stack.config.ports
    env = {
        "FLOOR_PORT": str(ports.orchestrator),
        "FLOOR_MEMORY_PORT": str(ports.memory),
        "FLOOR_MODEL_URL": mesh.model_url,
        "REDIS_URL": mesh.stack.redis_url,
    }
    if database_url:
        env["FLOOR_DATABASE_URL"] = database_url
    return _skeleton("orchestrator", env)


async def _skeletons_phase(
    streams: int, rounds: int, mesh: Mesh, client: AsyncOpenAI, skeletons: dict[str, subprocess.Popen[bytes]]
) -> dict[str, Any]:
    """A phase with `skeletons` (started) in place of their parts; the parts none replaces stay stopped.
    The skeletons are stopped at its end."""
    try:
        await asyncio.sleep(3.0)  # started, and found healthy by Envoy's checks
        await _warm(streams, mesh)
        stand_ins = {part: process.pid for part, process in skeletons.items()}
        stopped = [part for part in SKELETONS if part not in skeletons]
        return await _phase(streams, rounds, mesh, client, Processes(mesh.stack, stand_ins, stopped))
    finally:
        for process in skeletons.values():
            process.terminate()
            process.wait()


async def run(instant_turns: int, streams: int, rounds: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    return {
        "command": (
            f"python -m bench.floor --instant-turns {instant_turns} --streams {streams} --rounds {rounds}"
        ),
        "commit": commit(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "series": [
            await series(data / "instant", 1, instant_turns, 0),
            await series(data / "paced", streams, rounds, DELAY_MS),
        ],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# bench-floor",
        "",
        f"Command: `{result['command']}` (`make bench-floor`). Commit {result['commit']}, {result['when']}.",
        f"Machine: {result['machine']}",
        "",
        "Each series runs the mesh, then the same stack with its orchestrator and memory replaced by "
        "skeletons that make the same calls over the same transports and nothing else (**floor**; "
        "bench/floor.py says what they do); rounds alternate with as many streams straight to the model, "
        "streams pooled. Overhead: first delta through the edge minus the model's own.",
    ]
    for found in result["series"]:
        lines += _series_lines(found)
    return "\n".join(lines) + "\n"


def _series_lines(found: dict[str, Any]) -> list[str]:
    streams, rounds, delay_ms = found["streams"], found["rounds"], found["delay_ms"]
    title = (
        f"One stream at a time, instant model ({rounds} turns)"
        if streams == 1
        else f"{streams} streams at once, model pacing {delay_ms} ms a word ({rounds} rounds)"
    )
    lines = [
        "",
        f"## {title}",
        "",
        "| | first delta p50 / p95 ms | model alone p50 / p95 ms | overhead p50 / p95 ms | errors "
        "| CPU stolen |",
        "|---|---|---|---|---|---|",
    ]
    for name in PHASES:
        if name not in found:  # results from before the third phase
            continue
        phase = found[name]
        first, over = phase["first_delta_ms"], phase["overhead_ms"]
        lines.append(
            f"| {PHASES[name]} | {first['mesh'][50]:.1f} / {first['mesh'][95]:.1f} | "
            f"{first['direct'][50]:.1f} / {first['direct'][95]:.1f} | **{over[50]:.1f} / {over[95]:.1f}** | "
            f"{phase['errors']} | {phase['cpu_stolen_percent']:.1f} % |"
        )
    parts = list(found["mesh"]["cpu_ms_per_turn"])
    if parts:
        lines += [
            "",
            "CPU milliseconds per turn, by process, until what the turns left for later is done (the load "
            "generator left out):",
            "",
            "| | " + " | ".join(parts) + " | sum |",
            "|---|" + "---|" * (len(parts) + 1),
        ]
        for name in PHASES:
            if name not in found:
                continue
            cpu = found[name]["cpu_ms_per_turn"]
            cells = " | ".join(f"{cpu.get(part, 0.0):.2f}" for part in parts)
            lines.append(f"| {PHASES[name]} | {cells} | {sum(cpu.values()):.1f} |")
    return lines


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", nargs="?", choices=("orchestrator", "memory"), help="run one skeleton")
    parser.add_argument("--instant-turns", type=int, default=300, help="turns of the instant series (300)")
    parser.add_argument("--streams", type=int, default=50, help="streams of the paced series (50)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the paced series, pooled (10)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to write (default: {RESULTS})")
    args = parser.parse_args(list(argv) if argv is not None else None)
    collect_as_a_server()  # as every service and bench.chat's load generator
    port = int(os.environ.get("FLOOR_PORT", "0"))
    if args.role == "memory":
        uvloop.run(serve_memory(port, os.environ["DATABASE_URL"]))
    elif args.role == "orchestrator":
        memory_port = int(os.environ["FLOOR_MEMORY_PORT"])
        uvloop.run(
            serve_orchestrator(
                port,
                memory_port,
                os.environ["FLOOR_MODEL_URL"],
                os.environ["REDIS_URL"],
                os.environ.get("FLOOR_DATABASE_URL"),
            )
        )
    else:
        result = uvloop.run(run(args.instant_turns, args.streams, args.rounds))
        write_results(args.results, "floor", result, markdown(result))


if __name__ == "__main__":
    main()
