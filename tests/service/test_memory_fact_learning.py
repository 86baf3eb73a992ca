"""Automatic facts (issue 17) against the real memory service, PostgreSQL, Valkey and the offline model:
a completed turn's facts are learnt in the background with provenance and history, recall knows time,
people correct and delete them, no one sees another's, and a failing extraction never touches the turn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from conftest import NO_REDIS, StartService, offline_model_settings
from memory_fixtures import MemoryHarness, expect_status, start_memory, start_turn_request
from polling import eventually
from prometheus_client import REGISTRY

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from memory.extraction import FactExtractor
from mesh import redis as mesh_redis
from mesh.events import encode
from mesh.model_api import ModelApi, client_session, wait_closed
from mesh.tokens import TokenVerifier
from offline_model.server import OfflineModelServer

Metadata = tuple[tuple[str, str], ...]
DEADLINE_SECONDS = 15.0


@pytest_asyncio.fixture
async def offline_model() -> AsyncIterator[OfflineModelServer]:
    model = OfflineModelServer(offline_model_settings())
    await model.start()
    yield model
    await model.stop()


@pytest_asyncio.fixture
async def learning(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
    offline_model: OfflineModelServer,
) -> MemoryHarness:
    """The memory service learning facts with the offline model, on a stream of its own."""
    return await start_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        postgres.url,
        valkey.url,
        extraction_enabled=True,
        extraction_stream=f"test:facts:{uuid.uuid4().hex}",
        openai_base_url=offline_model.base_url,
        extraction_retry_seconds=0.5,
    )


async def turn(memory: MemoryHarness, md: Metadata, agent_id: str, text: str) -> tuple[str, str, str]:
    """A completed turn as the orchestrator stores it; answers (conversation id, message id, answer id)."""
    start = await memory.conversations.StartTurn(
        start_turn_request(agent_id=agent_id, text=text), metadata=md
    )
    answer = chat_pb2.Message(id=start.answer_id, agent_id=agent_id, content="Noted, thanks.")
    await memory.conversations.AppendAssistantMessage(
        memory_pb2.AppendAssistantMessageRequest(conversation_id=start.conversation.id, message=answer),
        metadata=md,
    )
    return start.conversation.id, start.message.id, start.answer_id


async def memories(memory: MemoryHarness, md: Metadata, *, history: bool = False) -> list[account_pb2.Memory]:
    listed = await memory.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(include_history=history), metadata=md
    )
    return list(listed.memories)


async def learnt(memory: MemoryHarness, md: Metadata, words: str) -> account_pb2.Memory:
    async def found() -> account_pb2.Memory | None:
        return next((m for m in await memories(memory, md) if words in m.text), None)

    return await eventually(found, f"a current memory saying {words!r}")


async def recall(memory: MemoryHarness, md: Metadata, query: str, agent_id: str) -> list[str]:
    response = await memory.memory.Recall(
        memory_pb2.RecallRequest(query=query, agent_id=agent_id), metadata=md
    )
    return [r.memory.text for r in response.results]


async def test_a_fact_said_in_passing_is_learnt_with_its_origin_and_reaches_every_agent(
    learning: MemoryHarness,
) -> None:
    _, md = learning.user()
    conversation_id, message_id, _ = await turn(
        learning, md, "nutrition", "Any dinner ideas for tonight? I'm vegetarian, by the way."
    )
    fact = await learnt(learning, md, "vegetarian")
    assert fact.text == "The user is vegetarian."
    assert fact.source == account_pb2.MEMORY_SOURCE_INFERRED
    assert (fact.conversation_id, fact.message_id, fact.agent_id) == (
        conversation_id,
        message_id,
        "nutrition",
    )
    assert fact.key == "diet"
    assert fact.scope == account_pb2.MEMORY_SCOPE_USER
    assert fact.confidence == pytest.approx(0.9)
    assert fact.HasField("valid_from")
    assert not fact.HasField("valid_to")
    assert "The user is vegetarian." in await recall(learning, md, "am I vegetarian?", "focus")
    # Saying it again changes nothing.
    await turn(learning, md, "focus", "As I said, I'm vegetarian.")
    await turn(learning, md, "focus", "call me Sam")
    await learnt(learning, md, "called Sam")
    assert [m.text for m in await memories(learning, md, history=True)].count("The user is vegetarian.") == 1
    # No one else sees any of it.
    _, other = learning.user()
    assert await memories(learning, other, history=True) == []
    assert await recall(learning, other, "am I vegetarian?", "focus") == []
    await expect_status(
        learning.memory.GetMemoryHistory(
            memory_pb2.GetMemoryHistoryRequest(memory_id=fact.id), metadata=other
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_changed_goal_supersedes_the_old_one_which_stays_in_history(learning: MemoryHarness) -> None:
    _, md = learning.user()
    await turn(learning, md, "nutrition", "My daily calorie goal is 2,000 kcal.")
    old = await learnt(learning, md, "2,000 kcal")
    await turn(learning, md, "nutrition", "Good news: my goal is now 1,800 kcal!")
    new = await learnt(learning, md, "1,800 kcal")
    assert new.supersedes_id == old.id
    assert [m.text for m in await memories(learning, md)] == ["The user's caloric goal is 1,800 kcal."]
    history = await learning.memory.GetMemoryHistory(
        memory_pb2.GetMemoryHistoryRequest(memory_id=new.id), metadata=md
    )
    assert [(v.id, v.HasField("valid_to")) for v in history.versions] == [(new.id, False), (old.id, True)]
    assert history.versions[1].valid_to == new.valid_from  # it held until the person said otherwise
    # Recall answers the current goal, and the old one when the question asks about the past.
    for agent in ("nutrition", "focus", "athena"):
        assert await recall(learning, md, "what is my caloric goal?", agent) == [new.text]
    past = await recall(learning, md, "what did my caloric goal use to be?", "focus")
    assert old.text in past
    assert new.text in past


async def test_corrections_are_explicit_versions_and_forgetting_is_final(learning: MemoryHarness) -> None:
    user_id, md = learning.user()
    _, _, answer_id = await turn(learning, md, "nutrition", "I live in Lisbon, near the river.")
    inferred = await learnt(learning, md, "Lisbon")
    corrected = await learning.memory.CorrectMemory(
        memory_pb2.CorrectMemoryRequest(memory_id=inferred.id, text="The user lives in Porto."), metadata=md
    )
    assert corrected.memory.source == account_pb2.MEMORY_SOURCE_EXPLICIT
    assert corrected.memory.supersedes_id == inferred.id
    assert corrected.memory.message_id == inferred.message_id  # where the fact came from stays known
    await expect_status(
        learning.memory.CorrectMemory(
            memory_pb2.CorrectMemoryRequest(memory_id=inferred.id, text="again"), metadata=md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # Deleting removes the fact with its history; the old message does not bring it back.
    await learning.memory.Forget(memory_pb2.ForgetRequest(memory_id=corrected.memory.id), metadata=md)
    assert await memories(learning, md, history=True) == []
    client = mesh_redis.connect(learning.settings.redis_url, 2.0)
    try:
        await _requeue(client, learning.settings.extraction_stream, user_id, answer_id)
        await eventually(
            lambda: _settled(
                client, learning.settings.extraction_stream, learning.settings.extraction_consumer_group, 2
            ),
            "the requeued job handled",
        )
    finally:
        await client.aclose()
    assert await memories(learning, md, history=True) == []


async def _requeue(client: Any, stream: str, user_id: str, answer_id: str) -> None:
    """The same turn's job again, under another id (as a replay of the stream would)."""
    job = memory_pb2.FactExtractionJob(id=f"again-{answer_id}", user_id=user_id, answer_id=answer_id)
    await client.xadd(stream, encode(job))


async def _settled(client: Any, stream: str, group: str, entries: int) -> bool:
    """The stream holds `entries` jobs, each read by the group and acknowledged."""
    if await client.xlen(stream) < entries:
        return False  # not queued yet (jobs are queued in a task of their own)
    groups = await client.xinfo_groups(stream)
    info = next((g for g in groups if g["name"] == group), None)
    return info is not None and bool(info["pending"] == 0 and info.get("lag", 1) == 0)


# -- a failing extraction never fails the turn -------------------------------------------------------------


@pytest_asyncio.fixture
async def broken_model() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A chat API answering HTTP 500, or 200 with malformed JSON, per the path's mode; counts calls."""
    calls = {"count": 0}
    mode = {"value": "malformed"}

    async def completions(request: web.Request) -> web.Response:
        calls["count"] += 1
        if mode["value"] == "error":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        body = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure! Facts: vegetarian"}}]
        }
        return web.json_response(body)

    async def set_mode(request: web.Request) -> web.Response:
        mode["value"] = request.match_info["mode"]
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/mode/{mode}", set_mode)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


@pytest.mark.parametrize("failure", ["malformed", "error"])
async def test_a_failing_extraction_leaves_the_turn_complete_and_is_dead_lettered_without_effect(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
    broken_model: tuple[str, dict[str, int]],
    failure: str,
) -> None:
    base_url, calls = broken_model
    session = client_session()
    try:
        async with session.post(f"{base_url}/mode/{failure}") as response:
            assert response.status == 200
        stream = f"test:facts:{uuid.uuid4().hex}"
        memory = await start_memory(
            start_service,
            verifier,
            make_token,
            tmp_path,
            postgres.url,
            valkey.url,
            extractor=FactExtractor(ModelApi(f"{base_url}/v1", "key", session), "broken", timeout=5),
            extraction_enabled=True,
            extraction_stream=stream,
            extraction_max_attempts=2,
            extraction_retry_seconds=0.3,
        )
        _, md = memory.user()
        conversation_id, _, answer_id = await turn(memory, md, "nutrition", "I'm vegetarian, by the way.")
        stored = await memory.conversations.GetConversation(
            memory_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=md
        )
        assert [m.status for m in stored.conversation.messages] == [chat_pb2.MESSAGE_STATUS_COMPLETE] * 2
        client = mesh_redis.connect(valkey.url, 2.0)
        try:

            async def dead() -> list[Any]:
                letters = await client.xrange(f"{stream}:dead")
                return [fields for _, fields in letters if fields.get("id") == answer_id]

            (letter,) = await eventually(dead, "the job in the dead letters")
        finally:
            await client.aclose()
        assert letter["attempts"] == "2"
        assert ("MalformedExtraction" if failure == "malformed" else "ModelApiStatus") in letter["error"]
        assert calls["count"] == 2  # tried again once, then given up
        assert await memories(memory, md, history=True) == []
    finally:
        await wait_closed(session)


async def test_a_turn_completes_when_its_job_cannot_be_queued(
    postgres: EmbeddedPostgres,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
    offline_model: OfflineModelServer,
) -> None:
    """Redis unreachable: the answer is stored and the call answers as always (the job is counted lost)."""
    memory = await start_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        postgres.url,
        NO_REDIS,
        extraction_enabled=True,
        openai_base_url=offline_model.base_url,
    )
    _, md = memory.user()
    unqueued = _unqueued()
    conversation_id, _, _ = await turn(memory, md, "nutrition", "I'm vegetarian, by the way.")
    stored = await memory.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=md
    )
    assert [m.status for m in stored.conversation.messages] == [chat_pb2.MESSAGE_STATUS_COMPLETE] * 2
    await eventually(lambda: asyncio.sleep(0, _unqueued() > unqueued), "the lost job counted")


def _unqueued() -> float:
    return REGISTRY.get_sample_value("athena_memory_fact_jobs_unqueued_total") or 0.0


async def test_a_person_who_turned_learning_off_has_nothing_learnt(learning: MemoryHarness) -> None:
    _, md = learning.user()
    settings = await learning.memory.GetMemorySettings(memory_pb2.GetMemorySettingsRequest(), metadata=md)
    assert settings.settings.learn_from_conversations  # on by default, before anything is stored
    off = account_pb2.MemorySettings(learn_from_conversations=False)
    stored = await learning.memory.SetMemorySettings(
        memory_pb2.SetMemorySettingsRequest(settings=off), metadata=md
    )
    assert not stored.settings.learn_from_conversations
    await turn(learning, md, "nutrition", "I'm vegetarian, by the way.")
    client = mesh_redis.connect(learning.settings.redis_url, 2.0)
    try:
        await eventually(
            lambda: _settled(
                client, learning.settings.extraction_stream, learning.settings.extraction_consumer_group, 1
            ),
            "the job handled",
        )
    finally:
        await client.aclose()
    assert await memories(learning, md, history=True) == []
    # Another person's setting is their own.
    _, other = learning.user()
    theirs = await learning.memory.GetMemorySettings(memory_pb2.GetMemorySettingsRequest(), metadata=other)
    assert theirs.settings.learn_from_conversations
    # On again, the next turn is learnt from.
    on = account_pb2.MemorySettings(learn_from_conversations=True)
    await learning.memory.SetMemorySettings(memory_pb2.SetMemorySettingsRequest(settings=on), metadata=md)
    await turn(learning, md, "nutrition", "I'm vegan now.")
    await learnt(learning, md, "vegan")
