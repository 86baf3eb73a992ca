"""The orchestrator's `MemoryGateway` contract, held by the in-memory double and by the gRPC adapter talking
to a real memory service (PostgreSQL, Valkey, the shipped agent catalog, the hashing embedder).

Each test acts for a fresh user and asserts what a turn or its tools rely on: how a turn starts, continues
and replays, which agents it may use, what it remembers, recalls and forgets, and its cached tool results.
The gRPC adapter forwards the current caller's token (`mesh.context.current_call`), so the `caller` fixture
sets it for the test, as the orchestrator's interceptors do for an RPC, and resets it afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from athena.memory.v1 import memory_pb2
from conftest import ServiceGroup, TokenFactory, auth_metadata
from doubles.memory import InMemoryGateway
from memory_fixtures import MemoryHarness, start_memory  # type: ignore[import-not-found]

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.context import CallInfo, Principal, current_call
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from mesh.tokens import TokenVerifier
from orchestrator.catalog import Catalog
from orchestrator.memory_client import GrpcMemoryGateway
from orchestrator.ports import MemoryGateway
from orchestrator.records import (
    AssistantMessage,
    HistoryMessage,
    NewTurn,
    Role,
    Scope,
    TurnState,
)

SHIPPED_AGENTS = frozenset(agent.id for agent in Catalog.load() if agent.enabled)


@dataclass
class Memory:
    """One implementation of the port, acting for one fresh user."""

    gateway: MemoryGateway
    disable_agent: Callable[[str], Awaitable[None]]
    """Turns an agent off for this user, as the person does in the account settings."""
    someone_else: Callable[[], AbstractAsyncContextManager[MemoryGateway]]
    """The port acting for another user, for as long as the block lasts."""
    lapse_lease: Callable[[str], Awaitable[None]]
    """Lets the lease of the turn of that user message run out, as time passing would."""


@pytest_asyncio.fixture(scope="module")
async def memory_service(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: TokenFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MemoryHarness]:
    """One memory service for the module (every test acts for users of its own)."""
    group = ServiceGroup()
    try:
        yield await start_memory(
            group.start,
            verifier,
            make_token,
            tmp_path_factory.mktemp("memory"),
            postgres.url,
            valkey.url,
        )
    finally:
        await group.stop()


def principal(make_token: TokenFactory) -> Principal:
    user_id = str(uuid.uuid4())
    return Principal(user_id=user_id, token=make_token(user_id))


@asynccontextmanager
async def calling_as(who: Principal) -> AsyncIterator[None]:
    """The current call is `who`'s, as while the orchestrator serves one of their RPCs."""
    call = CallInfo(
        method="/athena.orchestrator.v1.OrchestratorService/Run", request_id=uuid.uuid4().hex, principal=who
    )
    token = current_call.set(call)
    try:
        yield
    finally:
        current_call.reset(token)


@pytest_asyncio.fixture
async def caller(make_token: TokenFactory) -> AsyncIterator[Principal]:
    """A fresh user whose call the test runs in."""
    who = principal(make_token)
    async with calling_as(who):
        yield who


def in_memory() -> Memory:
    now = [1000.0]
    gateway = InMemoryGateway(agents=list(Catalog.load()), clock=lambda: now[0])

    async def disable_agent(agent_id: str) -> None:
        gateway.disabled.add(agent_id)

    @asynccontextmanager
    async def someone_else() -> AsyncIterator[MemoryGateway]:
        yield InMemoryGateway(agents=list(Catalog.load()))  # the double holds one user's data

    async def lapse_lease(message_id: str) -> None:
        now[0] += 3600

    return Memory(gateway, disable_agent, someone_else, lapse_lease)


def over_grpc(
    harness: MemoryHarness, caller: Principal, make_token: TokenFactory, superuser_url: str
) -> Memory:
    gateway = GrpcMemoryGateway(harness.channel)

    async def disable_agent(agent_id: str) -> None:
        await harness.agents.SetAgentEnabled(
            memory_pb2.SetAgentEnabledRequest(agent_id=agent_id, enabled=False),
            metadata=auth_metadata(caller.token),
        )

    @asynccontextmanager
    async def someone_else() -> AsyncIterator[MemoryGateway]:
        async with calling_as(principal(make_token)):
            yield gateway

    async def lapse_lease(message_id: str) -> None:
        # PostgreSQL's clock decides leases: move the lease back instead of waiting for it.
        connection = await asyncpg.connect(superuser_url)
        try:
            await connection.execute(
                "UPDATE messages SET lease_until = now() - interval '1 second' WHERE id = $1",
                uuid.UUID(message_id),
            )
        finally:
            await connection.close()

    return Memory(gateway, disable_agent, someone_else, lapse_lease)


@pytest.fixture(params=["in-memory", "grpc"])
def memory(request: pytest.FixtureRequest, caller: Principal, make_token: TokenFactory) -> Memory:
    if request.param == "in-memory":
        return in_memory()
    postgres: EmbeddedPostgres = request.getfixturevalue("postgres")
    return over_grpc(request.getfixturevalue("memory_service"), caller, make_token, postgres.superuser_url)


def answer(content: str, agent_id: str = "athena", error: str = "") -> AssistantMessage:
    return AssistantMessage(id=str(uuid.uuid4()), agent_id=agent_id, content=content, error=error)


def said(history: tuple[HistoryMessage, ...]) -> list[tuple[Role, str, str, bool]]:
    return [(message.role, message.agent_id, message.content, message.failed) for message in history]


# --- starting, continuing and replaying a turn ------------------------------------------------------


async def test_a_first_turn_starts_a_conversation_titled_by_its_text(memory: Memory) -> None:
    start = await memory.gateway.start_turn(NewTurn("athena", "Plan my week"), history_messages=20)
    assert start.conversation_id
    assert start.message_id
    assert start.title == "Plan my week"
    assert start.history == ()
    assert not start.replayed
    assert start.enabled_agent_ids == SHIPPED_AGENTS
    assert len(SHIPPED_AGENTS) == 4

    other = await memory.gateway.start_turn(NewTurn("focus", "Another topic"), history_messages=20)
    assert other.conversation_id != start.conversation_id


async def test_a_long_first_message_is_titled_by_its_start_on_one_line(memory: Memory) -> None:
    text = "Plan my week:\n  gym on Monday, deep work on Tuesday and Wednesday, and a long walk on Sunday"
    start = await memory.gateway.start_turn(NewTurn("athena", text), history_messages=0)
    assert start.title == "Plan my week: gym on Monday, deep work on Tuesday and…"


async def test_continuing_answers_the_last_messages_before_the_new_one(memory: Memory) -> None:
    gateway = memory.gateway
    first = await gateway.start_turn(NewTurn("nutrition", "hello"), history_messages=20)
    conversation = first.conversation_id
    one = answer("hi, how can I help?", "nutrition")
    await gateway.append_assistant_message(conversation, one)
    second = await gateway.start_turn(NewTurn("nutrition", "my goal", conversation), history_messages=20)
    failed = answer("", "focus", error="the model did not answer in time")
    await gateway.append_assistant_message(conversation, failed, detached=True)

    third = await gateway.start_turn(NewTurn("athena", "and now?", conversation), history_messages=3)

    assert third.conversation_id == conversation
    assert third.title == "hello"  # the conversation keeps its first title
    assert said(third.history) == [
        (Role.ASSISTANT, "nutrition", "hi, how can I help?", False),
        (Role.USER, "nutrition", "my goal", False),
        (Role.ASSISTANT, "focus", "", True),
    ]
    assert [message.id for message in third.history] == [one.id, second.message_id, failed.id]
    assert third.message_id not in {message.id for message in third.history}

    everything = await gateway.start_turn(NewTurn("athena", "all?", conversation), history_messages=200)
    assert [message.content for message in everything.history] == [
        "hello",
        "hi, how can I help?",
        "my goal",
        "",
        "and now?",
    ]
    none = await gateway.start_turn(NewTurn("athena", "none?", conversation), history_messages=0)
    assert none.history == ()


async def test_storing_an_answer_again_under_its_id_replaces_it(memory: Memory) -> None:
    """A turn stored as failed (cancelled, timed out) and then completed is one message, the last version."""
    gateway = memory.gateway
    start = await gateway.start_turn(NewTurn("athena", "count to three"), history_messages=0)
    message_id = str(uuid.uuid4())
    partial = AssistantMessage(message_id, "athena", "one", error="cancelled")
    await gateway.append_assistant_message(start.conversation_id, partial, detached=True)
    complete = AssistantMessage(message_id, "athena", "one two three")
    await gateway.append_assistant_message(start.conversation_id, complete)

    after = await gateway.start_turn(NewTurn("athena", "thanks", start.conversation_id), history_messages=10)
    assert said(after.history) == [
        (Role.USER, "athena", "count to three", False),
        (Role.ASSISTANT, "athena", "one two three", False),
    ]


async def test_a_repeated_client_request_id_replays_the_stored_message(memory: Memory) -> None:
    gateway = memory.gateway
    request_id = f"req-{uuid.uuid4().hex}"
    first = await gateway.start_turn(NewTurn("athena", "hi", client_request_id=request_id), 20)
    await gateway.append_assistant_message(first.conversation_id, answer("hello!"))

    again = await gateway.start_turn(NewTurn("athena", "hi", client_request_id=request_id), 20)

    assert not first.replayed
    assert again.replayed
    assert (again.conversation_id, again.message_id, again.title) == (
        first.conversation_id,
        first.message_id,
        first.title,
    )
    assert again.history == ()  # what came before the message, never its own answer
    assert again.enabled_agent_ids == SHIPPED_AGENTS
    later = await gateway.start_turn(NewTurn("athena", "still there?", first.conversation_id), 20)
    assert said(later.history) == [
        (Role.USER, "athena", "hi", False),
        (Role.ASSISTANT, "athena", "hello!", False),
    ]


async def test_an_unknown_conversation_is_not_found(memory: Memory) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFound):
        await memory.gateway.start_turn(NewTurn("athena", "hi", unknown), history_messages=20)
    with pytest.raises(NotFound):
        await memory.gateway.append_assistant_message(unknown, answer("lost"))


async def test_another_users_conversation_is_not_found(memory: Memory) -> None:
    async with memory.someone_else() as theirs:
        start = await theirs.start_turn(NewTurn("athena", "my secret plans"), history_messages=0)
    with pytest.raises(NotFound):
        await memory.gateway.start_turn(NewTurn("athena", "show me", start.conversation_id), 20)
    with pytest.raises(NotFound):
        await memory.gateway.append_assistant_message(start.conversation_id, answer("injected"))


async def test_past_messages_are_found_by_their_words_for_their_owner_only(memory: Memory) -> None:
    start = await memory.gateway.start_turn(NewTurn("nutrition", "dinner is lentil soup"), history_messages=0)
    await memory.gateway.append_assistant_message(
        start.conversation_id, answer("Lentil soup it is", "nutrition")
    )
    # At once: messages are indexed in the background, but a recall first indexes the caller's own.
    found = await memory.gateway.recall_conversations("lentil soup dinner")
    assert found[0].conversation_id == start.conversation_id
    assert (found[0].role, found[0].agent_id, found[0].text) == (
        Role.USER,
        "nutrition",
        "dinner is lentil soup",
    )
    assert {past.text for past in found} == {"dinner is lentil soup", "Lentil soup it is"}
    assert found[0].at.tzinfo is not None
    assert await memory.gateway.recall_conversations("lentil soup", agent_id="focus") == []
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert await memory.gateway.recall_conversations("lentil soup", since=tomorrow) == []
    async with memory.someone_else() as theirs:
        assert await theirs.recall_conversations("lentil soup dinner") == []


# --- agents --------------------------------------------------------------------------------------------


async def test_a_disabled_agent_refuses_turns_and_is_no_handoff_candidate(memory: Memory) -> None:
    await memory.disable_agent("sme")
    with pytest.raises(FailedPrecondition):
        await memory.gateway.start_turn(NewTurn("sme", "invoice help"), history_messages=20)
    start = await memory.gateway.start_turn(NewTurn("athena", "hi"), history_messages=20)
    assert start.enabled_agent_ids == SHIPPED_AGENTS - {"sme"}


async def test_an_agent_missing_from_the_catalog_refuses_turns(memory: Memory) -> None:
    with pytest.raises(FailedPrecondition):
        await memory.gateway.start_turn(NewTurn("astrologer", "my horoscope"), history_messages=20)


async def test_a_replay_answers_the_stored_message_even_after_its_agent_was_disabled(memory: Memory) -> None:
    """The message was accepted once; a retried request must not turn that into a failure."""
    request_id = f"req-{uuid.uuid4().hex}"
    first = await memory.gateway.start_turn(NewTurn("sme", "invoice", client_request_id=request_id), 20)
    await memory.disable_agent("sme")
    again = await memory.gateway.start_turn(NewTurn("sme", "invoice", client_request_id=request_id), 20)
    assert (again.message_id, again.replayed) == (first.message_id, True)
    assert again.enabled_agent_ids == SHIPPED_AGENTS - {"sme"}


# --- long-term memories --------------------------------------------------------------------------------


async def test_a_user_memory_is_recalled_by_every_agent(memory: Memory) -> None:
    gateway = memory.gateway
    stored = await gateway.remember("my caloric goal is 2000 kcal", Scope.USER, "nutrition")
    assert (stored.text, stored.scope, stored.key, stored.created) == (
        "my caloric goal is 2000 kcal",
        Scope.USER,
        "",
        True,
    )
    for agent_id in ("athena", "nutrition"):
        [found] = await gateway.recall("what is my caloric goal?", agent_id, 5)
        assert (found.id, found.text, found.scope, found.agent_id) == (
            stored.id,
            "my caloric goal is 2000 kcal",
            Scope.USER,
            "nutrition",
        )
        assert found.score > 0


async def test_an_agent_memory_is_recalled_only_by_its_agent(memory: Memory) -> None:
    gateway = memory.gateway
    stored = await gateway.remember("ate oatmeal for breakfast", Scope.AGENT, "nutrition")
    assert stored.scope is Scope.AGENT
    [found] = await gateway.recall("oatmeal breakfast", "nutrition", 5)
    assert (found.id, found.scope, found.agent_id) == (stored.id, Scope.AGENT, "nutrition")
    assert await gateway.recall("oatmeal breakfast", "focus", 5) == []


async def test_a_turn_brings_what_its_agent_remembers_in_the_same_call(memory: Memory) -> None:
    gateway = memory.gateway
    shared = await gateway.remember("my caloric goal is 2000 kcal", Scope.USER, "nutrition")
    own = await gateway.remember("my caloric goal feels hard on Fridays", Scope.AGENT, "focus")
    start = await gateway.start_turn(NewTurn("nutrition", "what is my caloric goal?"), 0, recall_k=5)
    assert [found.id for found in start.memories] == [shared.id]  # not focus's own memory
    assert not start.recall_failed
    assert [
        m.id for m in (await gateway.start_turn(NewTurn("focus", "my caloric goal?"), 0, recall_k=5)).memories
    ] in (
        [shared.id, own.id],
        [own.id, shared.id],
    )
    assert (await gateway.start_turn(NewTurn("athena", "what is my caloric goal?"), 0)).memories == ()


async def test_nothing_is_recalled_for_an_unrelated_question(memory: Memory) -> None:
    await memory.gateway.remember("my caloric goal is 2000 kcal", Scope.USER, "nutrition")
    assert await memory.gateway.recall("favourite jazz record", "athena", 5) == []


async def test_a_keyed_memory_is_replaced_by_the_next_one_with_its_key(memory: Memory) -> None:
    gateway = memory.gateway
    first = await gateway.remember("caloric goal: 2000 kcal", Scope.USER, "nutrition", key="caloric_goal")
    second = await gateway.remember("caloric goal: 1800 kcal", Scope.USER, "athena", key="caloric_goal")
    assert first.created
    assert (second.text, second.key, second.created) == ("caloric goal: 1800 kcal", "caloric_goal", False)
    assert second.id != first.id  # a new version (memory keeps the old one as history)
    recalled = await gateway.recall("caloric goal kcal", "focus", 5)
    assert [(found.id, found.text, found.agent_id) for found in recalled] == [
        (second.id, "caloric goal: 1800 kcal", "athena")
    ]
    again = await gateway.remember("caloric goal: 1800 kcal", Scope.USER, "focus", key="caloric_goal")
    assert (again.id, again.created) == (second.id, False)  # a retried call: the same version


async def test_agent_keys_belong_to_their_agent(memory: Memory) -> None:
    gateway = memory.gateway
    focus = await gateway.remember("deep work at 9", Scope.AGENT, "focus", key="morning")
    sme = await gateway.remember("open the shop at 9", Scope.AGENT, "sme", key="morning")
    assert focus.created
    assert sme.created
    assert sme.id != focus.id
    again = await gateway.remember("deep work at 8", Scope.AGENT, "focus", key="morning")
    assert not again.created
    assert again.id not in (focus.id, sme.id)
    recalled = await gateway.recall("open the shop at 9", "sme", 5)
    assert [found.id for found in recalled] == [sme.id]


async def test_remembering_the_same_fact_twice_stores_it_once(memory: Memory) -> None:
    """A retried remember tool call must not store a second copy."""
    gateway = memory.gateway
    first = await gateway.remember("I like green tea", Scope.USER, "athena")
    again = await gateway.remember("I like green tea", Scope.USER, "nutrition")
    assert (again.id, again.created) == (first.id, False)
    recalled = await gateway.recall("green tea", "focus", 5)
    assert [(found.id, found.agent_id) for found in recalled] == [(first.id, "nutrition")]


async def test_forget_deletes_the_best_match_and_answers_its_id(memory: Memory) -> None:
    gateway = memory.gateway
    goal = await gateway.remember("my caloric goal is 2000 kcal", Scope.USER, "nutrition")
    tea = await gateway.remember("I like green tea", Scope.USER, "athena")

    assert await gateway.forget("my caloric goal", "athena") == [goal.id]

    assert await gateway.recall("what is my caloric goal?", "athena", 5) == []
    assert [found.id for found in await gateway.recall("green tea", "athena", 5)] == [tea.id]
    assert await gateway.forget("my caloric goal", "athena") == []  # nothing left to forget


async def test_forget_cannot_reach_another_agents_memory(memory: Memory) -> None:
    gateway = memory.gateway
    private = await gateway.remember("ate oatmeal for breakfast", Scope.AGENT, "nutrition")
    assert await gateway.forget("oatmeal breakfast", "focus") == []
    assert await gateway.forget("oatmeal breakfast", "nutrition") == [private.id]


# --- ephemeral values --------------------------------------------------------------------------------


async def test_ephemeral_values_are_read_back_until_replaced(memory: Memory) -> None:
    gateway = memory.gateway
    window = "2030-01-07T00:00:00Z/2030-01-08T00:00:00Z"
    assert await gateway.get_ephemeral("calendar_freebusy", window) is None
    await gateway.put_ephemeral("calendar_freebusy", window, '{"busy": []}', 300)
    assert await gateway.get_ephemeral("calendar_freebusy", window) == '{"busy": []}'
    assert await gateway.get_ephemeral("wearable_stats", window) is None  # namespaces are apart
    await gateway.put_ephemeral("calendar_freebusy", window, '{"busy": [1]}', 300)
    assert await gateway.get_ephemeral("calendar_freebusy", window) == '{"busy": [1]}'
    async with memory.someone_else() as theirs:
        assert await theirs.get_ephemeral("calendar_freebusy", window) is None


async def test_an_ephemeral_value_without_a_time_to_live_gets_the_default(memory: Memory) -> None:
    """Zero means the contract's default of five minutes, not "expired already"."""
    await memory.gateway.put_ephemeral("wearable_stats", "today", '{"steps": 4000}', 0)
    assert await memory.gateway.get_ephemeral("wearable_stats", "today") == '{"steps": 4000}'


async def test_an_ephemeral_value_must_be_json(memory: Memory) -> None:
    with pytest.raises(InvalidArgument):
        await memory.gateway.put_ephemeral("calendar_freebusy", "today", "busy all day", 300)
    assert await memory.gateway.get_ephemeral("calendar_freebusy", "today") is None


async def test_a_repeated_turn_is_found_running_then_done_with_its_answer(memory: Memory) -> None:
    turn = NewTurn("athena", "hello there", client_request_id=f"req-{uuid.uuid4().hex}")
    first = await memory.gateway.start_turn(turn, 20, lease_seconds=60)
    assert (first.state, first.replayed) == (TurnState.ANSWER, False)
    running = await memory.gateway.start_turn(turn, 20, lease_seconds=60)
    assert (running.state, running.replayed, running.answer) == (TurnState.RUNNING, True, None)
    assert (running.message_id, running.answer_id) == (first.message_id, first.answer_id)

    stored = AssistantMessage(first.answer_id, "athena", "General Kenobi.")
    await memory.gateway.append_assistant_message(first.conversation_id, stored)
    done = await memory.gateway.start_turn(turn, 20, lease_seconds=60)
    assert done.state is TurnState.DONE
    assert done.answer is not None
    assert (done.answer.id, done.answer.content, done.answer.failed) == (
        first.answer_id,
        "General Kenobi.",
        False,
    )
    assert done.history == ()


async def test_a_turn_whose_lease_lapsed_is_taken_over(memory: Memory) -> None:
    turn = NewTurn("athena", "anyone?", client_request_id=f"req-{uuid.uuid4().hex}")
    first = await memory.gateway.start_turn(turn, 20, lease_seconds=60)
    await memory.gateway.renew_turn(first.message_id, 60)
    assert (await memory.gateway.start_turn(turn, 20, lease_seconds=60)).state is TurnState.RUNNING
    await memory.lapse_lease(first.message_id)
    taken = await memory.gateway.start_turn(turn, 20, lease_seconds=60)
    assert (taken.state, taken.answer_id, taken.message_id) == (
        TurnState.ANSWER,
        first.answer_id,
        first.message_id,
    )
    assert (await memory.gateway.start_turn(turn, 20, lease_seconds=60)).state is TurnState.RUNNING


async def test_a_request_id_cannot_be_reused_for_another_message(memory: Memory) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    first = await memory.gateway.start_turn(NewTurn("athena", "one", client_request_id=request_id), 0)
    for other in (
        NewTurn("athena", "two", client_request_id=request_id),
        NewTurn("nutrition", "one", client_request_id=request_id),
        NewTurn("athena", "one", conversation_id=str(uuid.uuid4()), client_request_id=request_id),
    ):
        with pytest.raises(InvalidArgument) as refused:
            await memory.gateway.start_turn(other, 0)
        assert refused.value.field == "client_request_id"
    same = NewTurn("athena", "one", conversation_id=first.conversation_id, client_request_id=request_id)
    assert (await memory.gateway.start_turn(same, 0)).message_id == first.message_id


async def test_renewing_an_unknown_turn_is_not_found(memory: Memory) -> None:
    with pytest.raises(NotFound):
        await memory.gateway.renew_turn(str(uuid.uuid4()), 30)
