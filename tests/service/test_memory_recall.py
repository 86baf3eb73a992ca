"""MemoryService: remember, recall (vector stage, keyword fallback), forget, list, ephemeral values."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from athena.account.v1 import account_pb2
from athena.memory.v1 import memory_pb2
from google.protobuf.duration_pb2 import Duration
from memory_fixtures import MemoryHarness, expect_status, memory_service, start_memory, start_turn_request

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.tokens import TokenVerifier

__all__ = ["memory_service"]

USER = account_pb2.MEMORY_SCOPE_USER
AGENT = account_pb2.MEMORY_SCOPE_AGENT
VECTOR = memory_pb2.RECALL_STAGE_VECTOR
KEYWORD = memory_pb2.RECALL_STAGE_KEYWORD
OFFLINE_MODEL = "athena-offline-embed"
Metadata = Sequence[tuple[str, str]]


async def remember(
    harness: MemoryHarness,
    md: Metadata,
    text: str,
    *,
    scope: int = USER,
    agent_id: str = "athena",
    key: str = "",
) -> memory_pb2.RememberResponse:
    return await harness.memory.Remember(
        memory_pb2.RememberRequest(text=text, scope=scope, agent_id=agent_id, key=key), metadata=md
    )


async def recall(
    harness: MemoryHarness, md: Metadata, query: str, agent_id: str = "athena", k: int = 0
) -> list[memory_pb2.RecallResult]:
    response = await harness.memory.Recall(
        memory_pb2.RecallRequest(query=query, agent_id=agent_id, k=k), metadata=md
    )
    return list(response.results)


async def test_question_recalls_the_fact_and_nothing_unrelated(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    await remember(memory_service, md, "my caloric goal is 2000 kcal")
    for unrelated in (
        "my dog is called Rex",
        "I live in Berlin",
        "the quarterly invoice for Acme is due on Friday",
    ):
        await remember(memory_service, md, unrelated)
    results = await recall(memory_service, md, "what is my caloric goal?")
    assert [r.memory.text for r in results] == ["my caloric goal is 2000 kcal"]
    assert results[0].stage == VECTOR
    assert results[0].similarity >= memory_service.settings.similarity_threshold
    assert results[0].score == pytest.approx(
        0.85 * results[0].similarity + 0.15, abs=1e-3
    )  # written just now


async def test_user_global_memories_reach_every_agent_and_agent_memories_only_theirs(
    memory_service: MemoryHarness,
) -> None:
    _, md = memory_service.user()
    await remember(memory_service, md, "my caloric goal is 2000 kcal", scope=USER, agent_id="nutrition")
    await remember(memory_service, md, "meal log: oatmeal at breakfast", scope=AGENT, agent_id="nutrition")
    for agent in ("nutrition", "focus", "athena"):
        assert [r.memory.text for r in await recall(memory_service, md, "my caloric goal", agent)] == [
            "my caloric goal is 2000 kcal"
        ]
    assert [
        r.memory.text for r in await recall(memory_service, md, "meal log oatmeal breakfast", "nutrition")
    ] == ["meal log: oatmeal at breakfast"]
    assert await recall(memory_service, md, "meal log oatmeal breakfast", "focus") == []
    # Another user sees none of it.
    _, other = memory_service.user()
    assert await recall(memory_service, other, "my caloric goal", "nutrition") == []


async def test_same_key_and_scope_replaces_instead_of_duplicating(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    first = await remember(memory_service, md, "my caloric goal is 2000 kcal", key="caloric_goal")
    second = await remember(memory_service, md, "my caloric goal is 1800 kcal", key="caloric_goal")
    assert first.created
    assert not second.created
    # A new version supersedes the old one, which is closed and kept as history (issue 17).
    assert second.memory.supersedes_id == first.memory.id
    assert not second.memory.HasField("valid_to")
    history = await memory_service.memory.GetMemoryHistory(
        memory_pb2.GetMemoryHistoryRequest(memory_id=first.memory.id), metadata=md
    )
    assert [v.text for v in history.versions] == [
        "my caloric goal is 1800 kcal",
        "my caloric goal is 2000 kcal",
    ]
    assert history.versions[1].HasField("valid_to")
    # The same text again (a retried call) is the same version.
    again = await remember(memory_service, md, "my caloric goal is 1800 kcal", key="caloric_goal")
    assert again.memory.id == second.memory.id
    assert not again.created
    # The same key in another scope is another memory.
    third = await remember(
        memory_service, md, "caloric goal for coaching", key="caloric_goal", scope=AGENT, agent_id="nutrition"
    )
    assert third.created
    # A keyless retry of the same text does not duplicate either.
    await remember(memory_service, md, "I run 5 km every Tuesday")
    retried = await remember(memory_service, md, "I run 5 km every Tuesday")
    assert not retried.created
    listed = await memory_service.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md)
    texts = sorted(m.text for m in listed.memories)
    assert texts == ["I run 5 km every Tuesday", "caloric goal for coaching", "my caloric goal is 1800 kcal"]


async def test_threshold_is_respected_and_keyword_search_takes_over(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    await remember(memory_service, md, "I ate oatmeal with berries for breakfast")
    await remember(memory_service, md, "my favourite colour is green")
    # The hashing embedder scores this question ≈ 0.42 against the fact: below the threshold.
    results = await recall(memory_service, md, "what did I eat for breakfast?")
    assert [r.memory.text for r in results] == ["I ate oatmeal with berries for breakfast"]
    assert results[0].stage == KEYWORD
    assert 0 < results[0].similarity <= 1
    # Nothing shares a word with this one.
    assert await recall(memory_service, md, "quantum chromodynamics lecture") == []


async def test_strict_threshold_sends_everything_to_keyword_stage(
    start_service: Callable[..., Any],
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    tmp_path: Path,
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
) -> None:
    strict = await start_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        postgres.url,
        valkey.url,
        similarity_thresholds={"athena-offline-embed": 0.99},
    )
    try:
        _, md = strict.user()
        await remember(strict, md, "my caloric goal is 2000 kcal")
        results = await recall(strict, md, "what is my caloric goal?")
        assert [r.stage for r in results] == [KEYWORD]
    finally:
        await strict.service.stop()


async def test_recency_decides_between_equally_similar_memories(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres
) -> None:
    user_id, md = memory_service.user()
    old = await remember(memory_service, md, "my caloric goal is 2000 kcal", key="goal_a")
    new = await remember(memory_service, md, "my caloric goal is 2000 kcal", key="goal_b")
    connection = await asyncpg.connect(postgres.url)
    try:
        async with connection.transaction():
            await connection.execute("SELECT set_config('athena.user_id', $1, true)", user_id)
            await connection.execute(
                "UPDATE vector_memory SET updated_at = updated_at - interval '30 days' WHERE id = $1",
                uuid.UUID(old.memory.id),
            )
    finally:
        await connection.close()
    results = await recall(memory_service, md, "what is my caloric goal?")
    assert [r.memory.id for r in results] == [new.memory.id, old.memory.id]
    assert results[0].similarity == pytest.approx(results[1].similarity, abs=1e-6)
    # One half-life: the recency term halves, so the gap is w·(1 − ½) = 0.075.
    assert results[0].score - results[1].score == pytest.approx(0.15 * 0.5, abs=1e-3)


async def test_forget_by_query_removes_from_both_stages(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    kept = await remember(memory_service, md, "my dog is called Rex")
    gone = await remember(memory_service, md, "my caloric goal is 2000 kcal")
    forgotten = await memory_service.memory.Forget(
        memory_pb2.ForgetRequest(query="my caloric goal", agent_id="athena"), metadata=md
    )
    assert list(forgotten.forgotten_ids) == [gone.memory.id]
    assert await recall(memory_service, md, "what is my caloric goal?") == []
    assert await recall(memory_service, md, "caloric kcal") == []  # keyword stage too
    listed = await memory_service.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md)
    assert [m.id for m in listed.memories] == [kept.memory.id]


async def test_forget_by_id_only_the_callers_memories(memory_service: MemoryHarness) -> None:
    _, alice = memory_service.user()
    _, bob = memory_service.user()
    memory = await remember(memory_service, alice, "my caloric goal is 2000 kcal")
    await expect_status(
        memory_service.memory.Forget(memory_pb2.ForgetRequest(memory_id=memory.memory.id), metadata=bob),
        grpc.StatusCode.NOT_FOUND,
    )
    done = await memory_service.memory.Forget(
        memory_pb2.ForgetRequest(memory_id=memory.memory.id), metadata=alice
    )
    assert list(done.forgotten_ids) == [memory.memory.id]
    await expect_status(
        memory_service.memory.Forget(memory_pb2.ForgetRequest(memory_id=memory.memory.id), metadata=alice),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await recall(memory_service, alice, "caloric goal") == []


async def test_list_memories_pages_newest_first(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    ids = [(await remember(memory_service, md, f"fact number {i}")).memory.id for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await memory_service.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_size=2, page_token=token), metadata=md
        )
        seen += [m.id for m in page.memories]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))


async def test_ephemeral_values_expire(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    _, other = memory_service.user()
    await memory_service.memory.PutEphemeral(
        memory_pb2.PutEphemeralRequest(
            namespace="calendar_freebusy",
            key="2025-01-01/7d",
            value_json='{"busy": []}',
            ttl=Duration(seconds=1),
        ),
        metadata=md,
    )
    request = memory_pb2.GetEphemeralRequest(namespace="calendar_freebusy", key="2025-01-01/7d")
    found = await memory_service.memory.GetEphemeral(request, metadata=md)
    assert found.found
    assert found.value_json == '{"busy": []}'
    assert not (await memory_service.memory.GetEphemeral(request, metadata=other)).found
    await asyncio.sleep(1.2)
    assert not (await memory_service.memory.GetEphemeral(request, metadata=md)).found


async def test_precomputed_embedding_is_used(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    vector = [0.0] * 384
    vector[7] = 1.0
    model = "athena-offline-embed"
    await memory_service.memory.Remember(
        memory_pb2.RememberRequest(
            text="zzz", scope=USER, agent_id="athena", embedding=vector, embedding_model=model
        ),
        metadata=md,
    )
    results = (
        await memory_service.memory.Recall(
            memory_pb2.RecallRequest(
                query="anything", agent_id="athena", embedding=vector, embedding_model=model
            ),
            metadata=md,
        )
    ).results
    assert [r.memory.text for r in results] == ["zzz"]
    assert results[0].similarity == pytest.approx(1.0, abs=1e-5)


async def test_a_precomputed_embedding_of_another_model_is_refused(memory_service: MemoryHarness) -> None:
    """Same dimension, another model: comparing it with the stored vectors would be silently wrong."""
    _, md = memory_service.user()
    vector = [0.5] * 384
    refused = await expect_status(
        memory_service.memory.Remember(
            memory_pb2.RememberRequest(
                text="zzz",
                scope=USER,
                agent_id="athena",
                embedding=vector,
                embedding_model="all-MiniLM-L6-v2",
            ),
            metadata=md,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "athena-offline-embed" in (refused.details() or "")
    await expect_status(
        memory_service.memory.Recall(
            memory_pb2.RecallRequest(
                query="zzz", agent_id="athena", embedding=vector, embedding_model="text-embedding-3-small"
            ),
            metadata=md,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    listed = await memory_service.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md)
    assert list(listed.memories) == []


async def test_a_turn_is_stored_and_recalled_for_in_one_call_and_stored_even_when_recall_fails(
    memory_service: MemoryHarness,
) -> None:
    _, md = memory_service.user()
    await memory_service.memory.Remember(
        memory_pb2.RememberRequest(text="my caloric goal is 2000 kcal", scope=USER, agent_id="athena"),
        metadata=md,
    )
    request = start_turn_request(agent_id="athena", text="what is my caloric goal?")
    request.recall.k = 3
    started = await memory_service.conversations.StartTurn(request, metadata=md)
    assert [result.memory.text for result in started.memories] == ["my caloric goal is 2000 kcal"]
    assert not started.recall_failed

    memory_service.embedder.down = True
    try:
        request = start_turn_request(agent_id="athena", text="and my goal for protein?")
        request.recall.k = 3
        degraded = await memory_service.conversations.StartTurn(request, metadata=md)
    finally:
        memory_service.embedder.down = False
    assert degraded.recall_failed
    assert list(degraded.memories) == []
    assert degraded.message.content == "and my goal for protein?"  # the message is stored all the same


async def test_a_turn_recalls_with_the_vector_its_caller_made_when_it_is_of_the_current_model(
    memory_service: MemoryHarness,
) -> None:
    """The orchestrator embeds a turn's text while it admits the turn: memory searches with that vector (it
    embeds nothing, so the recall works with the embedding model down), ignores one of another model (it
    embeds the text itself: here it cannot, so the recall fails, the turn does not), and refuses a broken
    vector of its own model."""
    _, md = memory_service.user()
    vector = [0.0] * 384
    vector[11] = 1.0
    await memory_service.memory.Remember(
        memory_pb2.RememberRequest(
            text="zzz", scope=USER, agent_id="athena", embedding=vector, embedding_model=OFFLINE_MODEL
        ),
        metadata=md,
    )

    def turn(text: str, embedding: list[float], model: str) -> memory_pb2.StartTurnRequest:
        request = start_turn_request(agent_id="athena", text=text)
        request.recall.k = 3
        request.recall.embedding.extend(embedding)
        request.recall.embedding_model = model
        return request

    memory_service.embedder.down = True
    try:
        searched = await memory_service.conversations.StartTurn(
            turn("anything at all", vector, OFFLINE_MODEL), metadata=md
        )
        assert [result.memory.text for result in searched.memories] == ["zzz"]
        assert searched.memories[0].similarity == pytest.approx(1.0, abs=1e-5)

        ignored = await memory_service.conversations.StartTurn(
            turn("anything else", vector, "text-embedding-3-small"), metadata=md
        )
        assert ignored.recall_failed  # it tried to embed the text itself
        assert ignored.message.content == "anything else"
    finally:
        memory_service.embedder.down = False

    broken = await expect_status(
        memory_service.conversations.StartTurn(
            turn("a third message", [0.0] * 384, OFFLINE_MODEL), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "recall.embedding" in (broken.details() or "")
    unnamed = await expect_status(
        memory_service.conversations.StartTurn(turn("a fourth message", vector, ""), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "recall.embedding_model" in (unnamed.details() or "")


async def test_a_turn_recalls_in_its_own_statement_what_a_recall_of_its_own_finds(
    memory_service: MemoryHarness,
) -> None:
    """With the caller's vector, StartTurn reads the recall's candidates in the statement that stores the
    turn: for every kind of question (current facts, the past, words only) it finds what Recall finds for
    the same text and vector, with the same scores, and nothing of another agent's or another user's."""
    _, md = memory_service.user()
    _, other = memory_service.user()
    await remember(memory_service, other, "my training plan has intervals on Tuesday")
    await remember(memory_service, md, "my training plan has long runs on Sunday")
    await remember(memory_service, md, "training plan: prefers mornings", scope=AGENT, agent_id="athena")
    await remember(memory_service, md, "training plan: oatmeal before", scope=AGENT, agent_id="nutrition")
    await remember(memory_service, md, "my caloric goal is 2000 kcal", key="caloric_goal")
    await remember(memory_service, md, "my caloric goal is 1800 kcal", key="caloric_goal")
    embedder = memory_service.embedder

    def hits(results: Sequence[memory_pb2.RecallResult]) -> list[tuple[str, str, float, float, int]]:
        return [
            (r.memory.id, r.memory.text, round(r.similarity, 5), round(r.score, 5), r.stage) for r in results
        ]

    expected = {
        "what is my training plan?": {
            "my training plan has long runs on Sunday",
            "training plan: prefers mornings",
        },
        "what was my caloric goal before?": {"my caloric goal is 2000 kcal", "my caloric goal is 1800 kcal"},
        "kcal": {"my caloric goal is 1800 kcal"},
    }
    for question, found in expected.items():
        (vector,) = await embedder.embed([question])
        recalled = await memory_service.memory.Recall(
            memory_pb2.RecallRequest(
                query=question, agent_id="athena", k=5, embedding=vector, embedding_model=OFFLINE_MODEL
            ),
            metadata=md,
        )
        request = start_turn_request(agent_id="athena", text=question)
        request.recall.k = 5
        request.recall.embedding.extend(vector)
        request.recall.embedding_model = OFFLINE_MODEL
        embedder.down = True  # searched with the caller's vector: the model is not needed
        try:
            started = await memory_service.conversations.StartTurn(request, metadata=md)
        finally:
            embedder.down = False
        assert started.message.content == question
        assert not started.recall_failed
        assert hits(started.memories) == hits(recalled.results), question
        assert {r.memory.text for r in started.memories} == found, question
