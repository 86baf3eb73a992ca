"""ConversationService and AgentService against a real server, PostgreSQL and row-level security."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from memory_fixtures import MemoryHarness, expect_status, memory_service, shipped_agents, start_turn_request
from polling import eventually

from devstack.postgres import EmbeddedPostgres
from memory.database import Database, SessionConnection, init_connection
from mesh.errors import Unavailable
from mesh.postgres import close_pool, open_pool

__all__ = ["memory_service"]

CATALOG = [
    memory_pb2.AgentDefinition(
        id="athena",
        name="Athena",
        description="Generalist",
        system_prompt="You are Athena.",
        user_prompt="{message}",
        model="offline",
        accent_token="accent-blue",
        enabled=True,
    ),
    memory_pb2.AgentDefinition(
        id="nutrition", name="Nutrition coach", accent_token="accent-green", enabled=True
    ),
    memory_pb2.AgentDefinition(id="focus", name="Focus coach", accent_token="accent-purple", enabled=True),
]


async def test_first_user_message_starts_a_conversation_titled_after_it(
    memory_service: MemoryHarness,
) -> None:
    _, md = memory_service.user()
    text = "Plan my meals for the week, I want more protein and fewer snacks in the afternoon please"
    first = await memory_service.conversations.StartTurn(
        start_turn_request(agent_id="nutrition", text=text), metadata=md
    )
    assert first.conversation.id
    assert first.conversation.agent_id == "nutrition"
    assert text.startswith(first.conversation.title.rstrip("…"))
    assert len(first.conversation.title) <= 61
    assert first.message.role == chat_pb2.ROLE_USER
    assert not first.replayed

    reply = chat_pb2.Message(
        id=str(uuid.uuid4()),
        agent_id="nutrition",
        content="Noted.",
        tool_calls=[
            chat_pb2.ToolCallRecord(
                call_id="c1",
                name="remember_memory",
                arguments_json='{"text": "x"}',
                result_json='{"ok": true}',
            ),
            chat_pb2.ToolCallRecord(
                call_id="c2",
                name="handoff_to_focus",
                arguments_json='{"reason": "planning"}',
                result_json='{"handoff": "focus"}',
                handoff=chat_pb2.Handoff(from_agent_id="nutrition", to_agent_id="focus", reason="planning"),
            ),
        ],
    )
    stored = await memory_service.conversations.AppendAssistantMessage(
        memory_pb2.AppendAssistantMessageRequest(conversation_id=first.conversation.id, message=reply),
        metadata=md,
    )
    assert stored.message.id == reply.id
    assert stored.message.status == chat_pb2.MESSAGE_STATUS_COMPLETE

    got = await memory_service.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id), metadata=md
    )
    assert [m.role for m in got.conversation.messages] == [chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT]
    assert got.conversation.messages[1].tool_calls[0].name == "remember_memory"
    assert got.conversation.messages[1].tool_calls[0].result_json == '{"ok": true}'
    assert not got.conversation.messages[1].tool_calls[0].HasField("handoff")
    assert got.conversation.messages[1].tool_calls[1].handoff.to_agent_id == "focus"
    last = await memory_service.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id, last_messages=1), metadata=md
    )
    assert [m.content for m in last.conversation.messages] == ["Noted."]

    # The next turn gets the history before its own message, and only the last messages asked for.
    second = await memory_service.conversations.StartTurn(
        start_turn_request(
            agent_id="nutrition",
            text="and on Sunday?",
            conversation_id=first.conversation.id,
            history_messages=1,
        ),
        metadata=md,
    )
    assert second.conversation.title == first.conversation.title
    assert [m.content for m in second.history] == ["Noted."]
    everything = await memory_service.conversations.StartTurn(
        start_turn_request(
            agent_id="nutrition", text="thanks", conversation_id=first.conversation.id, history_messages=50
        ),
        metadata=md,
    )
    assert [m.content for m in everything.history] == [text, "Noted.", "and on Sunday?"]


async def test_retried_client_request_id_replays_the_original_message(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    request = start_turn_request(agent_id="athena", text="hello", client_request_id="req-1")
    first = await memory_service.conversations.StartTurn(request, metadata=md)
    again = await memory_service.conversations.StartTurn(request, metadata=md)
    assert again.replayed
    assert again.message.id == first.message.id
    assert again.conversation.id == first.conversation.id
    got = await memory_service.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id), metadata=md
    )
    assert len(got.conversation.messages) == 1
    listed = await memory_service.conversations.ListConversations(
        memory_pb2.ListConversationsRequest(), metadata=md
    )
    assert [c.id for c in listed.conversations] == [first.conversation.id], "a repeat creates none"
    # The same client request id of another user is another request.
    _, other = memory_service.user()
    theirs = await memory_service.conversations.StartTurn(request, metadata=other)
    assert not theirs.replayed


async def test_a_repeated_turn_touches_no_conversation_and_tries_at_once_leave_one(
    memory_service: MemoryHarness,
) -> None:
    """A turn is stored outside a transaction, so its statement alone must store nothing on a repeat: a
    continued conversation is not touched again, and of tries of one new-conversation request sent at once,
    one conversation stays (the others' are removed), holding the one message."""
    _, md = memory_service.user()
    conversations = memory_service.conversations
    first = await conversations.StartTurn(start_turn_request(agent_id="athena", text="one"), metadata=md)
    request = start_turn_request(
        conversation_id=first.conversation.id, agent_id="athena", text="two", client_request_id="again"
    )
    await conversations.StartTurn(request, metadata=md)
    before = await conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id), metadata=md
    )
    assert (await conversations.StartTurn(request, metadata=md)).replayed
    after = await conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id), metadata=md
    )
    assert after.conversation.updated_at == before.conversation.updated_at

    at_once = start_turn_request(agent_id="athena", text="hello", client_request_id="at-once")
    starts = await asyncio.gather(*(conversations.StartTurn(at_once, metadata=md) for _ in range(6)))
    assert len({start.message.id for start in starts}) == 1
    assert sum(not start.replayed for start in starts) == 1
    listed = await conversations.ListConversations(memory_pb2.ListConversationsRequest(), metadata=md)
    assert sorted(c.id for c in listed.conversations) == sorted(
        {first.conversation.id, starts[0].conversation.id}
    )


async def test_conversations_list_newest_first_across_pages(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    ids = []
    for i in range(5):
        response = await memory_service.conversations.StartTurn(
            start_turn_request(agent_id="athena", text=f"conversation {i}"), metadata=md
        )
        ids.append(response.conversation.id)
    # Activity moves a conversation to the top.
    await memory_service.conversations.StartTurn(
        start_turn_request(conversation_id=ids[1], agent_id="athena", text="again"),
        metadata=md,
    )
    seen: list[str] = []
    token = ""
    while True:
        page = await memory_service.conversations.ListConversations(
            memory_pb2.ListConversationsRequest(page_size=2, page_token=token), metadata=md
        )
        assert len(page.conversations) <= 2
        assert all(not c.messages for c in page.conversations)
        seen += [c.id for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert seen == [ids[1], ids[4], ids[3], ids[2], ids[0]]


async def test_another_users_conversation_is_not_found(memory_service: MemoryHarness) -> None:
    _, alice = memory_service.user()
    _, bob = memory_service.user()
    started = await memory_service.conversations.StartTurn(
        start_turn_request(agent_id="athena", text="private"), metadata=alice
    )
    conv_id = started.conversation.id
    conversations = memory_service.conversations
    await expect_status(
        conversations.GetConversation(
            memory_pb2.GetConversationRequest(conversation_id=conv_id), metadata=bob
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        conversations.StartTurn(
            start_turn_request(conversation_id=conv_id, agent_id="athena", text="hi"),
            metadata=bob,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        conversations.DeleteConversation(
            memory_pb2.DeleteConversationRequest(conversation_id=conv_id), metadata=bob
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = await conversations.ListConversations(memory_pb2.ListConversationsRequest(), metadata=bob)
    assert conv_id not in [c.id for c in listed.conversations]
    # Alice can delete it; then it is gone for her too.
    await conversations.DeleteConversation(
        memory_pb2.DeleteConversationRequest(conversation_id=conv_id), metadata=alice
    )
    await expect_status(
        conversations.GetConversation(
            memory_pb2.GetConversationRequest(conversation_id=conv_id), metadata=alice
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_calls_without_a_token_are_unauthenticated(memory_service: MemoryHarness) -> None:
    await expect_status(
        memory_service.conversations.ListConversations(memory_pb2.ListConversationsRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_agent_catalog_with_per_user_enabled_state(memory_service: MemoryHarness) -> None:
    _, alice = memory_service.user()
    _, bob = memory_service.user()
    agents = memory_service.agents
    service = memory_service.service_metadata
    # The catalog is global: put back the one every memory test starts with.
    try:
        await check_catalog(memory_service, agents, service, alice, bob)
    finally:
        await agents.SyncAgents(memory_pb2.SyncAgentsRequest(agents=shipped_agents()), metadata=service)


async def test_sync_agents_needs_the_service_key(memory_service: MemoryHarness) -> None:
    _, alice = memory_service.user()
    await expect_status(
        memory_service.agents.SyncAgents(memory_pb2.SyncAgentsRequest(agents=CATALOG), metadata=alice),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def check_catalog(
    memory_service: MemoryHarness,
    agents: memory_pb2_grpc.AgentServiceStub,
    service: tuple[tuple[str, str], ...],
    alice: tuple[tuple[str, str], ...],
    bob: tuple[tuple[str, str], ...],
) -> None:
    await agents.SyncAgents(
        memory_pb2.SyncAgentsRequest(
            agents=[*CATALOG, memory_pb2.AgentDefinition(id="retired", name="Retired", enabled=True)]
        ),
        metadata=service,
    )
    await agents.SyncAgents(memory_pb2.SyncAgentsRequest(agents=CATALOG), metadata=service)

    listed = await agents.ListAgents(memory_pb2.ListAgentsRequest(), metadata=alice)
    ids = [a.id for a in listed.agents]
    assert ids[:3] == ["athena", "nutrition", "focus"]
    state = {a.id: a.enabled for a in listed.agents}
    assert [state["athena"], state["nutrition"], state["focus"]] == [True, True, True]
    assert state["retired"] is False  # missing from the catalog: disabled

    changed = await agents.SetAgentEnabled(
        memory_pb2.SetAgentEnabledRequest(agent_id="focus", enabled=False), metadata=alice
    )
    assert changed.agent.id == "focus"
    assert not changed.agent.enabled
    mine = {
        a.id: a.enabled
        for a in (await agents.ListAgents(memory_pb2.ListAgentsRequest(), metadata=alice)).agents
    }
    theirs = {
        a.id: a.enabled
        for a in (await agents.ListAgents(memory_pb2.ListAgentsRequest(), metadata=bob)).agents
    }
    assert mine["focus"] is False
    assert theirs["focus"] is True

    # A turn starts only with an agent its user may talk to; the others are the handoff candidates.
    await expect_status(
        memory_service.conversations.StartTurn(
            start_turn_request(agent_id="focus", text="hi"), metadata=alice
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect_status(
        memory_service.conversations.StartTurn(
            start_turn_request(agent_id="retired", text="hi"), metadata=alice
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    started = await memory_service.conversations.StartTurn(
        start_turn_request(agent_id="athena", text="hi"), metadata=alice
    )
    assert list(started.enabled_agent_ids) == ["athena", "nutrition"]
    started = await memory_service.conversations.StartTurn(
        start_turn_request(agent_id="focus", text="hi"), metadata=bob
    )
    assert list(started.enabled_agent_ids) == ["athena", "nutrition", "focus"]

    await expect_status(
        agents.SetAgentEnabled(
            memory_pb2.SetAgentEnabledRequest(agent_id="nobody", enabled=True), metadata=alice
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_row_level_security_hides_other_users_rows_without_any_where_clause(
    memory_service: MemoryHarness, postgres: EmbeddedPostgres
) -> None:
    """The application's own `WHERE user_id = ...` is not what keeps users apart."""
    alice_id, alice = memory_service.user()
    bob_id, bob = memory_service.user()
    for md, who in ((alice, "alice"), (bob, "bob")):
        await memory_service.conversations.StartTurn(
            start_turn_request(agent_id="athena", text=f"hello from {who}"), metadata=md
        )
        await memory_service.memory.Remember(
            memory_pb2.RememberRequest(
                text=f"{who} likes tea", scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena"
            ),
            metadata=md,
        )
    connection = await asyncpg.connect(postgres.url)
    try:
        role = await connection.fetchrow(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert role is not None
        assert (role["rolsuper"], role["rolbypassrls"]) == (False, False)
        for table in ("vector_memory", "messages", "conversations", "users"):
            async with connection.transaction():
                await connection.execute("SELECT set_config('athena.user_id', $1, true)", alice_id)
                rows = await connection.fetch(f"SELECT * FROM {table}")  # noqa: S608 (fixed table names)
            owners = {str(r["id"] if table == "users" else r["user_id"]) for r in rows}
            assert owners == {alice_id}, table
            assert bob_id not in owners
            async with connection.transaction():
                assert await connection.fetch(f"SELECT * FROM {table}") == []  # noqa: S608 (no user: no rows)
        # Writing a row for someone else is refused too.
        async with connection.transaction():
            await connection.execute("SELECT set_config('athena.user_id', $1, true)", alice_id)
            try:
                await connection.execute(
                    "INSERT INTO conversations (id, user_id, agent_id, title) VALUES ($1, $2, 'athena', 'x')",
                    uuid.uuid4(),
                    uuid.UUID(bob_id),
                )
            except asyncpg.InsufficientPrivilegeError:
                pass
            else:
                raise AssertionError("row-level security let a row of another user be written")
    finally:
        await connection.close()


async def test_a_transaction_is_scoped_with_its_settings_quoted_exactly(postgres: EmbeddedPostgres) -> None:
    """`Database.transaction` opens and scopes a transaction in one round trip, its settings written into
    the statement as literals: a value with quotes and backslashes arrives as it was, a NUL never goes."""
    pool = await open_pool(postgres.url, init=init_connection, max_size=1)
    database = Database(pool)
    awkward = "it's a \\'test\\' ''; SELECT 1; --"
    try:
        async with database.transaction(
            None, readonly=True, settings={"athena.probe": awkward}
        ) as connection:
            assert await connection.fetchval("SELECT current_setting('athena.probe')") == awkward
            assert await connection.fetchval("SELECT current_setting('athena.user_id')") == ""
            assert await connection.fetchval("SHOW transaction_read_only") == "on"
        async with database.transaction(
            None
        ) as connection:  # the settings lived as long as their transaction
            assert await connection.fetchval("SELECT current_setting('athena.probe', true)") in ("", None)
        with pytest.raises(ValueError, match="NUL"):
            async with database.transaction(None, settings={"athena.probe": "a\x00b"}):
                pass
    finally:
        await close_pool(pool)


async def test_a_connection_comes_back_from_a_failed_transaction_clean_and_cheaply(
    postgres: EmbeddedPostgres,
) -> None:
    """The pool's release sends nothing when all went well (our sessions keep no state to reset) and rolls
    back what a failed transaction left open, so the next user of the connection starts clean."""
    pool = await open_pool(postgres.url, init=init_connection, max_size=1)
    database = Database(pool)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with database.transaction(None, settings={"athena.probe": "left over"}) as connection:
                await connection.execute("SELECT 1 / 0")
        async with pool.acquire() as connection:
            assert not connection.is_in_transaction()
            assert await connection.fetchval("SELECT current_setting('athena.probe', true)") in ("", None)
            queries = connection._protocol.queries_count  # type: ignore[attr-defined]
        async with pool.acquire() as connection:
            assert connection._protocol.queries_count == queries  # type: ignore[attr-defined]
    finally:
        await close_pool(pool)


async def test_statements_scope_their_session_only_when_it_serves_another_user(
    postgres: EmbeddedPostgres,
) -> None:
    """`Database.statements` runs statements outside a transaction, the connection's session scoped to the
    user with the settings asked for; a connection that served the same user with them last is used as it
    is (nothing sent before the statement), and a transaction on it scopes itself as before."""
    pool = await open_pool(postgres.url, init=init_connection, max_size=1, connection_class=SessionConnection)
    database = Database(pool)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    scope = "SELECT current_setting('athena.user_id'), current_setting('athena.probe', true)"

    def sent(connection: object) -> int:
        return connection._protocol.queries_count  # type: ignore[attr-defined, no-any-return]

    async def run(
        user_id: str, settings: dict[str, str] | None = None
    ) -> tuple[tuple[str, str | None], int, int]:
        """What the statement saw, and how many queries the connection had sent before and after it."""
        async with database.statements(user_id, settings=settings) as connection:
            before = sent(connection)
            assert not connection.is_in_transaction()
            row = await connection.fetchrow(scope)
            return (row[0], row[1] or None), before, sent(connection)

    try:
        seen, _, last = await run(alice, {"athena.probe": "it's"})
        assert seen == (alice, "it's")
        seen, before, after = await run(alice, {"athena.probe": "it's"})
        assert (seen, before) == ((alice, "it's"), last), "scoped already: nothing sent first"
        seen, before, last = await run(bob)
        assert (seen, before) == ((bob, "it's"), after + 1), "another user: one round trip (settings stay)"
        seen, before, after = await run(bob, {"athena.probe": "other"})
        assert (seen, before) == ((bob, "other"), last + 1), "another setting: one round trip"
        async with database.transaction(alice) as connection:
            assert tuple(await connection.fetchrow(scope)) == (alice, "other")
            last = sent(connection) + 1  # its COMMIT
        seen, before, _ = await run(bob)
        assert (seen, before) == ((bob, "other"), last), "the transaction left the session as it was"
        # A pool of plain connections works too: scoped every time.
        plain = Database(await open_pool(postgres.url, init=init_connection, max_size=1))
        try:
            async with plain.statements(alice) as connection:
                assert await connection.fetchval(scope) == alice
            async with plain.statements(bob) as connection:
                assert await connection.fetchval(scope) == bob
        finally:
            await close_pool(plain.pool)
    finally:
        await close_pool(pool)


async def test_with_every_connection_busy_a_caller_waits_the_acquire_timeout_at_most(
    postgres: EmbeddedPostgres,
) -> None:
    """A free connection is taken at once; with none free, `statements` and `transaction` wait for one
    `acquire_timeout` at most, then say the database is unavailable, and a connection freed meanwhile is
    taken by the one waiting."""
    pool = await open_pool(postgres.url, init=init_connection, max_size=1, connection_class=SessionConnection)
    database = Database(pool, acquire_timeout=0.3)
    user = str(uuid.uuid4())
    try:
        async with database.statements(user) as connection:
            assert await connection.fetchval("SELECT 1") == 1
            for busy in (database.statements(user), database.transaction(user)):
                started = time.monotonic()
                with pytest.raises(Unavailable, match="the database is unavailable"):
                    async with busy:
                        pass
                assert 0.25 < time.monotonic() - started < 2.0

        held = await pool.acquire()
        backend = held.get_server_pid()
        asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(pool.release(held)))
        async with database.statements(user) as connection:
            assert connection.get_server_pid() == backend
    finally:
        await close_pool(pool)


async def test_a_read_only_transaction_ends_after_its_reader_went_on(postgres: EmbeddedPostgres) -> None:
    """A read-only transaction's COMMIT is not on its reader's path: the block's results are final when it
    leaves, and the connection comes back to the pool ended a moment later, not inside the transaction."""
    pool = await open_pool(postgres.url, init=init_connection, max_size=1)
    database = Database(pool)
    try:
        async with database.transaction(None, readonly=True) as connection:
            read = await connection.fetchval("SELECT 41 + 1")
            backend = await connection.fetchval("SELECT pg_backend_pid()")
        assert read == 42
        assert pool.get_idle_size() == 0, "still ending when the reader goes on"
        await eventually(lambda: pool.get_idle_size() == 1, "the connection back in the pool")
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT pg_backend_pid()") == backend
            assert not connection.is_in_transaction()
    finally:
        await close_pool(pool)


async def test_an_answer_under_the_id_of_another_message_is_refused_and_changes_nothing(
    memory_service: MemoryHarness,
) -> None:
    _, md = memory_service.user()
    first = await memory_service.conversations.StartTurn(
        start_turn_request(agent_id="athena", text="hello"), metadata=md
    )
    before = await memory_service.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id), metadata=md
    )
    taken = chat_pb2.Message(id=first.message.id, agent_id="athena", content="an answer")  # the question's id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await memory_service.conversations.AppendAssistantMessage(
            memory_pb2.AppendAssistantMessageRequest(conversation_id=first.conversation.id, message=taken),
            metadata=md,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message.id" in (refused.value.details() or "")
    after = await memory_service.conversations.GetConversation(
        memory_pb2.GetConversationRequest(conversation_id=first.conversation.id), metadata=md
    )
    assert after.conversation == before.conversation  # not even touched
