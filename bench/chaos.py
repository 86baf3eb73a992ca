"""`make chaos`: one fault at a time under a steady chat load, and what each cost the clients.

Starts the whole mesh with devstack (`Stack`, supervised: a killed part is restarted with backoff) on free
loopback ports in a temporary data directory, the offline model pacing its words (30 ms) so answers stream
for about two seconds. Users sign in through the edge (AuthService/DevLogin, native gRPC) and each is given
four memories, which the offline model reads back in full: that is the long answer.

The load: `--clients` users, each sending chat turns back to back through the edge into one conversation,
each turn with its own client_request_id; a failed turn is retried with the SAME client_request_id after a
short pause (the `retry-after` of RESOURCE_EXHAUSTED is honoured), the way a careful client does, until it
completes or two minutes have passed. A probe signs in and sends a short turn a few times a second, so an
outage of any part (auth included) is seen to within a fraction of a second. The clients' channels
reconnect within a second (gRPC's default reconnect backoff would grow to minutes and measure the client,
not the mesh).

The faults, one at a time, each injected while answers are streaming:

    router, orchestrator, memory, auth, envoy, offline-model   SIGKILL; nobody restarts it but the supervisor
    postgres, valkey                                          stopped, and started again `--outage`
                                                              seconds later (an operator's action)

Per fault: what the clients saw (status codes and messages of failed calls, and whether the turn had
started), seconds from the fault until turns succeed again — every call started after that point succeeded
— with no manual action, when the part was back, and persisted messages lost, checked through the public
API (ChatService/GetConversation) once the load has stopped:

    lost = user messages whose ConversationStarted a client saw but which are not stored
         + answers whose MessageCompleted a client saw but which are not stored, or stored different

Results: bench/results/chaos.md (a table per fault with the command that reproduces it) and chaos.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import cast

import grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc

from bench.provenance import commit, machine
from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

log = logging.getLogger("bench.chaos")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

FACTS = (
    "my morning routine starts with a long walk along the river before breakfast and coffee",
    "my favourite dinner is a slow cooked lentil stew with carrots onions and fresh bread",
    "my weekly plan includes three runs two swims and one long bike ride on sunday",
    "my reading list holds four novels two history books and a guide to mountain birds",
)
"""Remembered by every load user; the question below recalls all four, so the answer is long."""
QUESTION = "tell me what you know about my routine, dinner, weekly plan and reading list"
PROBE_QUESTION = "hello"
"""The probe user has no memories: "I don't know that yet." (five words)."""

PERMANENT = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNIMPLEMENTED"}
)
"""Codes a careful client does not retry: the same request would fail the same way."""
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True)
class Fault:
    name: str
    part: str
    """The devstack part it hits (`Stack.part_names`)."""
    action: str
    """`kill`: SIGKILL, left to the supervisor; `stop`: stopped on purpose, started again after an outage."""

    def describe(self, outage: float) -> str:
        if self.action == "kill":
            return f"SIGKILL {self.part} mid-stream; the supervisor restarts it"
        return f"stop {self.part} mid-stream, start it again {outage:g} s later"


FAULTS = (
    Fault("router", "router", "kill"),
    Fault("orchestrator", "orchestrator", "kill"),
    Fault("memory", "memory", "kill"),
    Fault("auth", "auth", "kill"),
    Fault("envoy", "envoy", "kill"),
    Fault("offline-model", "offline-model", "kill"),
    Fault("postgres", "postgres", "stop"),
    Fault("valkey", "valkey", "stop"),
)
"""What `make chaos` runs, in this order."""
EXTRA_FAULTS = (
    Fault("postgres-crash", "postgres", "kill"),
    Fault("valkey-crash", "valkey", "kill"),
)
"""On request only (`--faults postgres-crash`): the datastores killed, restarted by the supervisor."""


# -- what the clients did -----------------------------------------------------------------------------


@dataclass
class Attempt:
    """One call a client made (a chat turn's attempt, or a sign-in)."""

    client: str
    call: str
    """`Chat` or `DevLogin`."""
    turn: str
    """The chat turn's client_request_id ("" for a sign-in)."""
    started: float
    """`time.monotonic()` when the call was made."""
    ended: float = 0.0
    code: str = ""
    """`OK` or the gRPC status name; `INCOMPLETE` for a stream that ended cleanly without MessageCompleted."""
    message: str = ""
    conversation_id: str = ""
    user_message_id: str = ""
    assistant_message_id: str = ""
    seen_started: float | None = None
    """When ConversationStarted arrived: from then on the client knows its message is stored."""
    deltas: int = 0
    answer_id: str = ""
    answer: str = ""
    seen_completed: float | None = None
    """When MessageCompleted arrived: from then on the client knows the answer is stored."""
    retry_after: float | None = None
    retrying: bool = True
    """Whether the client retries this turn until it completes (the load does; the probe does not)."""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def stage(self) -> str:
        """Where a failed chat stopped, as the client saw it."""
        if self.call != "Chat":
            return "-"
        return "before the turn started" if self.seen_started is None else "mid-stream"


@dataclass
class Phase:
    """The time from one fault to the next (or to the end of the load); `fault` None is the baseline."""

    fault: Fault | None
    began: float
    ended: float = 0.0
    injected: float | None = None
    """When the fault was injected (`began` unless it waited for a stream in flight)."""
    restarted: float | None = None
    """For a `stop` fault: when the part was started again."""
    part_ready: float | None = None
    """When the part hit was ready again (the supervisor's readiness check, or start_part's)."""
    streams_in_flight: int = 0
    pid: int | None = None


@dataclass(frozen=True)
class StoredMessage:
    id: str
    role: str
    content: str
    status: str


# -- analysis (pure) ----------------------------------------------------------------------------------


def recovered_at(attempts: Sequence[Attempt], since: float) -> float | None:
    """The start of the first chat attempt from which every call succeeded: turns work again from there.
    Only calls ending after `since` count; None when the last call (of any kind) failed."""
    relevant = sorted((a for a in attempts if a.ended >= since), key=lambda a: a.started)
    failed_starts = [a.started for a in relevant if not a.ok]
    if not failed_starts:
        return since
    last_failure = max(failed_starts)
    later = [a.started for a in relevant if a.call == "Chat" and a.ok and a.started > last_failure]
    return min(later) if later else None


def lost_messages(attempts: Iterable[Attempt], stored: dict[str, StoredMessage]) -> dict[str, set[str]]:
    """Among what clients saw acknowledged: user messages not stored, answers not stored, answers stored
    different (another text, or marked failed), by message id."""
    lost: dict[str, set[str]] = {"user": set(), "answer": set(), "answer_different": set()}
    for attempt in attempts:
        if attempt.seen_started is not None and attempt.user_message_id not in stored:
            lost["user"].add(attempt.user_message_id)
        if attempt.seen_completed is not None:
            message = stored.get(attempt.answer_id)
            if message is None:
                lost["answer"].add(attempt.answer_id)
            elif (message.role, message.content, message.status) != ("assistant", attempt.answer, "complete"):
                lost["answer_different"].add(attempt.answer_id)
    return lost


@dataclass
class FaultResult:
    """One phase, as the report shows it."""

    fault: str
    action: str
    description: str
    streams_in_flight: int
    """Load turns streaming when the fault was injected."""
    calls: int
    failed_calls: int
    client_saw: list[dict[str, object]]
    """One row per (call, stage, code, message): how many failed calls saw it."""
    first_failure_s: float | None
    last_failure_s: float | None
    recovery_s: float | None
    """From the fault until turns work again; 0 when no call failed; None: not within the observation."""
    part_back_s: float | None
    """From the fault until the part hit was ready again."""
    restarted_s: float | None
    """For a datastore stopped on purpose: when it was started again, from the fault."""
    turns_completed: int
    streams_interrupted: int
    """Chat attempts that had started their turn (ConversationStarted) and then failed."""
    turns_retried: int
    turns_given_up: int
    user_messages_lost: int
    answers_lost: int
    answers_stored_different: int
    persisted_messages_lost: int
    user_messages_acknowledged: int
    """User messages whose ConversationStarted a client saw in this phase (each checked)."""
    answers_acknowledged: int
    """Answers whose MessageCompleted a client saw in this phase (each checked)."""
    duplicate_user_messages: int
    """Extra copies of a user message stored for one client_request_id (idempotency broken)."""
    duplicate_answers: int
    """Extra complete answers stored for one turn (a retry answered again what was already answered)."""
    failed_answers_stored: int
    """Interrupted attempts whose partial answer was stored, marked failed (the mesh's contract)."""
    interrupted_answers_stored_complete: int
    """Interrupted attempts whose answer was stored complete although the client was never told."""
    interrupted_answers_unrecorded: int
    """Interrupted attempts of which no answer record exists at all (not a loss: never acknowledged)."""
    supervisor: list[str]
    """What the supervisor did, relative to the fault."""
    reproduce: str


def analyse(
    phase: Phase,
    attempts: Sequence[Attempt],
    stored: dict[str, StoredMessage],
    user_copies: Counter[str],
    supervisor: Sequence[tuple[float, str]],
    reproduce: str,
    outage: float,
) -> FaultResult:
    """What happened during `phase`: calls belong to the phase they ended in, turns to the phase their first
    attempt ended in, lost messages to the phase in which a client saw them acknowledged. `user_copies`
    counts the stored user messages of each turn (by its text)."""
    origin = phase.injected if phase.injected is not None else phase.began

    def during(moment: float | None) -> bool:
        return moment is not None and phase.began <= moment < phase.ended

    calls = [a for a in attempts if during(a.ended)]
    failed = [a for a in calls if not a.ok]
    saw = Counter((a.call, a.stage, a.code, a.message) for a in failed)
    recovery: float | None = 0.0
    if failed:
        back = recovered_at(calls, origin)
        recovery = None if back is None else max(0.0, back - origin)
    lost = lost_messages((a for a in attempts if during(a.seen_started)), stored)
    lost_answers = lost_messages((a for a in attempts if during(a.seen_completed)), stored)
    turns: dict[str, list[Attempt]] = {}
    for attempt in sorted((a for a in attempts if a.call == "Chat" and a.retrying), key=lambda a: a.started):
        turns.setdefault(attempt.turn, []).append(attempt)
    phase_turns = {turn: tries for turn, tries in turns.items() if during(tries[0].ended)}
    interrupted = [a for a in failed if a.call == "Chat" and a.seen_started is not None]

    def status(answer_id: str) -> str | None:
        message = stored.get(answer_id)
        return None if message is None else message.status

    answers_of_turns = [
        {a.assistant_message_id for a in tries if a.assistant_message_id} for tries in phase_turns.values()
    ]
    return FaultResult(
        fault=phase.fault.name if phase.fault else "none (baseline)",
        action=phase.fault.action if phase.fault else "-",
        description=phase.fault.describe(outage) if phase.fault else "no fault: the load alone",
        streams_in_flight=phase.streams_in_flight,
        calls=len(calls),
        failed_calls=len(failed),
        client_saw=[
            {"call": call, "stage": stage, "code": code, "message": message, "count": count}
            for (call, stage, code, message), count in sorted(saw.items(), key=lambda item: -item[1])
        ],
        first_failure_s=round(min(a.ended for a in failed) - origin, 2) if failed else None,
        last_failure_s=round(max(a.ended for a in failed) - origin, 2) if failed else None,
        recovery_s=None if recovery is None else round(recovery, 2),
        part_back_s=None if phase.part_ready is None else round(phase.part_ready - origin, 2),
        restarted_s=None if phase.restarted is None else round(phase.restarted - origin, 2),
        turns_completed=sum(1 for a in calls if a.call == "Chat" and a.ok),
        streams_interrupted=len(interrupted),
        turns_retried=sum(1 for tries in phase_turns.values() if len(tries) > 1),
        turns_given_up=sum(1 for tries in phase_turns.values() if not tries[-1].ok),
        user_messages_lost=len(lost["user"]),
        answers_lost=len(lost_answers["answer"]),
        answers_stored_different=len(lost_answers["answer_different"]),
        persisted_messages_lost=len(lost["user"])
        + len(lost_answers["answer"])
        + len(lost_answers["answer_different"]),
        user_messages_acknowledged=len({a.user_message_id for a in attempts if during(a.seen_started)}),
        answers_acknowledged=len({a.answer_id for a in attempts if during(a.seen_completed)}),
        duplicate_user_messages=sum(max(0, user_copies[turn] - 1) for turn in phase_turns),
        duplicate_answers=sum(
            max(0, sum(1 for answer in answers if status(answer) == "complete") - 1)
            for answers in answers_of_turns
        ),
        failed_answers_stored=sum(1 for a in interrupted if status(a.assistant_message_id) == "failed"),
        interrupted_answers_stored_complete=sum(
            1 for a in interrupted if status(a.assistant_message_id) == "complete"
        ),
        interrupted_answers_unrecorded=sum(1 for a in interrupted if status(a.assistant_message_id) is None),
        supervisor=[f"+{moment - origin:.1f} s {what}" for moment, what in supervisor if during(moment)],
        reproduce=reproduce,
    )


# -- the clients --------------------------------------------------------------------------------------


def turn_text(question: str, turn: str) -> str:
    """A turn's message: the question and its client_request_id, so every stored copy can be counted."""
    return f"{question} ({turn})"


def turn_of(text: str) -> str | None:
    """The client_request_id a message of `turn_text` carries."""
    if not text.endswith(")") or " (" not in text:
        return None
    return text.rsplit(" (", 1)[1][:-1]


class Client:
    """One signed-in user talking to the edge over its own channel, like one app."""

    def __init__(
        self, name: str, edge: str, record: Callable[[Attempt], None], *, retrying: bool = True
    ) -> None:
        self.name = name
        self.retrying = retrying
        self.email = f"{name}@chaos.example.com"
        self._record = record
        self._channel = grpc.aio.insecure_channel(edge, options=CHANNEL_OPTIONS)
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self.chat_stub = chat_pb2_grpc.ChatServiceStub(self._channel)
        self._session: auth_pb2.Session | None = None
        self.conversation_id = ""
        self.conversations: set[str] = set()
        self.streaming: Attempt | None = None
        """The chat attempt under way, while it streams."""

    async def close(self) -> None:
        await self._channel.close(grace=None)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        assert self._session is not None
        return (("authorization", f"Bearer {self._session.access_token}"),)

    async def sign_in(self, deadline_seconds: float = 5.0) -> Attempt:
        attempt = Attempt(self.name, "DevLogin", "", time.monotonic())
        try:
            response = await self._auth.DevLogin(
                auth_pb2.DevLoginRequest(email=self.email), timeout=deadline_seconds
            )
            self._session = response.session
            attempt.code = "OK"
        except grpc.aio.AioRpcError as error:
            attempt.code, attempt.message = error.code().name, error.details() or ""
        attempt.ended = time.monotonic()
        self._record(attempt)
        return attempt

    async def signed_in(self) -> None:
        """Signs in again shortly before the access token expires (or after it was refused)."""
        if self._session is None or self._session.access_token_expires_at.seconds - time.time() < 60:
            await self.sign_in()

    async def chat(self, text: str, turn: str, deadline_seconds: float) -> Attempt:
        """One attempt of a turn; the turn's conversation is continued once known."""
        await self.signed_in()
        attempt = Attempt(self.name, "Chat", turn, time.monotonic(), retrying=self.retrying)
        request = chat_pb2.ChatRequest(
            agent_id="athena", text=text, conversation_id=self.conversation_id, client_request_id=turn
        )
        call = self.chat_stub.Chat(request, metadata=self.metadata, timeout=deadline_seconds)
        self.streaming = attempt
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "conversation_started":
                    started = event.conversation_started
                    attempt.seen_started = time.monotonic()
                    attempt.conversation_id = started.conversation_id
                    attempt.user_message_id = started.user_message_id
                    attempt.assistant_message_id = started.assistant_message_id
                    self.conversation_id = started.conversation_id
                    self.conversations.add(started.conversation_id)
                elif kind == "text_delta":
                    attempt.deltas += 1
                elif kind == "message_completed":
                    attempt.seen_completed = time.monotonic()
                    attempt.answer_id = event.message_completed.message_id
                    attempt.answer = event.message_completed.content
            attempt.code = "OK" if attempt.seen_completed is not None else "INCOMPLETE"
        except grpc.aio.AioRpcError as error:
            attempt.code, attempt.message = error.code().name, error.details() or ""
            trailers = cast(Iterable[tuple[str, str]], error.trailing_metadata() or ())
            for key, value in trailers:
                if key == "retry-after":
                    with contextlib.suppress(ValueError):
                        attempt.retry_after = float(value)
            if attempt.code == "UNAUTHENTICATED":
                self._session = None
        finally:
            self.streaming = None
            attempt.ended = time.monotonic()
            self._record(attempt)
        return attempt

    async def stored_messages(self) -> dict[str, StoredMessage]:
        """Every message of this user's conversations, through the public API."""
        await self.signed_in()
        stored = {}
        for conversation_id in sorted(self.conversations):
            response = await self.chat_stub.GetConversation(
                chat_pb2.GetConversationRequest(conversation_id=conversation_id),
                metadata=self.metadata,
                timeout=10,
            )
            for message in response.conversation.messages:
                stored[message.id] = StoredMessage(
                    message.id,
                    "user" if message.role == chat_pb2.ROLE_USER else "assistant",
                    message.content,
                    "failed" if message.status == chat_pb2.MESSAGE_STATUS_FAILED else "complete",
                )
        return stored


@dataclass
class LoadSettings:
    clients: int = 4
    """Users sending turns back to back."""
    think_seconds: float = 0.0
    """Pause between a user's turns."""
    retry_pause: float = 0.5
    """Pause before retrying a failed turn (longer when told `retry-after`, up to 5 s)."""
    give_up_after: float = 120.0
    """A turn still failing after this long is given up (the person is told)."""
    turn_timeout: float = 30.0
    probe_interval: float | None = 0.25
    """Seconds between the probe's sign-ins and short turns; None: no probe."""


class Load:
    """The clients' loops, and every attempt they made."""

    def __init__(self, edge: str, settings: LoadSettings) -> None:
        self.settings = settings
        self.attempts: list[Attempt] = []
        self.users = [
            Client(f"chaos-{index}", edge, self.attempts.append) for index in range(settings.clients)
        ]
        self.probe = (
            Client("chaos-probe", edge, self.attempts.append, retrying=False)
            if settings.probe_interval
            else None
        )
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def clients(self) -> list[Client]:
        return [*self.users, *([self.probe] if self.probe else [])]

    async def prepare(self) -> None:
        """Sign everyone in and give the users their memories (before any fault)."""
        for client in self.clients:
            if not (await client.sign_in()).ok:
                raise RuntimeError(f"{client.name} could not sign in")

        async def remember(client: Client) -> None:
            for index, fact in enumerate(FACTS):
                attempt = await client.chat(f"remember {fact}", f"{client.name}-fact-{index}", 30)
                if not attempt.ok:
                    raise RuntimeError(
                        f"{client.name} could not store a memory: {attempt.code} {attempt.message}"
                    )
            # Each user's turns go into one conversation of its own, started by the first turn.
            client.conversation_id = ""

        await asyncio.gather(*(remember(client) for client in self.users))
        self.attempts.clear()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._converse(client)) for client in self.users]
        if self.probe is not None:
            self._tasks += [
                asyncio.create_task(self._probe_chat()),
                asyncio.create_task(self._probe_sign_in()),
            ]

    async def stop(self) -> None:
        """No new turn starts; turns under way go on (retried) until they complete or are given up."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    def streams_in_flight(self, min_deltas: int = 0) -> int:
        return sum(
            1
            for client in self.users
            if client.streaming is not None
            and client.streaming.seen_started is not None
            and client.streaming.deltas >= min_deltas
        )

    def all_well(self, since: float) -> bool:
        """Every client's calls since `since` succeeded, and each has made one (nobody is retrying)."""
        for client in self.clients:
            mine = [a for a in self.attempts if a.client == client.name and a.started >= since]
            if not mine or not all(a.ok for a in mine):
                return False
        return True

    async def _converse(self, client: Client) -> None:
        number = 0
        while not self._stopping.is_set():
            number += 1
            turn = f"{client.name}-{number}"
            text = turn_text(QUESTION, turn)
            first = time.monotonic()
            while True:
                attempt = await client.chat(text, turn, self.settings.turn_timeout)
                if attempt.ok or attempt.code in PERMANENT:
                    break
                if time.monotonic() - first > self.settings.give_up_after:
                    log.warning("%s gave up turn %s: %s %s", client.name, turn, attempt.code, attempt.message)
                    break
                await asyncio.sleep(max(self.settings.retry_pause, min(attempt.retry_after or 0.0, 5.0)))
            if self.settings.think_seconds:
                await asyncio.sleep(self.settings.think_seconds)

    async def _probe_chat(self) -> None:
        assert self.probe is not None
        assert self.settings.probe_interval is not None
        number = 0
        while not self._stopping.is_set():
            number += 1
            await self.probe.chat(turn_text(PROBE_QUESTION, f"probe-{number}"), f"probe-{number}", 5)
            await asyncio.sleep(self.settings.probe_interval)

    async def _probe_sign_in(self) -> None:
        assert self.probe is not None
        assert self.settings.probe_interval is not None
        while not self._stopping.is_set():
            await self.probe.sign_in(deadline_seconds=3)
            await asyncio.sleep(self.settings.probe_interval)

    async def stored(self) -> tuple[dict[str, StoredMessage], Counter[str]]:
        """Every stored message of every client, and how many stored user messages each turn has. Retried
        for a while: the mesh may still be recovering from the last fault."""
        deadline = time.monotonic() + 60
        while True:
            try:
                stored: dict[str, StoredMessage] = {}
                for client in self.clients:
                    stored.update(await client.stored_messages())
                break
            except grpc.aio.AioRpcError as error:
                if time.monotonic() > deadline:
                    raise
                log.info("reading the conversations failed (%s); again in 1 s", error.code().name)
                await asyncio.sleep(1)
        copies = Counter(
            turn for m in stored.values() if m.role == "user" and (turn := turn_of(m.content)) is not None
        )
        return stored, copies


# -- faults, one at a time ----------------------------------------------------------------------------


class Target:
    """The mesh the faults hit: `python -m bench.chaos` uses a devstack `Stack`; a test may subclass."""

    def kill(self, part: str) -> int:
        """SIGKILL the part's process; its pid."""
        raise NotImplementedError

    async def stop_part(self, part: str) -> None:
        raise NotImplementedError

    async def start_part(self, part: str) -> None:
        raise NotImplementedError

    def ready_at(self, part: str, since: float) -> float | None:
        """When `part` was ready again after `since` (None: not yet, or not known)."""
        return None

    def knows_readiness(self) -> bool:
        return False

    def events(self) -> list[tuple[float, str]]:
        """What the supervisor did: (monotonic time, description)."""
        return []


class StackTarget(Target):
    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def kill(self, part: str) -> int:
        pid = self.stack.process(part).pid
        os.kill(pid, signal.SIGKILL)
        return pid

    async def stop_part(self, part: str) -> None:
        await asyncio.to_thread(self.stack.stop_part, part)

    async def start_part(self, part: str) -> None:
        await asyncio.to_thread(self.stack.start_part, part)

    def ready_at(self, part: str, since: float) -> float | None:
        events = self.stack.supervisor.events
        return next((e.at for e in events if e.part == part and e.kind == "ready" and e.at >= since), None)

    def knows_readiness(self) -> bool:
        return True

    def events(self) -> list[tuple[float, str]]:
        return [(e.at, f"{e.part} {e.message}") for e in self.stack.supervisor.events]


@dataclass
class Timing:
    baseline: float = 5.0
    """Seconds of load before the first fault."""
    settle: float = 2.0
    """Seconds of healthy load before each fault."""
    outage: float = 5.0
    """How long a stopped datastore stays down."""
    stable: float = 3.0
    """A fault is over once every client's calls of this many seconds succeeded (and its part is back)."""
    observe: float = 90.0
    """At most this long after a fault before the next one (a mesh that did not recover)."""


async def _until(condition: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def run_phases(load: Load, faults: Sequence[Fault], target: Target, timing: Timing) -> list[Phase]:
    """The baseline, then each fault in turn, injected while answers stream; the load runs throughout and
    is stopped (its turns under way finished) at the end."""
    phases = [Phase(None, time.monotonic())]
    load.start()
    await asyncio.sleep(timing.baseline)
    for fault in faults:
        if not await _until(lambda: load.all_well(time.monotonic() - timing.stable), timing.observe):
            log.warning("the mesh is still not well before %s; injecting it anyway", fault.name)
        phase = Phase(fault, time.monotonic())
        phases[-1].ended = phase.began
        phases.append(phase)
        await asyncio.sleep(timing.settle)
        await _until(lambda: load.streams_in_flight(min_deltas=3) > 0, 10)
        phase.streams_in_flight = load.streams_in_flight()
        phase.injected = time.monotonic()
        if fault.action == "kill":
            phase.pid = target.kill(fault.part)
            log.info(
                "%s: SIGKILL pid %d, %d answers streaming", fault.name, phase.pid, phase.streams_in_flight
            )
        else:
            log.info("%s: stopping it, %d answers streaming", fault.name, phase.streams_in_flight)
            await target.stop_part(fault.part)
            await asyncio.sleep(max(0.0, timing.outage - (time.monotonic() - phase.injected)))
            phase.restarted = time.monotonic()
            log.info("%s: starting it again", fault.name)
            await target.start_part(fault.part)

        def over(fault: Fault = fault, phase: Phase = phase) -> bool:
            if target.knows_readiness():
                phase.part_ready = target.ready_at(fault.part, phase.injected or phase.began)
                if phase.part_ready is None:
                    return False
            return load.all_well(time.monotonic() - timing.stable)

        if await _until(over, timing.observe - (time.monotonic() - phase.injected), interval=0.2):
            log.info("%s: well again %.1f s after the fault", fault.name, time.monotonic() - phase.injected)
        else:
            log.warning("%s: not well %.0f s after the fault", fault.name, timing.observe)
    await load.stop()
    phases[-1].ended = time.monotonic() + 1
    return phases


async def measure(
    load: Load,
    faults: Sequence[Fault],
    target: Target,
    timing: Timing,
    reproduce: Callable[[Fault | None], str],
) -> list[FaultResult]:
    """Runs the faults and checks, through the public API, what the clients were told was stored."""
    try:
        await load.prepare()
        phases = await run_phases(load, faults, target, timing)
        stored, copies = await load.stored()
    finally:
        await load.close()
    events = target.events()
    return [
        analyse(phase, load.attempts, stored, copies, events, reproduce(phase.fault), timing.outage)
        for phase in phases
    ]


# -- the report ---------------------------------------------------------------------------------------


def _seconds(value: float | None, missing: str = "not recovered") -> str:
    return missing if value is None else f"{value:.1f}"


def _saw(result: FaultResult) -> str:
    """`Chat UNAVAILABLE ×34 (5 mid-stream); DevLogin UNAVAILABLE ×3`."""
    if not result.client_saw:
        return "nothing (every call succeeded)"
    total: Counter[tuple[str, str]] = Counter()
    mid_stream: Counter[tuple[str, str]] = Counter()
    for row in result.client_saw:
        key = (str(row["call"]), str(row["code"]))
        total[key] += int(str(row["count"]))
        if row["stage"] == "mid-stream":
            mid_stream[key] += int(str(row["count"]))
    return "; ".join(
        f"{call} {code} ×{count}"
        + (f" ({mid_stream[call, code]} mid-stream)" if mid_stream[call, code] else "")
        for (call, code), count in total.most_common()
    )


def markdown(report: dict[str, object]) -> str:
    results = [FaultResult(**r) for r in report["faults"]]  # type: ignore[attr-defined]
    lines = [
        "# chaos: one fault at a time under a steady chat load",
        "",
        f"Command: `{report['command']}` (`make chaos`). Commit {report['commit']}, {report['date']}.",
        f"Machine: {report['machine']}",
        f"Load: {report['load']}",
        "",
        "Recovery = seconds from the fault until turns succeed again (every call started from then on",
        "succeeded), with no manual action: killed parts are restarted by devstack's supervisor, datastores",
        "are started again by hand after the outage. Lost = user messages whose ConversationStarted a client",
        "saw but which GetConversation does not return, plus answers whose MessageCompleted a client saw but",
        "which are not stored or stored different (must be 0).",
        "",
        "| fault | what the clients saw (failed calls) | calls failed | recovered after s "
        "| part back after s | persisted messages lost | reproduce |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.fault} | {_saw(r)} | {r.failed_calls}/{r.calls} | {_seconds(r.recovery_s)} | "
            f"{_seconds(r.part_back_s, '-')} | **{r.persisted_messages_lost}** | `{r.reproduce}` |"
        )
    for r in results:
        lines += [
            "",
            f"## {r.fault}",
            "",
            f"{r.description}. Reproduce: `{r.reproduce}`",
            "",
            "| measure | value |",
            "|---|---|",
            f"| answers streaming when injected | {r.streams_in_flight} |",
            f"| calls (failed) | {r.calls} ({r.failed_calls}) |",
            f"| first / last failure after the fault, s | {_seconds(r.first_failure_s, '-')} / "
            f"{_seconds(r.last_failure_s, '-')} |",
            f"| turns succeed again after, s | {_seconds(r.recovery_s)} |",
            f"| part ready again after, s | {_seconds(r.part_back_s, '-')} |",
            f"| started again by hand after, s | {_seconds(r.restarted_s, '-')} |",
            f"| turns completed | {r.turns_completed} |",
            f"| answers interrupted mid-stream | {r.streams_interrupted} |",
            f"| turns retried (same client_request_id) / given up | {r.turns_retried} / {r.turns_given_up} |",
            f"| **persisted messages lost** (user + answers missing + answers different) | "
            f"**{r.persisted_messages_lost}** ({r.user_messages_lost} + {r.answers_lost} + "
            f"{r.answers_stored_different}) |",
            f"| acknowledged to clients, all checked: user messages / answers | "
            f"{r.user_messages_acknowledged} / {r.answers_acknowledged} |",
            f"| duplicates stored: user messages / answers to one turn | {r.duplicate_user_messages} / "
            f"{r.duplicate_answers} |",
            f"| interrupted answers stored as failed / stored complete, client not told / not recorded | "
            f"{r.failed_answers_stored} / {r.interrupted_answers_stored_complete} / "
            f"{r.interrupted_answers_unrecorded} |",
        ]
        if r.client_saw:
            lines += ["", "| call | stage | status | message | count |", "|---|---|---|---|---|"]
            for row in r.client_saw:
                message = str(row["message"]).replace("|", "\\|") or "(none)"
                lines.append(
                    f"| {row['call']} | {row['stage']} | {row['code']} | {message} | {row['count']} |"
                )
        if r.supervisor:
            lines += ["", "Supervisor: " + "; ".join(r.supervisor) + "."]
    return "\n".join(lines) + "\n"


def write(report: dict[str, object], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "chaos.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown(report)
    (results_dir / "chaos.md").write_text(text)
    print(text)


async def run(
    faults: Sequence[Fault],
    settings: LoadSettings,
    timing: Timing,
    delay_ms: int,
    data_dir: Path | None = None,
) -> dict[str, object]:
    """Starts the mesh (in `data_dir`, or a temporary directory removed afterwards), measures, stops it."""
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    with contextlib.ExitStack() as cleanup:
        data = data_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="athena-chaos-")))
        stack = Stack(
            StackConfig(
                data_dir=data,
                ports=ports,
                offline_delay_ms=delay_ms,
                # The probe starts several turns a second; per-user turn counting is not what is measured.
                # Stream slots keep their default (4 per user): a slot a killed router never freed counts.
                extra_env={"ORCHESTRATOR_TURNS_PER_MINUTE": "1000000"},
            )
        )
        await asyncio.to_thread(stack.start)
        try:
            load = Load(f"127.0.0.1:{ports.edge}", settings)

            def reproduce(fault: Fault | None) -> str:
                return "python -m bench.chaos" + (f" --faults {fault.name}" if fault else " --faults none")

            started = time.time()
            results = await measure(load, faults, StackTarget(stack), timing, reproduce)
        finally:
            await asyncio.to_thread(stack.stop)
    return {
        "command": "python -m bench.chaos --faults " + ",".join(f.name for f in faults),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": machine(),
        "load": (
            f"{settings.clients} users sending turns back to back (answers of ~60 words, "
            f"{delay_ms} ms a word), failed turns retried with the same client_request_id after "
            f"{settings.retry_pause:g} s; a probe signing in and sending a short turn every "
            f"{settings.probe_interval:g} s; datastore outage {timing.outage:g} s"
        ),
        "faults": [asdict(result) for result in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = [fault.name for fault in FAULTS]
    known = {fault.name: fault for fault in (*FAULTS, *EXTRA_FAULTS)}
    parser.add_argument(
        "--faults",
        default=",".join(names),
        help=f"comma-separated, in order (default: {','.join(names)}); also "
        f"{', '.join(f.name for f in EXTRA_FAULTS)}; none: the load alone",
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--delay-ms", type=int, default=30, help="the offline model's pause between words")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds a stopped datastore stays down")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where chaos.md and chaos.json go")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the mesh's data and logs here (default: a temporary directory)"
    )
    args = parser.parse_args()
    chosen = (
        [] if args.faults == "none" else [name.strip() for name in args.faults.split(",") if name.strip()]
    )
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown faults: {', '.join(unknown)} (known: {', '.join(known)})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    faults = [known[name] for name in chosen]
    report = asyncio.run(
        run(
            faults,
            LoadSettings(clients=args.clients),
            Timing(outage=args.outage),
            args.delay_ms,
            args.data_dir,
        )
    )
    write(report, args.results)


if __name__ == "__main__":
    main()
