"""OrchestratorService.Run over real gRPC, against the real memory service (PostgreSQL + Valkey) and the
offline model server, all in-process; the model is only reached through the official `openai` SDK. The
calendar tool reads a stand-in integrations service over gRPC (its FreeBusy over in-memory calendars)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from athena.chat.v1 import chat_pb2
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from athena.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from conftest import ServiceGroup, auth_metadata, offline_model_settings, service_settings
from doubles.calendars import InMemoryCalendars
from doubles.model import ScriptedModel, ScriptedReply
from memory_fixtures import MemoryHarness, start_memory  # type: ignore[import-not-found]
from prometheus_client.parser import text_string_to_metric_families

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.tokens import TokenVerifier
from offline_model.server import OfflineModelServer
from orchestrator.app import ORCHESTRATOR, OrchestratorDeps
from orchestrator.model import ChatModel
from orchestrator.settings import OrchestratorSettings
from orchestrator.tools.calendar import CalendarEvent

SERVICE_KEY = "orchestrator-tests-service-key"


@dataclass
class Mesh:
    memory: MemoryHarness
    model: OfflineModelServer
    make_token: Callable[..., str]
    verifier: TokenVerifier
    memory_target: str
    base: Path
    services: ServiceGroup
    channels: list[grpc.aio.Channel]

    async def orchestrator(
        self, model: ChatModel | None = None, **overrides: Any
    ) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        """A started orchestrator (offline model; memory tools only unless `integrations_target` is given)
        and a stub calling it."""
        settings = OrchestratorSettings(
            **service_settings(
                self.base,
                memory_target=self.memory_target,
                OPENAI_BASE_URL=self.model.base_url,
                OPENAI_API_KEY=None,
                ATHENA_SERVICE_KEY=SERVICE_KEY,
                **overrides,
            )
        )
        running = await self.services.start(
            ORCHESTRATOR, settings, OrchestratorDeps(verifier=self.verifier, model=model)
        )
        client = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        self.channels.append(client)
        return orchestrator_pb2_grpc.OrchestratorServiceStub(client)

    def user(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        user_id = str(uuid.uuid4())
        return user_id, auth_metadata(self.make_token(user_id))

    async def conversation(self, conversation_id: str, metadata: Any) -> chat_pb2.Conversation:
        stub = memory_pb2_grpc.ConversationServiceStub(self.memory.channel)
        response = await stub.GetConversation(
            memory_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=metadata
        )
        conversation: chat_pb2.Conversation = response.conversation
        return conversation

    async def stats(self) -> dict[str, int]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.model.base_url}/_stats")
        return {str(key): int(value) for key, value in response.json().items()}


@pytest_asyncio.fixture(scope="module")
async def mesh(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    base = tmp_path_factory.mktemp("orchestrator")
    services = ServiceGroup()
    memory = await start_memory(
        services.start, verifier, make_token, base, postgres.url, valkey.url, ATHENA_SERVICE_KEY=SERVICE_KEY
    )
    model = OfflineModelServer(offline_model_settings())
    await model.start()
    target = f"127.0.0.1:{memory.port}"
    harness = Mesh(memory, model, make_token, verifier, target, base, services, [])
    yield harness
    for open_channel in harness.channels:
        await open_channel.close(grace=None)
    await services.stop()
    await model.stop()


class CalendarsServicer(integrations_pb2_grpc.IntegrationsServiceServicer):
    """The integrations service's FreeBusy over in-memory calendars, acting for the caller's token subject
    as the real service does (the orchestrator forwards the person's token)."""

    def __init__(self, verifier: TokenVerifier, calendars: InMemoryCalendars) -> None:
        self.verifier = verifier
        self.calendars = calendars

    async def FreeBusy(
        self, request: integrations_pb2.FreeBusyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> integrations_pb2.FreeBusyResponse:
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        caller = await self.verifier.verify(authorization.removeprefix("Bearer "))
        answer = await self.calendars.free_busy(
            caller.user_id, request.start.ToDatetime(UTC), request.end.ToDatetime(UTC)
        )
        response = integrations_pb2.FreeBusyResponse(sources=answer.sources)
        for block in answer.busy:
            busy = response.busy.add()
            busy.start.FromDatetime(block.start)
            busy.end.FromDatetime(block.end)
        return response


def daily_standups(days: int) -> list[CalendarEvent]:
    """A 15-minute standup at 09:00 UTC every day from yesterday on, in a Google calendar."""
    today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    return [
        CalendarEvent("google", "standup", at, at + timedelta(minutes=15), None, None, "UTC", True, "", "")
        for at in (today + timedelta(days=n) for n in range(-1, days))
    ]


@pytest_asyncio.fixture
async def calendars(verifier: TokenVerifier) -> AsyncIterator[tuple[str, InMemoryCalendars]]:
    """A stand-in integrations service on loopback (its target) and the calendars it answers from."""
    held = InMemoryCalendars(daily_standups(9), sources=["google"])
    server = grpc.aio.server()
    servicer = CalendarsServicer(verifier, held)  # type: ignore[abstract]  # only FreeBusy
    integrations_pb2_grpc.add_IntegrationsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", held
    await server.stop(None)


@pytest_asyncio.fixture(scope="module")
async def orchestrator(mesh: Mesh) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
    return await mesh.orchestrator()


async def run(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    metadata: Any,
    text: str,
    agent_id: str = "athena",
    conversation_id: str = "",
    deadline: float = 20.0,
) -> list[chat_pb2.ChatResponse]:
    return [
        response.event
        async for response in stub.Run(
            run_request(text, agent_id, conversation_id), metadata=metadata, timeout=deadline
        )
    ]


def run_request(
    text: str, agent_id: str = "athena", conversation_id: str = ""
) -> orchestrator_pb2.RunRequest:
    return orchestrator_pb2.RunRequest(
        chat=chat_pb2.ChatRequest(agent_id=agent_id, text=text, conversation_id=conversation_id)
    )


def kinds(events: list[chat_pb2.ChatResponse]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


def answer(events: list[chat_pb2.ChatResponse]) -> str:
    return "".join(event.text_delta.text for event in events if event.HasField("text_delta"))


async def test_a_turn_streams_the_answer_and_both_messages_are_stored(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    events = await run(orchestrator, metadata, "hello there")

    deltas = len(events) - 3  # how the text is split depends on timing (orchestrator.coalesce)
    assert deltas >= 1
    assert kinds(events) == ["conversation_started", "memories_recalled"] + ["text_delta"] * deltas + [
        "message_completed"
    ]
    started = events[0].conversation_started
    assert (started.agent_id, started.model, started.offline_model) == ("athena", "athena-offline", True)
    assert answer(events) == "I don't know that yet."
    completed = events[-1].message_completed
    assert completed.message_id == started.assistant_message_id
    assert completed.content == "I don't know that yet."
    assert completed.usage.completion_tokens > 0
    assert completed.HasField("time_to_first_token")

    conversation = await mesh.conversation(started.conversation_id, metadata)
    assert [(m.role, m.agent_id, m.content) for m in conversation.messages] == [
        (chat_pb2.ROLE_USER, "athena", "hello there"),
        (chat_pb2.ROLE_ASSISTANT, "athena", "I don't know that yet."),
    ]
    assert conversation.messages[0].id == started.user_message_id
    assert conversation.messages[1].id == started.assistant_message_id
    assert conversation.messages[1].status == chat_pb2.MESSAGE_STATUS_COMPLETE


async def test_what_one_agent_remembers_for_the_user_another_agent_knows(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    told = await run(orchestrator, metadata, "remember my caloric goal is 2000 kcal", agent_id="nutrition")
    assert kinds(told)[:4] == ["conversation_started", "memories_recalled", "tool_call", "tool_result"]
    call, result = told[2].tool_call, told[3].tool_result
    assert (call.name, call.agent_id) == ("remember_memory", "nutrition")
    assert json.loads(call.arguments_json) == {"text": "my caloric goal is 2000 kcal", "scope": "user"}
    assert (result.call_id, result.is_error) == (call.call_id, False)
    assert answer(told) == "Got it — I'll remember that my caloric goal is 2000 kcal."
    stored = (await mesh.conversation(told[0].conversation_started.conversation_id, metadata)).messages[1]
    assert [(record.name, record.is_error) for record in stored.tool_calls] == [("remember_memory", False)]

    asked = await run(orchestrator, metadata, "what is my caloric goal?", agent_id="focus")
    recalled = asked[1].memories_recalled.memories
    assert [(memory.text, memory.scope) for memory in recalled] == [("my caloric goal is 2000 kcal", "user")]
    assert answer(asked) == "Here is what I know: my caloric goal is 2000 kcal"

    _, stranger = mesh.user()
    assert answer(await run(orchestrator, stranger, "what is my caloric goal?")) == "I don't know that yet."


async def test_a_past_conversation_is_recalled_by_what_was_said_and_only_for_its_owner(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    said = "For dinner on weeknights I cook lentil soup with garlic"
    await run(orchestrator, metadata, said, agent_id="nutrition")
    question = "What did I tell the nutrition coach last week about dinner?"

    asked = await run(orchestrator, metadata, question, agent_id="focus")
    call = next(event.tool_call for event in asked if event.HasField("tool_call"))
    arguments = json.loads(call.arguments_json)
    assert (call.name, arguments["query"], arguments["agent"]) == (
        "recall_conversations",
        "dinner",
        "nutrition",
    )
    today = datetime.now(UTC).date()
    assert (arguments["since"], arguments["until"]) == (
        (today - timedelta(days=7)).isoformat(),
        today.isoformat(),
    )
    assert f"you told nutrition: \u201c{said}\u201d" in answer(asked)

    _, stranger = mesh.user()
    assert (
        answer(await run(orchestrator, stranger, question))
        == "I couldn't find that in our past conversations."
    )


async def test_agent_scoped_memories_stay_with_their_agent(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    noted = await run(orchestrator, metadata, "note my breakfast was oatmeal", agent_id="nutrition")
    assert json.loads(noted[2].tool_call.arguments_json)["scope"] == "agent"

    other = await run(orchestrator, metadata, "what was my breakfast?", agent_id="focus")
    assert list(other[1].memories_recalled.memories) == []
    # No memory of it: the person's own words, in their conversation with nutrition, are all it finds.
    assert answer(other).startswith("From our past conversations:")
    same = await run(orchestrator, metadata, "what was my breakfast?", agent_id="nutrition")
    assert [(m.text, m.scope) for m in same[1].memories_recalled.memories] == [
        ("my breakfast was oatmeal", "agent")
    ]


async def test_a_handoff_is_streamed_and_the_answer_is_stored_under_the_agent_that_gave_it(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    events = await run(orchestrator, metadata, "ask focus when should I do deep work?")

    assert kinds(events)[:6] == [
        "conversation_started",
        "memories_recalled",
        "tool_call",
        "tool_result",
        "handoff",
        "memories_recalled",
    ]
    assert events[2].tool_call.name == "handoff_to_focus"
    handoff = events[4].handoff
    assert (handoff.from_agent_id, handoff.to_agent_id) == ("athena", "focus")
    assert handoff.reason == "when should I do deep work?"
    deltas = [event.text_delta for event in events if event.HasField("text_delta")]
    assert {delta.agent_id for delta in deltas} == {"focus"}
    assert events[-1].message_completed.agent_id == "focus"

    conversation = await mesh.conversation(events[0].conversation_started.conversation_id, metadata)
    assistant = conversation.messages[1]
    assert assistant.agent_id == "focus"
    assert [record.name for record in assistant.tool_calls] == ["handoff_to_focus"]


async def test_a_calendar_question_is_answered_from_the_persons_connected_calendars(
    mesh: Mesh, calendars: tuple[str, InMemoryCalendars]
) -> None:
    target, held = calendars
    orchestrator = await mesh.orchestrator(integrations_target=target)
    user_id, metadata = mesh.user()
    events = await run(orchestrator, metadata, "am I free this week?", agent_id="focus")

    [call] = [event.tool_call for event in events if event.HasField("tool_call")]
    [result] = [event.tool_result for event in events if event.HasField("tool_result")]
    assert call.name == "calendar_freebusy"
    assert not result.is_error
    asked = json.loads(call.arguments_json)
    start, end = (datetime.fromisoformat(asked[edge]) for edge in ("start", "end"))
    assert held.asked == [("free_busy", user_id, start, end)]  # for the person whose token it was
    busy = json.loads(result.result_json)["busy"]
    expected = (await held.free_busy(user_id, start, end)).busy
    assert [(block["start"], block["end"]) for block in busy] == [
        (b.start.isoformat().replace("+00:00", "Z"), b.end.isoformat().replace("+00:00", "Z"))
        for b in expected
    ]
    assert len(busy) >= 6  # the daily standup falls on every day of the week asked about
    assert answer(events).startswith(f"You have {len(busy)} busy blocks between ")


async def test_cancelling_the_call_cancels_the_model_request_and_records_the_turn(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    before = await mesh.stats()
    call = orchestrator.Run(run_request("!slow 20000 hello"), metadata=metadata)
    first = await call.read()
    assert isinstance(first, orchestrator_pb2.RunResponse)
    conversation_id = first.event.conversation_started.conversation_id
    second = await call.read()
    assert isinstance(second, orchestrator_pb2.RunResponse)
    assert second.event.HasField("memories_recalled")
    # The model is now holding its stream open for 20 s.
    for _ in range(200):
        if (await mesh.stats())["streams_started"] > before["streams_started"]:
            break
        await asyncio.sleep(0.01)
    call.cancel()

    for _ in range(200):
        stats = await mesh.stats()
        if stats["streams_disconnected"] > before["streams_disconnected"]:
            break
        await asyncio.sleep(0.02)
    assert stats["streams_disconnected"] == before["streams_disconnected"] + 1
    assert stats["streams_completed"] == before["streams_completed"]

    for _ in range(200):
        messages = (await mesh.conversation(conversation_id, metadata)).messages
        if len(messages) == 2:
            break
        await asyncio.sleep(0.02)
    assert [m.content for m in messages] == ["!slow 20000 hello", ""]
    assert messages[1].status == chat_pb2.MESSAGE_STATUS_FAILED
    assert "cancelled" in messages[1].error


async def test_model_errors_are_retried_then_reported_as_unavailable(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    # Two 429s, then an answer: retried before anything was streamed, so the client never notices.
    recovered = await run(orchestrator, metadata, f"!fail 429 2 hi {uuid.uuid4().hex}")
    assert kinds(recovered)[-1] == "message_completed"

    started: list[chat_pb2.ChatResponse] = []
    request = run_request(f"!fail 503 10 hi {uuid.uuid4().hex}")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for response in orchestrator.Run(request, metadata=metadata, timeout=20):
            started.append(response.event)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "HTTP 503" in (raised.value.details() or "")
    assert "after 3 attempts" in (raised.value.details() or "")
    assert kinds(started) == ["conversation_started", "memories_recalled"]

    conversation = await mesh.conversation(started[0].conversation_started.conversation_id, metadata)
    assert [m.role for m in conversation.messages] == [chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT]
    assert conversation.messages[1].status == chat_pb2.MESSAGE_STATUS_FAILED
    assert "HTTP 503" in conversation.messages[1].error


async def test_a_model_slower_than_the_deadline_ends_in_deadline_exceeded(
    mesh: Mesh, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
) -> None:
    _, metadata = mesh.user()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await run(orchestrator, metadata, "!slow 5000 hi", deadline=1.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, raised.value.details()


async def test_a_model_that_keeps_calling_tools_is_stopped_with_resource_exhausted(mesh: Mesh) -> None:
    always = ScriptedModel(
        lambda request: ScriptedReply.call("recall_memory", json.dumps({"query": "again"}))
    )
    stub = await mesh.orchestrator(model=always, max_steps=3)
    _, metadata = mesh.user()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await run(stub, metadata, "loop")
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "3 model steps" in (raised.value.details() or "")
    assert len(always.requests) == 3


@pytest.mark.parametrize(
    ("agent_id", "text", "code"),
    [
        ("nobody", "hi", grpc.StatusCode.NOT_FOUND),
        ("athena", "", grpc.StatusCode.INVALID_ARGUMENT),
        ("", "hi", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_stored(
    mesh: Mesh,
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    agent_id: str,
    text: str,
    code: grpc.StatusCode,
) -> None:
    _, metadata = mesh.user()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await run(orchestrator, metadata, text, agent_id=agent_id)
    assert raised.value.code() == code


async def test_a_call_without_a_token_is_unauthenticated(
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await run(orchestrator, (), "hi")
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    """The samples a service's `/metrics` answers: (name, sorted labels) → value."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much the sample `name{labels}` grew between two scrapes."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_a_turn_moves_the_turn_path_metrics_on_the_services_metrics_ports(mesh: Mesh) -> None:
    await mesh.orchestrator()
    port = mesh.services.running[-1].http_port
    memory_port = mesh.memory.service.http_port
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(mesh.channels[-1])
    _, metadata = mesh.user()
    before, memory_before = await scrape(port), await scrape(memory_port)

    events = await run(stub, metadata, f"remember I like tea {uuid.uuid4().hex}")

    after, memory_after = await scrape(port), await scrape(memory_port)
    assert kinds(events)[-1] == "message_completed"
    agent = {"agent": "athena", "model": "athena-offline"}
    assert moved(before, after, "athena_chat_time_to_first_token_seconds_count", **agent) == 1
    ttft = events[-1].message_completed.time_to_first_token.ToTimedelta().total_seconds()
    assert moved(before, after, "athena_chat_time_to_first_token_seconds_sum", **agent) == pytest.approx(
        ttft, abs=1e-5
    )
    assert moved(before, after, "athena_chat_turn_duration_seconds_count", outcome="ok", **agent) == 1
    usage = events[-1].message_completed.usage
    assert moved(before, after, "athena_chat_tokens_total", type="output", **agent) == usage.completion_tokens
    assert moved(before, after, "athena_chat_tokens_total", type="input", **agent) == usage.prompt_tokens
    assert moved(before, after, "athena_tool_call_duration_seconds_count", tool="remember_memory") == 1
    assert moved(before, after, "athena_tool_call_errors_total", tool="remember_memory", reason="error") == 0
    assert after[("athena_chat_active_streams", ())] == 0
    assert after[("athena_chat_turns_starting", ())] == 0
    assert moved(before, after, "grpc_server_handled_total", **_run_ok()) == 1
    # The turn's recall ran in memory: its search and ranking were timed (the orchestrator embedded the
    # message itself only if memory was asked to; either way the search stage ran once at least).
    assert moved(memory_before, memory_after, "athena_memory_recall_seconds_count", stage="search") >= 1
    assert moved(memory_before, memory_after, "athena_memory_recall_seconds_count", stage="rank") >= 1


async def test_a_turn_counts_as_starting_until_its_first_text_or_its_end(mesh: Mesh) -> None:
    await mesh.orchestrator()  # the gauge reads the newest orchestrator's turns
    port = mesh.services.running[-1].http_port
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(mesh.channels[-1])
    _, metadata = mesh.user()

    async def starting() -> float:
        return (await scrape(port))[("athena_chat_turns_starting", ())]

    with pytest.raises(grpc.aio.AioRpcError):
        await run(stub, metadata, "hi", agent_id="nobody")
    with pytest.raises(grpc.aio.AioRpcError):
        await run(stub, metadata, f"!fail 503 10 hi {uuid.uuid4().hex}")
    assert await starting() == 0
    slow = stub.Run(run_request("!slow 20000 hello"), metadata=metadata)
    await slow.read()  # started; the model holds its first token back
    assert await starting() == 1
    slow.cancel()
    for _ in range(200):
        if await starting() == 0:
            break
        await asyncio.sleep(0.02)
    assert await starting() == 0


async def test_turns_beyond_the_start_limit_wait_their_turn_and_all_complete(mesh: Mesh) -> None:
    await mesh.orchestrator(turn_starts_at_once=1, turn_starts_at_most=1)
    port = mesh.services.running[-1].http_port
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(mesh.channels[-1])
    users = [mesh.user()[1] for _ in range(5)]

    answers = await asyncio.gather(
        *(run(stub, metadata, f"hello {index} {uuid.uuid4().hex}") for index, metadata in enumerate(users))
    )

    assert [kinds(events)[-1] for events in answers] == ["message_completed"] * len(users)
    assert all(answer(events) for events in answers)
    after = await scrape(port)
    assert after[("athena_chat_turn_start_limit", ())] == 1
    assert after[("athena_chat_turn_starts_waiting", ())] == 0


def _run_ok() -> dict[str, str]:
    return {
        "grpc_service": "athena.orchestrator.v1.OrchestratorService",
        "grpc_method": "Run",
        "grpc_code": "OK",
    }


async def test_model_retries_and_errors_are_counted_by_status(mesh: Mesh) -> None:
    await mesh.orchestrator()
    port = mesh.services.running[-1].http_port
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(mesh.channels[-1])
    _, metadata = mesh.user()
    before = await scrape(port)

    await run(stub, metadata, f"!fail 429 2 hi {uuid.uuid4().hex}")
    with pytest.raises(grpc.aio.AioRpcError):
        await run(stub, metadata, f"!fail 503 10 hi {uuid.uuid4().hex}")

    after = await scrape(port)
    model = {"model": "athena-offline"}
    assert moved(before, after, "athena_model_retries_total", status="UNAVAILABLE", **model) == 2 + 2
    assert moved(before, after, "athena_model_errors_total", status="UNAVAILABLE", **model) == 1
    agent = {"agent": "athena", "model": "athena-offline"}
    assert moved(before, after, "athena_chat_turn_duration_seconds_count", outcome="error", **agent) == 1


async def test_metrics_are_served_as_openmetrics_when_the_scraper_asks(mesh: Mesh) -> None:
    port = mesh.memory.service.http_port
    async with httpx.AsyncClient() as client:
        plain = await client.get(f"http://127.0.0.1:{port}/metrics")
        negotiated = await client.get(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"},
        )
    assert plain.headers["content-type"].startswith("text/plain")
    assert negotiated.headers["content-type"].startswith("application/openmetrics-text")
    assert negotiated.text.endswith("# EOF\n")
