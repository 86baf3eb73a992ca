"""`make eval-memory` (`python -m bench.memory_eval`): long-term memory measured through the public API.

The whole mesh is started as `make run` starts it (devstack's Stack: every part on free loopback ports, a
temporary data directory; the offline model answering at once unless `--real-model`), and every instance
is lived through by a fresh user, signed in with `AuthService/DevLogin` through the edge:

1. **replay**: each haystack session is a new conversation with its agent (`ChatService/Chat`, native gRPC
   through the Envoy edge, as bench-chat and grpcurl call it); its user turns are sent one after another in
   that conversation, each answer read to its end. Only the user's turns are sent: the assistant's are the
   system's own to give.
2. **settle**: learning may continue in the background after a turn has answered. The harness polls
   `AccountService/ListMemories` until the list (ids and update times) has not changed for `--settle-quiet`
   seconds, within `--settle-deadline` (reported, with how many instances hit the deadline).
3. **ask**: each question in a new conversation with its agent (another agent than the one told, in the
   synthetic set), scored (`scoring`), and timed on the client: *recall* = the call to the
   `memories_recalled` event (the orchestrator sends it once recall is done, before the first text), *first
   delta* = to the first text, *completion* = to the end of the stream.

**Context tokens per question**: what the model was given to answer. `memory_tokens` are the words of the
memories recalled into its prompt (the `memories_recalled` event lists them; a word is the offline model's
token) and of the past messages a `recall_conversations` call brought it (its `tool_result`);
`prompt_tokens` is the model's own count of the whole prompt (system prompt, memories, question), from the
`usage` of `message_completed`. Both are reported per category (mean and p95).

Results go to bench/results/memory-eval.json (every question with its answer) and memory-eval.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from openai import AsyncOpenAI, OpenAIError

from bench.chat import percentile
from bench.memory_eval import dataset as data
from bench.memory_eval import generator, scoring
from bench.provenance import commit, machine
from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig
from offline_model.rules import count_tokens

RESULTS = Path(__file__).resolve().parents[1] / "results"
TURN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Settings:
    dataset: Path | None = None
    """A LongMemEval or LoCoMo JSON file; None: the synthetic set."""
    limit: int = 0
    """At most this many instances of the dataset (0: all)."""
    seed: int = 17
    instances: int = 10
    """Synthetic instances per category."""
    concurrency: int = 4
    """Instances lived through at once (each its own user)."""
    delay_ms: int = 0
    """The offline model's pace per word (0: answers at once; the latencies are then the mesh's own)."""
    real_model: bool = False
    """Answer with OPENAI_API_KEY's model (and OPENAI_BASE_URL) instead of the offline model."""
    judge: bool = False
    """Score with an LLM judge (LongMemEval's criteria) as well; needs OPENAI_API_KEY."""
    judge_model: str = "gpt-4o"
    explicit: bool = False
    """The control: evidence turns said as `remember <turn>` (what explicit memory gets; results are written
    to memory-eval-explicit.*)."""
    settle_quiet: float = 3.0
    """Learning (issue 17's extraction) runs after a turn has answered, queued behind other users' turns: a
    quiet period of a few seconds, not one poll, says it is done."""
    settle_deadline: float = 30.0
    data_dir: Path | None = None

    def command(self) -> str:
        parts = ["python -m bench.memory_eval"]
        if self.dataset is not None:
            parts.append(f"--dataset {self.dataset}")
        else:
            parts += [f"--seed {self.seed}", f"--instances {self.instances}"]
        if self.limit:
            parts.append(f"--limit {self.limit}")
        parts.append(f"--concurrency {self.concurrency}")
        if self.delay_ms:
            parts.append(f"--delay-ms {self.delay_ms}")
        if self.real_model:
            parts.append("--real-model")
        if self.judge:
            parts.append(f"--judge --judge-model {self.judge_model}")
        if self.explicit:
            parts.append("--explicit")
        return " ".join(parts)


def load(settings: Settings) -> data.Dataset:
    if settings.dataset is not None:
        loaded = data.read(settings.dataset).limited(settings.limit)
    else:
        loaded = generator.generate(settings.seed, settings.instances).limited(settings.limit)
    return loaded.told_explicitly() if settings.explicit else loaded


# -- measurements ---------------------------------------------------------------------------------------


@dataclass
class Asked:
    """One question as the client saw it."""

    id: str
    category: str
    question_type: str
    agent_id: str
    question: str
    gold: str
    answer: str = ""
    correct: bool = False
    stale: bool = False
    abstained: bool = False
    judge: bool | None = None
    recalled: int = 0
    memory_tokens: int = 0
    prompt_tokens: int = 0
    recall_ms: float | None = None
    first_delta_ms: float | None = None
    completion_ms: float | None = None
    error: str | None = None


@dataclass
class Lived:
    """One instance: its replay and its questions."""

    id: str
    turns: int = 0
    turn_errors: list[str] = field(default_factory=list)
    settle_seconds: float = 0.0
    settled: bool = True
    memories: int = 0
    asked: list[Asked] = field(default_factory=list)


class Client:
    """The public API through the edge, as one signed-in user."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.chat_stub = chat_pb2_grpc.ChatServiceStub(channel)
        self.account = account_pb2_grpc.AccountServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def chat(self, agent_id: str, text: str, conversation_id: str = "") -> grpc.aio.UnaryStreamCall[Any, Any]:
        request = chat_pb2.ChatRequest(agent_id=agent_id, text=text, conversation_id=conversation_id)
        return self.chat_stub.Chat(request, metadata=self.metadata, timeout=TURN_TIMEOUT)

    async def memories_signature(self) -> tuple[tuple[str, int], ...]:
        """Every memory's id and last change, all pages."""
        seen: list[tuple[str, int]] = []
        token = ""
        while True:
            page = await self.account.ListMemories(
                account_pb2.ListMemoriesRequest(page_size=100, page_token=token), metadata=self.metadata
            )
            seen += [(m.id, m.updated_at.ToNanoseconds()) for m in page.memories]
            token = page.next_page_token
            if not token:
                return tuple(sorted(seen))


async def replay(client: Client, session: data.Session, lived: Lived) -> None:
    """The session's user turns in one new conversation with its agent."""
    conversation = ""
    for text in session.user_turns:
        lived.turns += 1
        try:
            async for event in client.chat(session.agent_id, text[:32000], conversation):
                if event.HasField("conversation_started"):
                    conversation = event.conversation_started.conversation_id
        except grpc.aio.AioRpcError as exc:
            lived.turn_errors.append(f"{exc.code().name}: {exc.details()}")


async def settle(client: Client, settings: Settings, lived: Lived) -> None:
    """Until ListMemories has not changed for `settle_quiet` seconds (or `settle_deadline` passed)."""
    started = time.perf_counter()
    last = await client.memories_signature()
    quiet_since = time.perf_counter()
    while time.perf_counter() - quiet_since < settings.settle_quiet:
        if time.perf_counter() - started > settings.settle_deadline:
            lived.settled = False
            break
        await asyncio.sleep(min(0.25, settings.settle_quiet / 4))
        now = await client.memories_signature()
        if now != last:
            last, quiet_since = now, time.perf_counter()
    lived.settle_seconds = time.perf_counter() - started
    lived.memories = len(last)


async def ask(client: Client, question: data.Question) -> Asked:
    asked = Asked(
        question.id,
        question.category,
        question.question_type,
        question.agent_id,
        question.question,
        question.answer,
    )
    pieces: list[str] = []
    started = time.perf_counter()

    def since() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        async for event in client.chat(question.agent_id, question.question):
            if event.HasField("memories_recalled"):
                if asked.recall_ms is None:
                    asked.recall_ms = since()
                recalled = event.memories_recalled.memories
                asked.recalled += len(recalled)
                asked.memory_tokens += sum(count_tokens(m.text) for m in recalled)
            elif event.HasField("tool_result") and event.tool_result.name == "recall_conversations":
                # Past messages found for the question are context as much as recalled memories are.
                found = json.loads(event.tool_result.result_json or "{}").get("messages") or []
                asked.memory_tokens += sum(count_tokens(str(m.get("text", ""))) for m in found)
            elif event.HasField("text_delta"):
                if asked.first_delta_ms is None:
                    asked.first_delta_ms = since()
                pieces.append(event.text_delta.text)
            elif event.HasField("message_completed"):
                asked.prompt_tokens += event.message_completed.usage.prompt_tokens
        asked.completion_ms = since()
    except grpc.aio.AioRpcError as exc:
        asked.error = f"{exc.code().name}: {exc.details()}"
    asked.answer = "".join(pieces)
    verdict = scoring.score(question, asked.answer)
    asked.correct, asked.stale, asked.abstained = verdict.correct, verdict.stale, verdict.abstained
    return asked


async def live(
    channel: grpc.aio.Channel, run_id: str, index: int, instance: data.Instance, settings: Settings
) -> Lived:
    """A fresh user replays the instance's sessions, lets learning settle, and answers its questions."""
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    login = await auth.DevLogin(auth_pb2.DevLoginRequest(email=f"eval-{run_id}-{index}@example.com"))
    client = Client(channel, login.session.access_token)
    lived = Lived(instance.id)
    for session in instance.sessions:
        await replay(client, session, lived)
    await settle(client, settings, lived)
    for question in instance.questions:
        lived.asked.append(await ask(client, question))
    return lived


# -- the LLM judge --------------------------------------------------------------------------------------


async def judge_all(
    lived: Sequence[Lived], questions: dict[str, data.Question], model: str, client: AsyncOpenAI | None = None
) -> None:
    """Each answer judged yes/no by `model` at temperature 0, through `client` (by default one configured by
    OPENAI_API_KEY and OPENAI_BASE_URL, closed at the end)."""
    own = client is None
    client = client or AsyncOpenAI()
    semaphore = asyncio.Semaphore(8)

    async def one(asked: Asked) -> None:
        async with semaphore:
            try:
                reply = await client.chat.completions.create(
                    model=model,
                    messages=[
                        {"role": "user", "content": scoring.judge_prompt(questions[asked.id], asked.answer)}
                    ],
                    temperature=0,
                    max_tokens=10,
                )
            except OpenAIError as exc:  # left unjudged (judge accuracy is over the judged answers)
                print(f"{asked.id}: the judge failed: {exc}", flush=True)
                return
        asked.judge = scoring.judge_label(reply.choices[0].message.content or "")

    await asyncio.gather(*(one(a) for item in lived for a in item.asked))
    if own:
        await client.close()


# -- the mesh -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_mesh(settings: Settings, directory: Path) -> AsyncIterator[grpc.aio.Channel]:
    """The whole mesh (offline model unless `real_model`), and a channel to its edge."""
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    key = os.environ.get("OPENAI_API_KEY") if settings.real_model else None
    if settings.real_model and not key:
        raise SystemExit("--real-model needs OPENAI_API_KEY (and OPENAI_BASE_URL for another provider)")
    stack = Stack(
        StackConfig(
            data_dir=directory,
            ports=ports,
            offline_delay_ms=settings.delay_ms,
            openai_api_key=key,
            openai_base_url=(os.environ.get("OPENAI_BASE_URL") or None) if settings.real_model else None,
            # Each benchmark user sends a few dozen turns within a minute; limits are not what is measured.
            extra_env={"ORCHESTRATOR_TURNS_PER_MINUTE": "1000000"},
        )
    )
    await asyncio.to_thread(stack.start)
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.edge}")
        try:
            yield channel
        finally:
            await channel.close(grace=None)
    finally:
        await asyncio.to_thread(stack.stop)


async def run(settings: Settings) -> dict[str, Any]:
    dataset = load(settings)
    if settings.judge and not os.environ.get("OPENAI_API_KEY"):
        raise SystemExit("--judge needs OPENAI_API_KEY (and OPENAI_BASE_URL for another provider)")
    started_at = time.time()
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as cleanup:
        directory = settings.data_dir or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="athena-eval-"))
        )
        async with running_mesh(settings, directory) as channel:
            mesh_ready = time.perf_counter() - started
            semaphore = asyncio.Semaphore(max(1, settings.concurrency))

            async def bounded(index: int, instance: data.Instance) -> Lived:
                async with semaphore:
                    lived = await live(channel, run_id, index, instance, settings)
                    done = sum(a.correct for a in lived.asked)
                    print(f"{instance.id}: {done}/{len(lived.asked)} correct", flush=True)
                    return lived

            lived = list(
                await asyncio.gather(*(bounded(i, inst) for i, inst in enumerate(dataset.instances)))
            )
    if settings.judge:
        questions = {q.id: q for inst in dataset.instances for q in inst.questions}
        await judge_all(lived, questions, settings.judge_model)
    return report(settings, dataset, lived, started_at, time.perf_counter() - started, mesh_ready)


# -- report ---------------------------------------------------------------------------------------------


def _quantiles(values: Iterable[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"p50": round(percentile(present, 50), 1), "p95": round(percentile(present, 95), 1)}


def _tokens(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p95": 0.0}
    return {"mean": round(statistics.fmean(values), 1), "p95": float(percentile(values, 95))}


def summarize(asked: Sequence[Asked]) -> dict[str, Any]:
    """Accuracy, stale answers, latencies and context tokens of some questions."""
    count = len(asked)
    correct = sum(a.correct for a in asked)
    judged = [a.judge for a in asked if a.judge is not None]
    return {
        "questions": count,
        "correct": correct,
        "accuracy": round(correct / count, 3) if count else 0.0,
        "judge_accuracy": round(sum(judged) / len(judged), 3) if judged else None,
        "stale": sum(a.stale for a in asked),
        "abstained": sum(a.abstained for a in asked),
        "errors": sum(a.error is not None for a in asked),
        "recall_ms": _quantiles(a.recall_ms for a in asked),
        "first_delta_ms": _quantiles(a.first_delta_ms for a in asked),
        "completion_ms": _quantiles(a.completion_ms for a in asked),
        "memories_recalled": _tokens([a.recalled for a in asked]),
        "memory_tokens": _tokens([a.memory_tokens for a in asked]),
        "prompt_tokens": _tokens([a.prompt_tokens for a in asked]),
    }


def report(
    settings: Settings,
    dataset: data.Dataset,
    lived: Sequence[Lived],
    started_at: float,
    wall: float,
    mesh_ready: float,
) -> dict[str, Any]:
    asked = [a for item in lived for a in item.asked]
    order = [c for c in (*data.CATEGORIES, data.OPEN_DOMAIN) if any(a.category == c for a in asked)]
    settles = [item.settle_seconds for item in lived]
    return {
        "command": settings.command(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started_at)),
        "machine": machine(),
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "notes": list(dataset.notes),
            "instances": len(dataset.instances),
            "questions": len(asked),
        },
        "model": "real (OPENAI_API_KEY)"
        if settings.real_model
        else f"offline ({settings.delay_ms} ms a word)",
        "scoring": f"containment; LLM judge {settings.judge_model}" if settings.judge else "containment",
        "wall_seconds": round(wall, 1),
        "mesh_start_seconds": round(mesh_ready, 1),
        "replay": {
            "turns": sum(item.turns for item in lived),
            "turn_errors": sum(len(item.turn_errors) for item in lived),
            "first_turn_errors": sorted({e for item in lived for e in item.turn_errors})[:5],
            "settle_seconds": _quantiles(settles),
            "settle_deadline_hit": sum(not item.settled for item in lived),
            "memories_per_user": _tokens([item.memories for item in lived]),
        },
        "categories": {c: summarize([a for a in asked if a.category == c]) for c in order},
        "question_types": {
            t: summarize([a for a in asked if a.question_type == t])
            for t in sorted({a.question_type for a in asked})
        },
        "total": summarize(asked),
        "questions": [asdict(a) for a in asked],
    }


def _seconds(quantiles: dict[str, float] | None) -> str:
    return f"{quantiles['p50']:.1f} / {quantiles['p95']:.1f}" if quantiles else "-"


def _ms(quantiles: dict[str, float] | None) -> str:
    return f"{quantiles['p50']:.0f} / {quantiles['p95']:.0f}" if quantiles else "-"


def markdown(result: dict[str, Any]) -> str:
    dataset, replayed = result["dataset"], result["replay"]
    judged = result["total"]["judge_accuracy"] is not None
    lines = [
        "# eval-memory",
        "",
        f"Command: `{result['command']}` (`make eval-memory`). Commit {result['commit']}, {result['date']}.",
        f"Machine: {result['machine']}",
        "",
        f"Dataset: {dataset['name']} ({dataset['source']}): {dataset['instances']} instances, "
        f"{dataset['questions']} questions"
        + "".join(f"; {note}" for note in dataset.get("notes", ()))
        + f". Model: {result['model']}. Scoring: {result['scoring']}.",
        f"Wall time {result['wall_seconds']:.0f} s (mesh start {result['mesh_start_seconds']:.0f} s); "
        f"{replayed['turns']} turns replayed ({replayed['turn_errors']} failed); learning settled in "
        f"{_seconds(replayed['settle_seconds'])} s "
        f"(p50 / p95; deadline hit {replayed['settle_deadline_hit']} times); "
        f"memories per user: mean {replayed['memories_per_user']['mean']}.",
        "",
        "| category | questions | accuracy | "
        + ("judge | " if judged else "")
        + "stale | recall ms p50 / p95 | first delta ms p50 / p95 | completion ms p50 / p95 "
        "| memories recalled (mean) | memory tokens mean / p95 | prompt tokens mean / p95 |",
        "|---|---|---|" + ("---|" if judged else "") + "---|---|---|---|---|---|---|",
    ]
    rows = [*result["categories"].items(), ("**total**", result["total"])]
    for name, s in rows:
        judge = (
            f"{s['judge_accuracy']:.0%} | "
            if judged and s["judge_accuracy"] is not None
            else ("- | " if judged else "")
        )
        lines.append(
            f"| {name} | {s['questions']} | {s['accuracy']:.0%} ({s['correct']}) | {judge}{s['stale']} | "
            f"{_ms(s['recall_ms'])} | {_ms(s['first_delta_ms'])} | {_ms(s['completion_ms'])} | "
            f"{s['memories_recalled']['mean']} | "
            f"{s['memory_tokens']['mean']} / {s['memory_tokens']['p95']:.0f} | "
            f"{s['prompt_tokens']['mean']} / {s['prompt_tokens']['p95']:.0f} |"
        )
    lines += [
        "",
        "Accuracy: the gold answer (every part of it) in the answer, normalized; abstention: the answer says "
        "it does not know. *Stale*: answers that also name the value of another time (the superseded one, "
        "or the current one when asked what it was before; counted "
        "right, as LongMemEval's judge does). Latencies are client-side: to the `memories_recalled` event "
        "(recall), to the first text, to the end of the stream. Memory tokens: words of the memories "
        "recalled into the prompt and of the past messages conversation recall found; prompt tokens: the "
        "model's usage count of the whole prompt.",
        "",
        "How the questions were put: each session was replayed as a new conversation (the user's turns only: "
        "an assistant's turns cannot be sent through the API, so LongMemEval's `single-session-assistant` "
        "questions cannot be answered from them), learning was left to settle (`ListMemories` quiet), and "
        "each question was asked in a new conversation. The sessions' dates cannot be replayed either (a "
        "chat turn has no time of its own): the synthetic set's temporal questions are about the order the "
        "system saw or about dates said in the text; a dataset's questions about its own dates are at a "
        "disadvantage. With the offline model an answer reads back the memories recalled (or, when none "
        "answers a question about the person, what they stated in past conversations, found by "
        "`recall_conversations`), so containment measures what recall brought to the model; a real model "
        "and `--judge` measure the answer.",
        "",
        "By the dataset's question type:",
        "",
        "| question type | questions | accuracy |",
        "|---|---|---|",
        *(
            f"| {name} | {s['questions']} | {s['accuracy']:.0%} ({s['correct']}) |"
            for name, s in result["question_types"].items()
        ),
        "",
        "## Answers (first 3 per category)",
        "",
        "| question | category | agent | gold | answer | right |",
        "|---|---|---|---|---|---|",
    ]
    shown: dict[str, int] = {}
    for q in result["questions"]:
        shown[q["category"]] = shown.get(q["category"], 0) + 1
        if shown[q["category"]] > 3:
            continue
        answer = (q["answer"] or q["error"] or "").replace("|", "/").replace("\n", " ")
        answer = answer if len(answer) <= 140 else answer[:137] + "..."
        lines.append(
            f"| {q['question']} | {q['category']} | {q['agent_id']} | {q['gold']} | {answer} | "
            f"{'yes' if q['correct'] else 'no'}{' (stale)' if q['stale'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], directory: Path = RESULTS) -> str:
    """memory-eval.{json,md} in `directory` (memory-eval-explicit.* for the control)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = "memory-eval-explicit" if result["command"].endswith("--explicit") else "memory-eval"
    (directory / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (directory / f"{name}.md").write_text(text)
    return text


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory_eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset", type=Path, help="LongMemEval *.json or LoCoMo locomo10.json (auto-detected)"
    )
    parser.add_argument("--limit", type=int, default=0, help="at most N instances of the dataset (0: all)")
    parser.add_argument("--seed", type=int, default=17, help="seed of the synthetic set")
    parser.add_argument("--instances", type=int, default=10, help="synthetic instances per category")
    parser.add_argument("--concurrency", type=int, default=4, help="instances (users) at once")
    parser.add_argument("--delay-ms", type=int, default=0, help="offline model's pace per word")
    parser.add_argument("--real-model", action="store_true", help="answer with OPENAI_API_KEY's model")
    parser.add_argument("--judge", action="store_true", help="also score with an LLM judge (OPENAI_API_KEY)")
    parser.add_argument("--judge-model", default="gpt-4o", help="the judge's model (LongMemEval: gpt-4o)")
    parser.add_argument(
        "--settle-quiet", type=float, default=3.0, help="seconds ListMemories must not change"
    )
    parser.add_argument("--settle-deadline", type=float, default=30.0, help="longest wait for learning")
    parser.add_argument(
        "--explicit", action="store_true", help="control: evidence turns said as `remember <turn>`"
    )
    parser.add_argument("--data-dir", type=Path, help="keep the mesh's data and logs here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where memory-eval.md and .json go")
    parser.add_argument(
        "--write-dataset", type=Path, help="write the synthetic set as LongMemEval JSON to this file and exit"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    settings = Settings(
        dataset=args.dataset,
        limit=args.limit,
        seed=args.seed,
        instances=args.instances,
        concurrency=args.concurrency,
        delay_ms=args.delay_ms,
        real_model=args.real_model,
        judge=args.judge,
        judge_model=args.judge_model,
        explicit=args.explicit,
        settle_quiet=args.settle_quiet,
        settle_deadline=args.settle_deadline,
        data_dir=args.data_dir,
    )
    if args.write_dataset is not None:
        synthetic = generator.generate(settings.seed, settings.instances).limited(settings.limit)
        data.write_longmemeval(synthetic.instances, args.write_dataset)
        return
    print(write(asyncio.run(run(settings)), args.out))
