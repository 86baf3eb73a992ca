"""Memory holds what people say sealed with their own key (issue 14): nothing readable in the database, a
ciphertext moved between rows or users does not open, erasure shreds the key first, keyword search works
on blind tokens, and existing databases are encrypted in place."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from memory_fixtures import (
    DIMENSION,
    MemoryHarness,
    expect_status,
    local_kms,
    memory_service,
    start_memory,
    start_turn_request,
)
from privacy_fixtures import dump_database, files_holding, fresh_database

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from memory.migrate import MIGRATIONS_DIR, apply_migrations
from mesh import migrations
from mesh.keystore import rewrap_keys
from mesh.kms import LocalKeyFile, add_key
from mesh.tokens import TokenVerifier

__all__ = ["memory_service"]

Metadata = tuple[tuple[str, str], ...]


def _secret_word() -> str:
    return f"zq{secrets.token_hex(5)}"


async def _turn(harness: MemoryHarness, md: Metadata, text: str, answer: str) -> str:
    """A turn with its answer, as the orchestrator stores it; returns the conversation id."""
    start = await harness.conversations.StartTurn(
        start_turn_request(agent_id="athena", text=text), metadata=md
    )
    await harness.conversations.AppendAssistantMessage(
        memory_pb2.AppendAssistantMessageRequest(
            conversation_id=start.conversation.id,
            message=chat_pb2.Message(
                id=start.answer_id,
                role=chat_pb2.ROLE_ASSISTANT,
                agent_id="athena",
                content=answer,
                tool_calls=[
                    chat_pb2.ToolCallRecord(
                        call_id="c1", name="remember", arguments_json=f'{{"text": "{answer}"}}'
                    )
                ],
            ),
        ),
        metadata=md,
    )
    return start.conversation.id


async def _remember(harness: MemoryHarness, md: Metadata, text: str, key: str = "") -> str:
    response = await harness.memory.Remember(
        memory_pb2.RememberRequest(
            text=text, scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena", key=key
        ),
        metadata=md,
    )
    return response.memory.id


async def _superuser(postgres: EmbeddedPostgres) -> asyncpg.Connection:
    return await asyncpg.connect(postgres.superuser_url)


async def test_what_a_user_said_appears_nowhere_in_the_database(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres
) -> None:
    _, md = memory_service.user()
    said, answered, remembered, key = (_secret_word() for _ in range(4))
    await _turn(memory_service, md, f"I secretly collect {said} stamps", f"Noted: {answered} it is")
    await _remember(memory_service, md, f"my favourite stamp is the {remembered}", key=f"stamps.{key}")
    # Everything still reads back for its owner...
    listed = await memory_service.conversations.ListConversations(
        memory_pb2.ListConversationsRequest(), metadata=md
    )
    assert said in listed.conversations[0].title
    # ...and nothing of it is in a superuser's dump of every table, nor in the files of the database
    # (tables, indexes, write-ahead log).
    superuser = await _superuser(postgres)
    try:
        await superuser.execute("CHECKPOINT")
    finally:
        await superuser.close()
    dump = (await dump_database(postgres.superuser_url)).lower()
    words = (said, answered, remembered, key)
    for word in words:
        assert word not in dump
    assert await asyncio.to_thread(files_holding, Path(postgres.data_dir), words) == []


async def test_a_ciphertext_moved_to_another_users_row_does_not_open(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    _, alice = memory_service.user()
    _, bob = memory_service.user()
    secret = _secret_word()
    alice_conversation = await _turn(memory_service, alice, f"my bank pin is {secret}", "ok")
    bob_conversation = await _turn(memory_service, bob, "hello", "hi")
    superuser = await _superuser(postgres)
    try:
        # An attacker with write access copies Alice's sealed title into Bob's conversation.
        await superuser.execute(
            "UPDATE conversations SET title = (SELECT title FROM conversations WHERE id = $1) WHERE id = $2",
            uuid.UUID(alice_conversation),
            uuid.UUID(bob_conversation),
        )
    finally:
        await superuser.close()
    with caplog.at_level(logging.ERROR):
        error = await expect_status(
            memory_service.conversations.GetConversation(
                memory_pb2.GetConversationRequest(conversation_id=bob_conversation), metadata=bob
            ),
            grpc.StatusCode.DATA_LOSS,
        )
    assert "integrity" in (error.details() or "")
    assert secret not in (error.details() or "")
    assert "integrity error" in caplog.text
    assert secret not in caplog.text
    # Alice's own conversation is intact.
    mine = await memory_service.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=alice_conversation), metadata=alice
    )
    assert secret in mine.conversation.title


async def test_erasure_destroys_the_key_first_and_restored_rows_stay_sealed(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres
) -> None:
    user_id, md = memory_service.user()
    secret = _secret_word()
    conversation_id = await _turn(memory_service, md, f"my diagnosis is {secret}", "take care")
    await _remember(memory_service, md, f"diagnosed with {secret}")
    superuser = await _superuser(postgres)
    try:
        # A backup taken just before the erasure: the user's rows (not the key table).
        backup = {
            table: await superuser.fetch(f"SELECT * FROM {table} WHERE {column} = $1", uuid.UUID(user_id))  # noqa: S608
            for table, column in (
                ("users", "id"),
                ("conversations", "user_id"),
                ("messages", "user_id"),
                ("vector_memory", "user_id"),
            )
        }
        purged = await memory_service.user_data.PurgeUser(memory_pb2.PurgeUserRequest(), metadata=md)
        assert purged.data_key_destroyed
        assert purged.deleted_rows >= 4
        assert await superuser.fetchval("SELECT count(*) FROM data_keys WHERE owner = $1", user_id) == 0

        # An erased account is not set up again by a token that outlived it.
        await expect_status(
            memory_service.memory.Remember(
                memory_pb2.RememberRequest(
                    text="still here?", scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena"
                ),
                metadata=md,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        await expect_status(
            memory_service.conversations.StartTurn(
                start_turn_request(agent_id="athena", text="hello again"), metadata=md
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )

        # The backup restored (and the account set up anew, with a new key): the old rows do not open.
        await superuser.execute("DELETE FROM erased_users WHERE id = $1", uuid.UUID(user_id))
        for table, rows in backup.items():
            for row in rows:
                columns = [name for name in dict(row) if name != "seq"]
                await superuser.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
                    f"({', '.join(f'${i + 1}' for i in range(len(columns)))})",
                    *(row[name] for name in columns),
                )
    finally:
        await superuser.close()
    await _remember(memory_service, md, "a new beginning")  # sets the account up with a new key
    error = await expect_status(
        memory_service.conversations.GetConversation(
            memory_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=md
        ),
        grpc.StatusCode.DATA_LOSS,
    )
    assert secret not in (error.details() or "")


async def test_keyword_fallback_finds_a_word_and_only_the_owners(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres
) -> None:
    alice_id, alice = memory_service.user()
    bob_id, bob = memory_service.user()
    await _remember(memory_service, alice, "I ate oatmeal with berries for breakfast")
    await _remember(memory_service, bob, "I ate oatmeal with berries for breakfast")
    question = memory_pb2.RecallRequest(query="what did I eat for breakfast?", agent_id="athena")
    for md in (alice, bob):
        (hit,) = (await memory_service.memory.Recall(question, metadata=md)).results
        assert hit.stage == memory_pb2.RECALL_STAGE_KEYWORD
        assert hit.memory.text == "I ate oatmeal with berries for breakfast"
    _, carol = memory_service.user()
    assert not (await memory_service.memory.Recall(question, metadata=carol)).results
    superuser = await _superuser(postgres)
    try:
        # The same sentence gives each user other tokens: the index does not link people.
        rows = await superuser.fetch(
            "SELECT words FROM vector_memory WHERE user_id = ANY($1::uuid[])",
            [uuid.UUID(alice_id), uuid.UUID(bob_id)],
        )
    finally:
        await superuser.close()
    assert not set(rows[0]["words"]) & set(rows[1]["words"])


async def test_existing_rows_are_encrypted_in_place(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """A database of the release before encryption (memory_0001, memory_0002) with plain rows upgrades
    when the service starts, and keeps every conversation and memory."""
    url, superuser_url = await fresh_database(postgres)
    old = tmp_path / "old-migrations"
    old.mkdir()
    for name in (
        "memory_0001_schema.py",
        "memory_0002_turn_leases.sql",
        "memory_0002_turn_leases.rollback.sql",
    ):
        shutil.copy(MIGRATIONS_DIR / name, old / name)
    await asyncio.to_thread(
        migrations.apply_migrations, url, old, variables={"embedding_dimension": str(DIMENSION)}
    )
    user_id = str(uuid.uuid4())
    secret = _secret_word()
    superuser = await asyncpg.connect(superuser_url)
    try:
        conversation = uuid.uuid4()
        await superuser.execute("INSERT INTO users (id) VALUES ($1)", uuid.UUID(user_id))
        await superuser.execute("INSERT INTO agents (id, name) VALUES ('athena', 'Athena')")
        await superuser.execute(
            "INSERT INTO conversations (id, user_id, agent_id, title) VALUES ($1, $2, 'athena', $3)",
            conversation,
            uuid.UUID(user_id),
            f"about {secret}",
        )
        await superuser.execute(
            """INSERT INTO messages (id, conv_id, user_id, role, agent_id, content, tool_call)
               VALUES ($1, $2, $3, 'user', 'athena', $4, '[]')""",
            uuid.uuid4(),
            conversation,
            uuid.UUID(user_id),
            f"tell me about {secret}",
        )
        await superuser.execute(
            """INSERT INTO vector_memory (user_id, agent_scope, agent_id, key, text, embedding)
               VALUES ($1, 'user', 'athena', 'hobby', $2, $3::text::vector)""",
            uuid.UUID(user_id),
            f"I love {secret} and breakfast",
            "[" + ",".join(["0.1"] * DIMENSION) + "]",
        )
    finally:
        await superuser.close()

    harness = await start_memory(start_service, verifier, make_token, tmp_path, url, valkey.url)
    md = (("authorization", f"Bearer {make_token(user_id)}"),)
    got = await harness.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=str(conversation)), metadata=md
    )
    assert got.conversation.title == f"about {secret}"
    assert [m.content for m in got.conversation.messages] == [f"tell me about {secret}"]
    listed = await harness.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md)
    assert [(m.text, m.key) for m in listed.memories] == [(f"I love {secret} and breakfast", "hobby")]
    hits = await harness.memory.Recall(
        memory_pb2.RecallRequest(query=f"{secret}?", agent_id="athena"), metadata=md
    )
    assert [h.memory.text for h in hits.results] == [f"I love {secret} and breakfast"]
    dump = await dump_database(superuser_url)
    assert secret not in dump
    assert apply_migrations(url, DIMENSION, local_kms(tmp_path)) == []


async def test_rewrap_keys_moves_every_data_key_under_a_new_kek_online(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """One deployment (its own database, its KMS keys): a KEK added, every data key moved under it while
    the service runs, which goes on reading and writing."""
    url, superuser_url = await fresh_database(postgres)
    harness = await start_memory(start_service, verifier, make_token, tmp_path, url, valkey.url)
    user_id, md = harness.user()
    secret = _secret_word()
    conversation_id = await _turn(harness, md, f"rotate {secret}", "ok")
    directory = tmp_path / "kms-keys"  # the service's own local KMS (memory_fixtures.local_kms)
    new_kek = add_key(directory, datetime(2100, 1, 1, tzinfo=UTC))
    assert await asyncio.to_thread(rewrap_keys, url, LocalKeyFile.load(directory), "memory") == 0
    superuser = await asyncpg.connect(superuser_url)
    try:
        assert await superuser.fetchval("SELECT kek_id FROM data_keys WHERE owner = $1", user_id) == new_kek
    finally:
        await superuser.close()
    got = await harness.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=md
    )
    assert secret in got.conversation.title
    await _turn(harness, harness.user()[1], "a new user after the rotation", "welcome")
