"""`make bench-ab A=<revision> B=<revision>`: two revisions of the mesh side by side, bursts alternating.

A change worth a few per cent is invisible between two runs of `make bench-chat` here: this machine's speed
for a dozen busy processes moves by up to 2× within an hour (the same code measured a 50-stream burst's
overhead p95 at 39 and at 156 ms twenty minutes apart). So both revisions run at once, each from a git
worktree of its own (`StackConfig.source_dir`: its Python parts start there; contracts, Envoy and the web
app are this tree's, so the two may differ in code, not in their contracts), and every round sends a burst
of `--streams` streams to A and one to B (which goes first alternates) and then one to the model alone, so
that both meet the machine in the same state. The revision `.` is this working tree as it is.

Reported per revision, over all rounds: first delta p50/p95 and their overhead over the model alone, and each
process's CPU per turn until the burst's last first delta (what a burst of turn starts costs). With
`--streams 1 --delay-ms 0` the rounds are single turns with the instant model (no waits between them).
Results go to bench/results/ab.json and ab.md, or `--name <name>`.json and .md beside them (a comparison
kept apart from the committed one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import uvloop
from athena.chat.v1 import chat_pb2
from openai import AsyncOpenAI

from bench.chat import (
    AGENT,
    LOAD_GENERATOR,
    QUESTION,
    Mesh,
    Processes,
    at_once,
    direct_stream,
    fact,
    percentile,
    running_mesh,
)
from bench.provenance import StolenTime, commit, machine, write_results
from mesh.collection import collect_as_a_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIDES = ("A", "B")


@contextlib.contextmanager
def checkout(revision: str, into: Path) -> Iterator[Path]:
    """The tree of `revision` (a detached git worktree under `into`, removed afterwards); `.` is this one.
    Each side checks out under a directory of its own, so a revision may be compared with itself."""
    if revision == ".":
        yield ROOT
        return
    into.mkdir(parents=True, exist_ok=True)
    tree = into / revision.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def describe(revision: str) -> str:
    """`revision` as a commit (with "-dirty" for this tree when it has changes)."""
    if revision == ".":
        return commit()
    found = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return found.stdout.strip()


async def first_deltas(
    mesh: Mesh, streams: int, processes: Processes
) -> tuple[list[float], dict[str, float]]:
    """A burst of `streams` turns: each one's first delta (ms), and each process's CPU seconds until the
    last of them."""
    firsts: list[float] = []
    before = processes.cpu()
    until: dict[str, float] = {}

    async def stream(user: int) -> None:
        started = time.perf_counter()
        call = mesh.chat(user).Chat(
            chat_pb2.ChatRequest(agent_id=AGENT, text=QUESTION), metadata=mesh.metadata(user), timeout=600
        )
        seen = False
        async for event in call:
            if event.HasField("text_delta") and not seen:
                seen = True
                firsts.append(1000 * (time.perf_counter() - started))
                if len(firsts) == streams:
                    until.update(processes.cpu())

    await asyncio.gather(*(stream(user) for user in range(streams)))
    return firsts, {part: until[part] - before[part] for part in until}


def summary(firsts: list[float], direct: list[float], cpu: dict[str, float], turns: int) -> dict[str, Any]:
    mesh = {q: percentile(firsts, q) for q in (50, 95)}
    alone = {q: percentile(direct, q) for q in (50, 95)}
    return {
        "first_delta_ms": mesh,
        "overhead_ms": {q: mesh[q] - alone[q] for q in (50, 95)},
        "cpu_ms_per_turn": {part: round(1000 * seconds / turns, 3) for part, seconds in cpu.items()},
        "turns": turns,
    }


async def compare(a: str, b: str, streams: int, rounds: int, delay_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch, contextlib.ExitStack() as trees:
        work = Path(scratch)
        sources = {
            side: trees.enter_context(checkout(rev, work / side))
            for side, rev in zip(SIDES, (a, b), strict=True)
        }
        async with contextlib.AsyncExitStack() as running:
            meshes = {
                side: await running.enter_async_context(
                    running_mesh(work / f"data-{side}", delay_ms, streams, source_dir=sources[side])
                )
                for side in SIDES
            }
            processes = {side: Processes(mesh.stack) for side, mesh in meshes.items()}
            client = AsyncOpenAI(base_url=meshes["A"].model_url, api_key="offline", max_retries=0)
            for mesh in meshes.values():  # every user's first turn, 20 at a time
                for first in range(0, streams, 20):
                    await asyncio.gather(
                        *(_one(mesh, user) for user in range(first, min(streams, first + 20)))
                    )

            async def settled() -> None:
                if streams > 1:
                    for found in processes.values():
                        await found.settled()

            firsts: dict[str, list[float]] = {side: [] for side in SIDES}
            cpu: dict[str, dict[str, float]] = {side: {} for side in SIDES}
            direct: list[float] = []
            stolen = StolenTime()
            for round_ in range(rounds):
                for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                    await settled()
                    found, spent = await first_deltas(meshes[side], streams, processes[side])
                    firsts[side] += found
                    for part, seconds in spent.items():
                        cpu[side][part] = cpu[side].get(part, 0.0) + seconds
                await settled()
                alone = await at_once(streams, lambda i: direct_stream(client, fact(i)))
                direct += [1000 * s.first_delta for s in alone if s.first_delta is not None]
            await client.close()
    turns = streams * rounds
    return {
        "command": (
            f"python -m bench.ab --a {a} --b {b} --streams {streams} --rounds {rounds} --delay-ms {delay_ms}"
        ),
        "commits": {"A": describe(a), "B": describe(b)},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cpu_stolen_percent": stolen.percent(),
        "direct_first_delta_ms": {q: percentile(direct, q) for q in (50, 95)},
        "sides": {side: summary(firsts[side], direct, cpu[side], turns) for side in SIDES},
    }


async def _one(mesh: Mesh, user: int) -> None:
    call = mesh.chat(user).Chat(
        chat_pb2.ChatRequest(agent_id=AGENT, text=QUESTION), metadata=mesh.metadata(user), timeout=600
    )
    async for _ in call:
        pass


def markdown(result: dict[str, Any]) -> str:
    sides = result["sides"]
    parts = [part for part in sides["A"]["cpu_ms_per_turn"] if part != LOAD_GENERATOR]
    lines = [
        "# bench-ab",
        "",
        f"Command: `{result['command']}` (`make bench-ab`). A = {result['commits']['A']}, "
        f"B = {result['commits']['B']}, {result['date']}.",
        f"Machine: {result['machine']}",
        "",
        "Both revisions run side by side; each round sends a burst to A and to B (which goes first "
        "alternates), then to the model alone. CPU time stolen by the hypervisor meanwhile: "
        f"{result['cpu_stolen_percent']:.1f} %. The model alone: first delta p50 "
        f"{result['direct_first_delta_ms'][50]:.2f} ms, p95 {result['direct_first_delta_ms'][95]:.2f} ms.",
        "",
        "| | first delta p50 / p95 ms | overhead p50 / p95 ms | "
        + " | ".join(f"{part} CPU ms" for part in parts)
        + " | all parts CPU ms |",
        "|---|---|---|" + "---|" * (len(parts) + 1),
    ]
    for side in SIDES:
        found = sides[side]
        cpu = found["cpu_ms_per_turn"]
        lines.append(
            f"| {side} ({result['commits'][side]}) | {found['first_delta_ms'][50]:.2f} / "
            f"{found['first_delta_ms'][95]:.2f} | {found['overhead_ms'][50]:.2f} / "
            f"{found['overhead_ms'][95]:.2f} | "
            + " | ".join(f"{cpu.get(part, 0.0):.2f}" for part in parts)
            + f" | {sum(cpu.get(part, 0.0) for part in parts):.2f} |"
        )
    lines += [
        "",
        f"CPU: per turn, until the last first delta of each burst ({sides['A']['turns']} turns a side; "
        "the load generator, shared, left out).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", default="HEAD", help="revision A (a git revision, or . for this working tree)")
    parser.add_argument("--b", default=".", help="revision B (default: this working tree)")
    parser.add_argument("--streams", type=int, default=50, help="streams of each burst")
    parser.add_argument("--rounds", type=int, default=10, help="bursts of each revision")
    parser.add_argument("--delay-ms", type=int, default=20, help="the model's pacing, ms a word")
    parser.add_argument(
        "--name", default="ab", type=results_name, help="results' file name in bench/results (default: ab)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    collect_as_a_server()
    result = uvloop.run(compare(args.a, args.b, args.streams, args.rounds, args.delay_ms))
    write_results(RESULTS, args.name, result, markdown(result))


def results_name(value: str) -> str:
    """A file name of bench/results: letters, digits, '-', '_' and '.', not starting with '.'."""
    if not value or value.startswith(".") or not all(c.isalnum() or c in "-_." for c in value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a plain file name (letters, digits, - _ .)")
    return value


if __name__ == "__main__":
    main()
