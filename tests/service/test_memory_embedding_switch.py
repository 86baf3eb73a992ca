"""Switching the embedding model on a populated database (issue 17): the memory service re-embeds every
memory and message in the background, resumably, and recall is never wrong in between: a query embedded by
the new model is compared only with the new model's vectors, and what has none yet is found by its words.

Model A is the offline hashing embedder at 384 dimensions, model B the same algorithm at 256 (another
model: vectors of different dimensions, never comparable)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
from athena.account.v1 import account_pb2
from athena.memory.v1 import memory_pb2
from conftest import StartService
from doubles.embedder import GatedEmbedder, HashingEmbedder
from memory_fixtures import MemoryHarness, start_memory
from polling import eventually as until
from privacy_fixtures import fresh_database
from test_memory_conversation_recall import ANSWER, DINNER, converse, recall

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.tokens import TokenVerifier

Metadata = tuple[tuple[str, str], ...]

FACTS = ("my caloric goal is 2000 kcal", "my dog is called Rex", "I live in Berlin")
GOAL_QUESTION = "what is my caloric goal?"
DINNER_QUESTION = "what do I cook for dinner on weeknights?"
NEW_GOAL = "my caloric goal is 1800 kcal now"
B = (256, "athena-offline-embed")


async def status(harness: MemoryHarness) -> memory_pb2.GetEmbeddingStatusResponse:
    return await harness.memory.GetEmbeddingStatus(
        memory_pb2.GetEmbeddingStatusRequest(), metadata=harness.service_metadata
    )


async def stale_rows(superuser_url: str, dimension: int) -> int:
    """Memories and messages with text but without a vector of the model at `dimension`."""
    connection = await asyncpg.connect(superuser_url)
    try:
        return int(
            await connection.fetchval(
                """WITH current AS (SELECT id FROM embedding_models WHERE dimension = $1)
                   SELECT (SELECT count(*) FROM vector_memory
                           WHERE embedding_model IS DISTINCT FROM (SELECT id FROM current)
                              OR vector_dims(embedding) <> $1)
                        + (SELECT count(*) FROM messages
                           WHERE embedding_model IS DISTINCT FROM (SELECT id FROM current)
                              OR (embedding IS NOT NULL AND vector_dims(embedding) <> $1))""",
                dimension,
            )
        )
    finally:
        await connection.close()


async def assert_recall_is_right(harness: MemoryHarness, md: Metadata, stage: int) -> None:
    """The goal question finds the goal and nothing else; the dinner question the dinner conversation; each
    by the stage expected."""
    goal = await harness.memory.Recall(
        memory_pb2.RecallRequest(query=GOAL_QUESTION, agent_id="athena"), metadata=md
    )
    assert [r.memory.text for r in goal.results] == [FACTS[0]]
    assert goal.results[0].stage == stage
    dinner = await recall(harness, md, DINNER_QUESTION)
    assert dinner[0].message.content == DINNER
    assert {r.message.content for r in dinner} <= {DINNER, ANSWER}
    assert dinner[0].stage == stage


async def test_switching_the_embedding_model_reembeds_without_a_wrong_recall(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
) -> None:
    url, superuser_url = await fresh_database(postgres)

    async def start(embedder: HashingEmbedder) -> MemoryHarness:
        return await start_memory(
            start_service,
            verifier,
            make_token,
            tmp_path,
            url,
            valkey.url,
            embedder=embedder,
            reembed_sweep=True,
            reembed_batch_size=4,
            reembed_idle_seconds=0.05,
        )

    a = await start(HashingEmbedder(384))
    users = sorted((a.user() for _ in range(3)), key=lambda user: user[0])  # the sweep's order
    for _, md in users:
        for fact in FACTS:
            await a.memory.Remember(
                memory_pb2.RememberRequest(text=fact, scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena"),
                metadata=md,
            )
        await converse(a, md, "nutrition", DINNER, ANSWER)

    async def embedded_by_a() -> bool:
        return await stale_rows(superuser_url, 384) == 0

    await until(embedded_by_a, "model A embedded every message")
    for _, md in users:
        await assert_recall_is_right(a, md, memory_pb2.RECALL_STAGE_VECTOR)
    await a.service.stop()

    # Model B, held after its first user (5 texts in batches of 4: two embeddings calls); what the service
    # embeds on a caller's behalf (queries, a new memory) is let through.
    gated = GatedEmbedder(*B, allowed=2, free=(GOAL_QUESTION, DINNER_QUESTION, NEW_GOAL))
    b = await start(gated)

    async def first_user_done() -> bool:
        progress = await status(b)
        return progress.users_done == 1 and gated.held == 1

    await until(first_user_done, "model B re-embedded the first user and is held at the second")
    progress = await status(b)
    assert (progress.model, progress.dimension) == ("athena-offline-embed", 256)
    assert progress.users_total == 3
    assert not progress.finished
    assert progress.embedded == 5
    assert progress.leased_by
    # In between: the first user is recalled by B's vectors, the others by their words; never by a
    # comparison of B's query with A's vectors (which would also fail: 256 against 384 dimensions).
    await assert_recall_is_right(b, users[0][1], memory_pb2.RECALL_STAGE_VECTOR)
    for _, md in users[1:]:
        await assert_recall_is_right(b, md, memory_pb2.RECALL_STAGE_KEYWORD)
    # A memory written now is B's at once.
    await b.memory.Remember(
        memory_pb2.RememberRequest(text=NEW_GOAL, scope=account_pb2.MEMORY_SCOPE_AGENT, agent_id="focus"),
        metadata=users[2][1],
    )
    written = await b.memory.Recall(
        memory_pb2.RecallRequest(query=GOAL_QUESTION, agent_id="focus"), metadata=users[2][1]
    )
    assert written.results[0].memory.text == NEW_GOAL
    assert written.results[0].stage == memory_pb2.RECALL_STAGE_VECTOR
    assert written.results[1].memory.text == FACTS[0]  # by its words, after the vector hit
    assert written.results[1].stage == memory_pb2.RECALL_STAGE_KEYWORD
    await b.service.stop()  # mid-way: the held call is cancelled, the second user not recorded as done

    resumed_embedder = HashingEmbedder(*B)
    resumed = await start(resumed_embedder)
    assert (await status(resumed)).users_done == 1, "the cursor survived the restart"

    async def finished() -> bool:
        return (await status(resumed)).finished

    await until(finished, "the re-embedding finished")
    progress = await status(resumed)
    assert progress.users_done == 3
    assert progress.users_total == 3
    assert progress.embedded == 15  # 5 texts a user, each embedded once by the job
    assert await stale_rows(superuser_url, 256) == 0
    for _, md in users:
        await assert_recall_is_right(resumed, md, memory_pb2.RECALL_STAGE_VECTOR)
