"""UserDataService: export everything of the caller; purge the caller from PostgreSQL and Redis only."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from google.protobuf.duration_pb2 import Duration
from memory_fixtures import MemoryHarness, memory_service, start_turn_request

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey

__all__ = ["memory_service"]

USER_TABLES = {
    "users": "id",
    "user_agents": "user_id",
    "conversations": "user_id",
    "messages": "user_id",
    "vector_memory": "user_id",
}


async def populate(harness: MemoryHarness, md: tuple[tuple[str, str], ...], who: str) -> None:
    # The harness synced the shipped catalog: athena and nutrition exist.
    started = await harness.conversations.StartTurn(
        start_turn_request(agent_id="athena", text=f"hi, I am {who}"), metadata=md
    )
    await harness.conversations.AppendAssistantMessage(
        memory_pb2.AppendAssistantMessageRequest(
            conversation_id=started.conversation.id,
            message=chat_pb2.Message(id=str(uuid.uuid4()), agent_id="athena", content=f"hello {who}"),
        ),
        metadata=md,
    )
    await harness.memory.Remember(
        memory_pb2.RememberRequest(
            text=f"{who} likes tea", scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena"
        ),
        metadata=md,
    )
    await harness.memory.Remember(
        memory_pb2.RememberRequest(
            text=f"{who} ate soup", scope=account_pb2.MEMORY_SCOPE_AGENT, agent_id="nutrition"
        ),
        metadata=md,
    )
    await harness.agents.SetAgentEnabled(
        memory_pb2.SetAgentEnabledRequest(agent_id="nutrition", enabled=False), metadata=md
    )
    for namespace in ("calendar_freebusy", "wearable_stats"):
        await harness.memory.PutEphemeral(
            memory_pb2.PutEphemeralRequest(
                namespace=namespace, key="k", value_json="{}", ttl=Duration(seconds=60)
            ),
            metadata=md,
        )


async def rows_of(postgres: EmbeddedPostgres, user_id: str) -> dict[str, int]:
    """Row counts per table as the superuser (who bypasses row-level security)."""
    connection = await asyncpg.connect(postgres.superuser_url)
    try:
        return {
            table: await connection.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1",  # noqa: S608 (fixed names)
                uuid.UUID(user_id),
            )
            for table, column in USER_TABLES.items()
        }
    finally:
        await connection.close()


async def redis_keys(valkey: EmbeddedValkey, user_id: str) -> list[str]:
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=f"athena:eph:{user_id}:*")]
    finally:
        await client.aclose()


async def test_export_streams_agents_conversations_and_memories(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    await populate(memory_service, md, "alice")
    _, other = memory_service.user()
    await populate(memory_service, other, "bob")
    records = [
        r
        async for r in memory_service.user_data.ExportUserData(
            memory_pb2.ExportUserDataRequest(), metadata=md
        )
    ]
    kinds = [r.WhichOneof("record") for r in records]
    assert kinds.index("agent") < kinds.index("conversation") < kinds.index("memory")
    agents = {r.agent.id: r.agent.enabled for r in records if r.HasField("agent")}
    assert agents["athena"] is True
    assert agents["nutrition"] is False
    conversations = [r.conversation for r in records if r.HasField("conversation")]
    assert len(conversations) == 1
    assert [m.content for m in conversations[0].messages] == ["hi, I am alice", "hello alice"]
    memories = sorted(r.memory.text for r in records if r.HasField("memory"))
    assert memories == ["alice ate soup", "alice likes tea"]
    assert "bob" not in str(records)


async def test_purge_erases_the_user_everywhere_and_nobody_else(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres, valkey: EmbeddedValkey
) -> None:
    alice_id, alice = memory_service.user()
    bob_id, bob = memory_service.user()
    await populate(memory_service, alice, "alice")
    await populate(memory_service, bob, "bob")
    before = await rows_of(postgres, alice_id)
    assert all(before.values()), before
    bob_before = await rows_of(postgres, bob_id)

    purged = await memory_service.user_data.PurgeUser(memory_pb2.PurgeUserRequest(), metadata=alice)
    assert purged.deleted_rows == sum(before.values())
    assert purged.deleted_keys == 2
    assert set((await rows_of(postgres, alice_id)).values()) == {0}
    assert await redis_keys(valkey, alice_id) == []
    assert await rows_of(postgres, bob_id) == bob_before
    assert len(await redis_keys(valkey, bob_id)) == 2

    again = await memory_service.user_data.PurgeUser(memory_pb2.PurgeUserRequest(), metadata=alice)
    assert (again.deleted_rows, again.deleted_keys) == (0, 0)


async def test_forget_ephemeral_empties_one_persons_namespaces_for_the_service_key_only(
    memory_service: MemoryHarness, valkey: EmbeddedValkey
) -> None:
    user_id, md = memory_service.user()
    other_id, other = memory_service.user()
    await populate(memory_service, md, "alice")
    await populate(memory_service, other, "bob")
    request = memory_pb2.ForgetEphemeralRequest(user_id=user_id, namespaces=["calendar_freebusy"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await memory_service.memory.ForgetEphemeral(request, metadata=md)  # a person's token is not enough
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = await memory_service.memory.ForgetEphemeral(request, metadata=memory_service.service_metadata)
    assert answer.deleted == 1
    assert [key.split(":")[3] for key in await redis_keys(valkey, user_id)] == ["wearable_stats"]
    assert len(await redis_keys(valkey, other_id)) == 2  # nobody else's
