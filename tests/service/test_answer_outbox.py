"""The answer outbox (finding 5: "If memory or PostgreSQL dies as the turn ends, the client has the whole
answer but it is never stored"): an answer memory cannot take is kept in a Redis stream and delivered as
soon as memory can take it, exactly once, even when the replica that kept it dies first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from athena.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from conftest import (
    ServiceGroup,
    TokenFactory,
    auth_metadata,
    offline_model_settings,
    running_postgres,
    running_valkey,
    service_settings,
)
from memory_fixtures import SERVICE_KEY, start_memory  # type: ignore[import-not-found]

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.errors import Unavailable
from mesh.redis import connect
from mesh.tokens import TokenVerifier
from offline_model.server import OfflineModelServer
from orchestrator.app import ORCHESTRATOR, OrchestratorDeps
from orchestrator.outbox import GROUP, STREAM, RedisAnswerOutbox
from orchestrator.records import AssistantMessage
from orchestrator.settings import OrchestratorSettings


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    with running_postgres(tmp_path_factory.mktemp("outbox-postgres")) as server:
        yield server


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with running_valkey(tmp_path_factory.mktemp("outbox-valkey")) as server:
        yield server


async def test_an_answer_stored_while_postgres_is_down_is_delivered_when_it_is_back(
    own_postgres: EmbeddedPostgres,
    own_valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    services = ServiceGroup()
    model = OfflineModelServer(offline_model_settings(delay_ms=1))
    await model.start()
    try:
        memory = await start_memory(
            services.start,
            verifier,
            make_token,
            tmp_path,
            own_postgres.url,
            own_valkey.url,
            db_acquire_timeout_seconds=1.0,
            db_command_timeout_seconds=2.0,
        )
        settings = OrchestratorSettings(
            **service_settings(
                tmp_path,
                memory_target=f"127.0.0.1:{memory.port}",
                redis_url=own_valkey.url,
                OPENAI_BASE_URL=model.base_url,
                OPENAI_API_KEY=None,
                ATHENA_SERVICE_KEY=SERVICE_KEY,
            )
        )
        orchestrator = await services.start(ORCHESTRATOR, settings, OrchestratorDeps(verifier=verifier))
        user_id = str(uuid.uuid4())
        metadata = auth_metadata(make_token(user_id))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel:
            request = chat_pb2.ChatRequest(agent_id="athena", text="!slow 1500 hi")
            run = orchestrator_pb2_grpc.OrchestratorServiceStub(channel).Run(
                orchestrator_pb2.RunRequest(chat=request), metadata=metadata, timeout=30
            )
            events: list[chat_pb2.ChatResponse] = []
            async for response in run:
                events.append(response.event)
                if response.event.HasField("memories_recalled"):
                    await asyncio.to_thread(own_postgres.stop)  # while the model thinks
        started = events[0]
        assert events[-1].HasField("message_completed"), "the person read the whole answer"
        answer = events[-1].message_completed

        await asyncio.to_thread(own_postgres.start)
        conversations = memory_pb2_grpc.ConversationServiceStub(memory.channel)
        for _ in range(100):
            try:
                stored = await conversations.GetConversation(
                    memory_pb2.GetConversationRequest(
                        conversation_id=started.conversation_started.conversation_id
                    ),
                    metadata=metadata,
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                stored = None
            if stored is not None and len(stored.conversation.messages) == 2:
                break
            await asyncio.sleep(0.2)
        assert stored is not None
        assert [(m.id, m.content) for m in stored.conversation.messages[1:]] == [
            (answer.message_id, answer.content)
        ]
        client = connect(own_valkey.url, 1.0)
        assert await client.xlen(STREAM) == 0  # delivered, then deleted
        await client.aclose()
    finally:
        await services.stop()
        await model.stop()


@pytest_asyncio.fixture
async def redis_url(own_valkey: EmbeddedValkey) -> AsyncIterator[str]:
    client = connect(own_valkey.url, 1.0)
    await client.delete(STREAM)
    await client.aclose()
    yield own_valkey.url


async def test_an_answer_kept_by_a_replica_that_died_is_delivered_once_by_another(redis_url: str) -> None:
    delivered: list[str] = []
    memory_down = True

    async def deliver(user_id: str, conversation_id: str, message: AssistantMessage) -> None:
        if memory_down:
            raise Unavailable("the database is unavailable")
        delivered.append(message.id)

    first = RedisAnswerOutbox(connect(redis_url, 1.0), deliver, consumer="replica-a", retry_seconds=0.05)
    message = AssistantMessage(str(uuid.uuid4()), "athena", "kept for later")
    await first.put(str(uuid.uuid4()), str(uuid.uuid4()), message)
    dying = asyncio.create_task(first.deliver_forever())
    await asyncio.sleep(0.3)  # it took the entry and failed to hand it over
    dying.cancel()  # replica A dies holding it
    with pytest.raises(asyncio.CancelledError):
        await dying

    memory_down = False
    second = RedisAnswerOutbox(
        connect(redis_url, 1.0), deliver, consumer="replica-b", claim_idle_seconds=0.1, retry_seconds=0.05
    )
    survivor = asyncio.create_task(second.deliver_forever())
    try:
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # and nothing more comes
    finally:
        survivor.cancel()
    assert delivered == [message.id]
    client = connect(redis_url, 1.0)
    assert await client.xlen(STREAM) == 0
    assert (await client.xpending(STREAM, GROUP))["pending"] == 0
    await client.aclose()


async def test_an_idle_outbox_waits_quietly_on_a_healthy_server(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its blocking read for new answers ends before the client's timeout would cut it off: an empty
    outbox does not report the server unreachable (it did every 3 s, with a 1-s read on a 1-s client)."""

    async def deliver(user_id: str, conversation_id: str, message: AssistantMessage) -> None:
        raise AssertionError("nothing to deliver")

    client = connect(redis_url, 1.0)
    outbox = RedisAnswerOutbox(client, deliver, consumer="idle", block_seconds=0.5)
    idle = asyncio.create_task(outbox.deliver_forever())
    try:
        await asyncio.sleep(3.5)
    finally:
        idle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await idle
        await client.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == "orchestrator.outbox"] == []
