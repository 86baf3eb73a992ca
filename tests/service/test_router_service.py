"""The public ChatService and AccountService through the router, backed by the real orchestrator, memory
(PostgreSQL + Valkey), offline model and auth service, all in-process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from conftest import auth_metadata, service_settings
from grpc_health.v1 import health_pb2
from router_fixtures import (  # type: ignore[import-not-found]
    Metadata,
    Router,
    RouterMesh,
    answer,
    chat,
    expect_status,
    expect_stream_status,
    mesh,
)

from devstack.process import free_port
from mesh.app import Deps
from router.app import ROUTER
from router.settings import RouterSettings

__all__ = ["mesh"]

OK = grpc.StatusCode.OK


@pytest_asyncio.fixture(scope="module")
async def router(mesh: RouterMesh) -> Router:
    return await mesh.start_router([await mesh.start_orchestrator()])


async def conversation(router: Router, metadata: Metadata, conversation_id: str) -> chat_pb2.Conversation:
    response = await router.chat.GetConversation(
        chat_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=metadata
    )
    found: chat_pb2.Conversation = response.conversation
    return found


async def memories(router: Router, metadata: Metadata) -> list[Any]:
    response = await router.account.ListMemories(account_pb2.ListMemoriesRequest(), metadata=metadata)
    return list(response.memories)


async def conversations(router: Router, metadata: Metadata) -> list[Any]:
    response = await router.chat.ListConversations(
        chat_pb2.ListConversationsRequest(page_size=100), metadata=metadata
    )
    return list(response.conversations)


async def export(router: Router, metadata: Metadata) -> dict[str, Any]:
    chunks = [
        response
        async for response in router.account.ExportData(account_pb2.ExportDataRequest(), metadata=metadata)
    ]
    assert chunks[0].content_type == "application/json"
    document: dict[str, Any] = json.loads(b"".join(chunk.chunk for chunk in chunks))
    return document


async def test_a_turn_streams_through_the_router_and_both_messages_are_stored(
    mesh: RouterMesh, router: Router
) -> None:
    _, metadata = mesh.user()
    events = await chat(router.chat, metadata, "hello there")

    assert events[0].HasField("conversation_started")
    assert events[-1].HasField("message_completed")
    assert answer(events) == "I don't know that yet."
    found = await conversation(router, metadata, events[0].conversation_started.conversation_id)
    assert [(m.role, m.content) for m in found.messages] == [
        (chat_pb2.ROLE_USER, "hello there"),
        (chat_pb2.ROLE_ASSISTANT, "I don't know that yet."),
    ]


async def test_agents_are_enabled_per_user_and_a_disabled_agent_refuses_to_chat(
    mesh: RouterMesh, router: Router
) -> None:
    _, alice = mesh.user()
    _, bob = mesh.user()
    listed = (await router.chat.ListAgents(chat_pb2.ListAgentsRequest(), metadata=alice)).agents
    catalog = [agent for agent in listed if agent.id in {"athena", "nutrition", "focus", "sme"}]
    assert len(catalog) == 4  # other suites may sync agents of their own into the shared database
    assert all(agent.enabled and agent.name and agent.accent_token for agent in catalog)

    changed = await router.chat.SetAgentEnabled(
        chat_pb2.SetAgentEnabledRequest(agent_id="nutrition", enabled=False), metadata=alice
    )
    assert (changed.agent.id, changed.agent.enabled) == ("nutrition", False)
    states = {
        a.id: a.enabled
        for a in (await router.chat.ListAgents(chat_pb2.ListAgentsRequest(), metadata=alice)).agents
    }
    assert states["nutrition"] is False
    others = {
        a.id: a.enabled
        for a in (await router.chat.ListAgents(chat_pb2.ListAgentsRequest(), metadata=bob)).agents
    }
    assert others["nutrition"] is True

    error = await expect_status(
        chat(router.chat, alice, "hi", agent_id="nutrition"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "disabled" in (error.details() or "")
    assert await conversations(router, alice) == []  # refused before anything was stored
    assert answer(await chat(router.chat, bob, "hi", agent_id="nutrition"))

    await router.chat.SetAgentEnabled(
        chat_pb2.SetAgentEnabledRequest(agent_id="nutrition", enabled=True), metadata=alice
    )
    assert answer(await chat(router.chat, alice, "hi", agent_id="nutrition"))


async def test_conversations_are_listed_newest_first_page_by_page_and_can_be_deleted(
    mesh: RouterMesh, router: Router
) -> None:
    _, metadata = mesh.user()
    ids = [
        (await chat(router.chat, metadata, f"message {n}"))[0].conversation_started.conversation_id
        for n in range(3)
    ]
    first = await router.chat.ListConversations(
        chat_pb2.ListConversationsRequest(page_size=2), metadata=metadata
    )
    assert [c.id for c in first.conversations] == [ids[2], ids[1]]
    assert all(not c.messages for c in first.conversations)
    assert first.next_page_token
    second = await router.chat.ListConversations(
        chat_pb2.ListConversationsRequest(page_size=2, page_token=first.next_page_token), metadata=metadata
    )
    assert [c.id for c in second.conversations] == [ids[0]]
    assert second.next_page_token == ""

    await router.chat.DeleteConversation(
        chat_pb2.DeleteConversationRequest(conversation_id=ids[1]), metadata=metadata
    )
    assert [c.id for c in await conversations(router, metadata)] == [ids[2], ids[0]]
    await expect_status(conversation(router, metadata, ids[1]), grpc.StatusCode.NOT_FOUND)


async def test_a_retried_chat_with_the_same_client_request_id_stores_the_message_once(
    mesh: RouterMesh, router: Router
) -> None:
    _, metadata = mesh.user()
    request_id = f"req-{uuid.uuid4().hex}"
    first = await chat(router.chat, metadata, "hello once", client_request_id=request_id)
    started = first[0].conversation_started
    again = await chat(
        router.chat,
        metadata,
        "hello once",
        conversation_id=started.conversation_id,
        client_request_id=request_id,
    )
    assert again[0].conversation_started.user_message_id == started.user_message_id

    found = await conversation(router, metadata, started.conversation_id)
    assert [m.content for m in found.messages if m.role == chat_pb2.ROLE_USER] == ["hello once"]
    assert len(await conversations(router, metadata)) == 1


async def test_a_repeated_chat_replays_its_answer_and_runs_no_tool_again(
    mesh: RouterMesh, router: Router
) -> None:
    """Finding 1: a repeated client_request_id ran the turn again (two answers, the tool twice)."""
    _, metadata = mesh.user()
    request_id = f"req-{uuid.uuid4().hex}"
    text = "remember I water the plants on Sunday"
    # Two at once (one answers, the other waits for it), then a retry once it is done.
    first, concurrent = await asyncio.gather(
        *(chat(router.chat, metadata, text, client_request_id=request_id) for _ in range(2))
    )
    again = await chat(router.chat, metadata, text, client_request_id=request_id)
    for replay in (concurrent, again):
        assert replay[0].conversation_started == first[0].conversation_started
        assert answer(replay) == answer(first)
        assert replay[-1].message_completed.message_id == first[-1].message_completed.message_id
    found = await conversation(router, metadata, first[0].conversation_started.conversation_id)
    assert [m.role for m in found.messages] == [chat_pb2.ROLE_USER, chat_pb2.ROLE_ASSISTANT]
    assert [m.text for m in await memories(router, metadata)] == ["I water the plants on Sunday"]

    with pytest.raises(grpc.aio.AioRpcError) as refused:  # another text under the used id
        await chat(router.chat, metadata, "remember I hate plants", client_request_id=request_id)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("client_request_id: ")
    assert [m.text for m in await memories(router, metadata)] == ["I water the plants on Sunday"]


async def test_memories_are_listed_and_forgotten(mesh: RouterMesh, router: Router) -> None:
    _, metadata = mesh.user()
    await chat(router.chat, metadata, "remember my caloric goal is 2000 kcal", agent_id="nutrition")
    await chat(router.chat, metadata, "note my breakfast was oatmeal", agent_id="nutrition")
    listed = await memories(router, metadata)
    assert [(m.text, m.scope) for m in listed] == [
        ("my breakfast was oatmeal", account_pb2.MEMORY_SCOPE_AGENT),
        ("my caloric goal is 2000 kcal", account_pb2.MEMORY_SCOPE_USER),
    ]
    await router.account.ForgetMemory(
        account_pb2.ForgetMemoryRequest(memory_id=listed[0].id), metadata=metadata
    )
    assert [m.text for m in await memories(router, metadata)] == ["my caloric goal is 2000 kcal"]
    await expect_status(
        router.account.ForgetMemory(
            account_pb2.ForgetMemoryRequest(memory_id=listed[0].id), metadata=metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # A correction supersedes the memory; the history shows both, the old one closed (issue 17).
    goal = listed[1]
    corrected = await router.account.CorrectMemory(
        account_pb2.CorrectMemoryRequest(memory_id=goal.id, text="my caloric goal is 1800 kcal"),
        metadata=metadata,
    )
    assert corrected.memory.supersedes_id == goal.id
    assert corrected.memory.source == account_pb2.MEMORY_SOURCE_EXPLICIT
    assert [m.text for m in await memories(router, metadata)] == ["my caloric goal is 1800 kcal"]
    history = await router.account.GetMemoryHistory(
        account_pb2.GetMemoryHistoryRequest(memory_id=corrected.memory.id), metadata=metadata
    )
    assert [(v.text, v.HasField("valid_to")) for v in history.versions] == [
        ("my caloric goal is 1800 kcal", False),
        ("my caloric goal is 2000 kcal", True),
    ]
    with_history = await router.account.ListMemories(
        account_pb2.ListMemoriesRequest(include_history=True), metadata=metadata
    )
    assert {m.text for m in with_history.memories} == {
        "my caloric goal is 1800 kcal",
        "my caloric goal is 2000 kcal",
    }
    # Learning facts from conversations is the person's choice (on by default).
    settings = await router.account.GetMemorySettings(
        account_pb2.GetMemorySettingsRequest(), metadata=metadata
    )
    assert settings.settings.learn_from_conversations
    off = account_pb2.MemorySettings(learn_from_conversations=False)
    await router.account.SetMemorySettings(
        account_pb2.SetMemorySettingsRequest(settings=off), metadata=metadata
    )
    settings = await router.account.GetMemorySettings(
        account_pb2.GetMemorySettingsRequest(), metadata=metadata
    )
    assert not settings.settings.learn_from_conversations


async def test_another_users_objects_are_not_found_and_stay_intact(mesh: RouterMesh, router: Router) -> None:
    alice = auth_metadata((await mesh.sign_in()).access_token)  # a real account: its export asks auth
    _, bob = mesh.user()
    bobs_turn = await chat(router.chat, bob, "remember my locker code is 4711", agent_id="focus")
    bobs_conversation = bobs_turn[0].conversation_started.conversation_id
    [bobs_memory] = await memories(router, bob)
    await chat(router.chat, alice, "hello from alice")
    before = await conversation(router, bob, bobs_conversation)

    not_found = grpc.StatusCode.NOT_FOUND
    await expect_status(conversation(router, alice, bobs_conversation), not_found)
    await expect_status(
        router.chat.DeleteConversation(
            chat_pb2.DeleteConversationRequest(conversation_id=bobs_conversation), metadata=alice
        ),
        not_found,
    )
    await expect_status(chat(router.chat, alice, "let me in", conversation_id=bobs_conversation), not_found)
    await expect_status(
        router.account.ForgetMemory(
            account_pb2.ForgetMemoryRequest(memory_id=bobs_memory.id), metadata=alice
        ),
        not_found,
    )
    await expect_status(
        router.account.CorrectMemory(
            account_pb2.CorrectMemoryRequest(memory_id=bobs_memory.id, text="mine now"), metadata=alice
        ),
        not_found,
    )
    await expect_status(
        router.account.GetMemoryHistory(
            account_pb2.GetMemoryHistoryRequest(memory_id=bobs_memory.id), metadata=alice
        ),
        not_found,
    )
    assert bobs_conversation not in {c.id for c in await conversations(router, alice)}
    assert await memories(router, alice) == []
    alices_export = json.dumps(await export(router, alice))
    assert bobs_conversation not in alices_export
    assert "4711" not in alices_export
    # Alice's own turn did not recall Bob's memory either.
    recalled = await chat(router.chat, alice, "what is my locker code?", agent_id="focus")
    assert list(recalled[1].memories_recalled.memories) == []

    after = await conversation(router, bob, bobs_conversation)
    assert after == before
    assert [m.id for m in await memories(router, bob)] == [bobs_memory.id]


async def test_export_holds_the_callers_profile_conversations_memories_and_processing(
    mesh: RouterMesh, router: Router
) -> None:
    email = f"export-{uuid.uuid4().hex[:10]}@example.com"
    session = await mesh.sign_in(email)
    metadata = auth_metadata(session.access_token)
    user_id = session.user.id
    stranger_id, stranger = mesh.user()
    await chat(router.chat, stranger, "remember the stranger likes jazz")
    turn = await chat(router.chat, metadata, "remember my caloric goal is 1800 kcal", agent_id="nutrition")
    await router.chat.SetAgentEnabled(
        chat_pb2.SetAgentEnabledRequest(agent_id="sme", enabled=False), metadata=metadata
    )
    notifier = notifications_pb2_grpc.NotifierServiceStub(mesh.memory.channel)
    for who, title in ((user_id, "Short night"), (stranger_id, "the stranger's night")):
        await notifier.Notify(
            notifications_pb2.NotifyRequest(
                user_id=who,
                agent_id="focus",
                title=title,
                body="Take it easy",
                kind="short_night",
                dedupe_key="n",
            ),
            metadata=mesh.memory.service_metadata,
        )
    await notifications_pb2_grpc.NotificationsServiceStub(mesh.memory.channel).UpdateNotificationSettings(
        notifications_pb2.UpdateNotificationSettingsRequest(
            settings=notifications_pb2.NotificationSettings(muted_agent_ids=["sme"])
        ),
        metadata=metadata,
    )

    document = await export(router, metadata)

    assert document["format"] == "athenaos-export/v1"
    profile = document["profile"]
    assert (profile["user_id"], profile["email"], profile["display_name"]) == (user_id, email, "Test")
    assert profile["created_at"]
    # Auth's half, opened for the owner: the identity they sign in with, and their session without its
    # tokens (auth keeps only their hashes, and exports neither).
    assert [(i["provider"], i["subject"]) for i in document["identities"]] == [("dev", email)]
    [signed_in] = document["sessions"]
    assert signed_in["created_at"]
    assert signed_in["refresh_tokens"] == "1"  # int64, a string in proto3 JSON
    assert signed_in["revoked_reason"] == ""
    assert session.refresh_token not in json.dumps(document)
    assert session.access_token not in json.dumps(document)
    assert document["connections"] == []
    assert document["processing"]["purposes"]
    assert {agent["id"]: agent["enabled"] for agent in document["agents"]}["sme"] is False
    [exported] = document["conversations"]
    assert exported["id"] == turn[0].conversation_started.conversation_id
    user_message, assistant_message = exported["messages"]
    assert user_message["content"] == "remember my caloric goal is 1800 kcal"
    assert assistant_message["tool_calls"][0]["name"] == "remember_memory"
    assert "created_at" in assistant_message
    [memory] = document["memories"]
    assert (memory["text"], memory["scope"]) == ("my caloric goal is 1800 kcal", "MEMORY_SCOPE_USER")
    assert memory["created_at"]
    [notification] = document["notifications"]
    assert (notification["title"], notification["agent_id"]) == ("Short night", "focus")
    assert notification["link"] == "/?agent=focus"
    assert document["notification_settings"] == [{"muted_agent_ids": ["sme"]}]
    assert "jazz" not in json.dumps(document)
    assert "stranger's night" not in json.dumps(document)


async def test_delete_account_erases_everything_and_revokes_sessions(
    mesh: RouterMesh, router: Router
) -> None:
    email = f"erase-{uuid.uuid4().hex[:10]}@example.com"
    session = await mesh.sign_in(email)
    metadata = auth_metadata(session.access_token)
    turn = await chat(router.chat, metadata, "remember my passport number is X123", agent_id="athena")
    conversation_id = turn[0].conversation_started.conversation_id
    assert await memories(router, metadata)

    deleted = await router.account.DeleteAccount(account_pb2.DeleteAccountRequest(), metadata=metadata)
    assert deleted.receipt
    assert deleted.erased["account"] == 1
    assert deleted.erased["memory_rows"] >= 4  # the user, the conversation, its two messages, the memory

    await expect_status(
        mesh.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # The access token is refused from now on (tests/service/test_revocation.py); a token the test signs
    # for the same user afterwards finds nothing it named.
    later = auth_metadata(mesh.make_token(session.user.id, iat=int(time.time()) + 1))
    await expect_status(conversation(router, later, conversation_id), grpc.StatusCode.NOT_FOUND)
    assert await conversations(router, later) == []
    assert await memories(router, later) == []
    # (An export needs the account itself: auth answers it, and it is gone.)

    again = await mesh.sign_in(email)
    fresh = auth_metadata(again.access_token)
    assert again.user.id != session.user.id
    assert await conversations(router, fresh) == []
    assert await memories(router, fresh) == []
    recalled = await chat(router.chat, fresh, "what is my passport number?")
    assert answer(recalled) == "I don't know that yet."
    await router.account.DeleteAccount(account_pb2.DeleteAccountRequest(), metadata=fresh)


TOO_BIG = "x" * (5 * 1024 * 1024)
UUID = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("request_fields", "code", "field"),
    [
        ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "   \n"}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "x" * 300_000}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "a\x00b"}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": TOO_BIG}, grpc.StatusCode.RESOURCE_EXHAUSTED, None),
        ({"agent_id": "nobody"}, grpc.StatusCode.NOT_FOUND, None),
        ({"agent_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "agent_id"),
        ({"agent_id": "Robert'); DROP TABLE agents;--"}, grpc.StatusCode.INVALID_ARGUMENT, "agent_id"),
        ({"conversation_id": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT, "conversation_id"),
        ({"conversation_id": UUID}, grpc.StatusCode.NOT_FOUND, None),
        ({"client_request_id": "x" * 65}, grpc.StatusCode.INVALID_ARGUMENT, "client_request_id"),
        (
            {"client_request_id": "spaces are not allowed"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "client_request_id",
        ),
    ],
)
async def test_bad_chat_requests_get_the_right_status(
    mesh: RouterMesh, router: Router, request_fields: dict[str, Any], code: grpc.StatusCode, field: str | None
) -> None:
    _, metadata = mesh.user()
    request = chat_pb2.ChatRequest(**{"agent_id": "athena", "text": "hi", **request_fields})
    error = await expect_stream_status(router.chat.Chat(request, metadata=metadata, timeout=20), code)
    if field is not None:
        assert (error.details() or "").startswith(f"{field}: ")
    assert await conversations(router, metadata) == []


@pytest.mark.parametrize(
    ("method", "request_message", "code", "field"),
    [
        (
            "GetConversation",
            chat_pb2.GetConversationRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "conversation_id",
        ),
        (
            "GetConversation",
            chat_pb2.GetConversationRequest(conversation_id="123"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "conversation_id",
        ),
        (
            "GetConversation",
            chat_pb2.GetConversationRequest(conversation_id=UUID),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            "DeleteConversation",
            chat_pb2.DeleteConversationRequest(conversation_id="../etc/passwd"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "conversation_id",
        ),
        (
            "DeleteConversation",
            chat_pb2.DeleteConversationRequest(conversation_id=UUID),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            "ListConversations",
            chat_pb2.ListConversationsRequest(page_size=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size",
        ),
        (
            "ListConversations",
            chat_pb2.ListConversationsRequest(page_size=101),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size",
        ),
        (
            "ListConversations",
            chat_pb2.ListConversationsRequest(page_token="forged"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
        (
            "ListConversations",
            chat_pb2.ListConversationsRequest(page_token="t" * 600),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
        ("SetAgentEnabled", chat_pb2.SetAgentEnabledRequest(), grpc.StatusCode.INVALID_ARGUMENT, "agent_id"),
        (
            "SetAgentEnabled",
            chat_pb2.SetAgentEnabledRequest(agent_id="nobody"),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            "SetAgentEnabled",
            chat_pb2.SetAgentEnabledRequest(agent_id="ÅTHENA"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "agent_id",
        ),
        ("ForgetMemory", account_pb2.ForgetMemoryRequest(), grpc.StatusCode.INVALID_ARGUMENT, "memory_id"),
        (
            "ForgetMemory",
            account_pb2.ForgetMemoryRequest(memory_id="7"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "memory_id",
        ),
        ("ForgetMemory", account_pb2.ForgetMemoryRequest(memory_id=UUID), grpc.StatusCode.NOT_FOUND, None),
        (
            "CorrectMemory",
            account_pb2.CorrectMemoryRequest(memory_id=UUID),
            grpc.StatusCode.INVALID_ARGUMENT,
            "text",
        ),
        (
            "CorrectMemory",
            account_pb2.CorrectMemoryRequest(memory_id="7", text="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "memory_id",
        ),
        (
            "CorrectMemory",
            account_pb2.CorrectMemoryRequest(memory_id=UUID, text="x"),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            "GetMemoryHistory",
            account_pb2.GetMemoryHistoryRequest(memory_id=UUID),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            "ListMemories",
            account_pb2.ListMemoriesRequest(page_size=1000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size",
        ),
        (
            "ListMemories",
            account_pb2.ListMemoriesRequest(page_token="!!"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
    ],
)
async def test_bad_unary_requests_get_the_right_status(
    mesh: RouterMesh,
    router: Router,
    method: str,
    request_message: Any,
    code: grpc.StatusCode,
    field: str | None,
) -> None:
    _, metadata = mesh.user()
    account = request_message.DESCRIPTOR.file.package == "athena.account.v1"
    stub: Any = router.account if account else router.chat
    error = await expect_status(getattr(stub, method)(request_message, metadata=metadata, timeout=10), code)
    if field is not None:
        assert (error.details() or "").startswith(f"{field}: ")


async def test_calls_without_a_valid_token_are_unauthenticated(mesh: RouterMesh, router: Router) -> None:
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    await expect_status(router.chat.ListAgents(chat_pb2.ListAgentsRequest()), unauthenticated)
    await expect_stream_status(
        router.chat.Chat(chat_pb2.ChatRequest(agent_id="athena", text="hi")), unauthenticated
    )
    expired = auth_metadata(mesh.make_token(exp=1_000_000))
    await expect_status(
        router.account.ListMemories(account_pb2.ListMemoriesRequest(), metadata=expired), unauthenticated
    )
    await expect_status(router.account.DeleteAccount(account_pb2.DeleteAccountRequest()), unauthenticated)


async def test_the_router_reports_serving(router: Router) -> None:
    assert await router.health() == health_pb2.HealthCheckResponse.SERVING


async def test_a_peer_that_is_down_is_told_in_our_words(mesh: RouterMesh) -> None:
    """grpc's own message for an unreachable peer names addresses and ports ("failed to connect to all
    addresses; last error: ... ipv4:127.0.0.1:<port>"): the client reads a sentence instead."""
    settings = RouterSettings(
        **service_settings(
            mesh.base, memory_target=f"127.0.0.1:{free_port()}", auth_target=f"127.0.0.1:{free_port()}"
        )
    )
    router = await mesh.services.start(ROUTER, settings, Deps(verifier=mesh.verifier))
    _, metadata = mesh.user()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        for call in (
            chat_pb2_grpc.ChatServiceStub(channel).ListConversations(
                chat_pb2.ListConversationsRequest(), metadata=metadata, timeout=10
            ),
            account_pb2_grpc.AccountServiceStub(channel).DeleteAccount(
                account_pb2.DeleteAccountRequest(), metadata=metadata, timeout=10
            ),
        ):
            error = await expect_status(call, grpc.StatusCode.UNAVAILABLE)
            assert error.details() == "a service needed to answer is unavailable; try again"


async def test_the_router_sends_a_chat_to_the_edge_in_words(mesh: RouterMesh, router: Router) -> None:
    """Chat is the orchestrator's: called on the router itself, it says where to go."""
    _, metadata = mesh.user()
    stub = chat_pb2_grpc.ChatServiceStub(router.client)
    error = await expect_stream_status(
        stub.Chat(chat_pb2.ChatRequest(agent_id="athena", text="hi"), metadata=metadata, timeout=10),
        grpc.StatusCode.UNIMPLEMENTED,
    )
    assert "through the edge" in (error.details() or "")


async def test_a_chat_without_a_client_request_id_is_stored_once_when_the_edge_retries_it(
    mesh: RouterMesh, router: Router
) -> None:
    """Envoy keeps a call's x-request-id when it retries it on another replica: the turn is the same one.
    Another message under a reused x-request-id is a message of its own."""
    _, metadata = mesh.user()
    retried = (*metadata, ("x-request-id", f"edge-{uuid.uuid4()}"))
    first = await chat(router.chat, retried, "hello there")
    again = await chat(router.chat, retried, "hello there")
    started = first[0].conversation_started
    assert again[0].conversation_started.user_message_id == started.user_message_id
    assert answer(again) == answer(first)
    other = await chat(router.chat, retried, "something else")
    assert other[0].conversation_started.user_message_id != started.user_message_id
    assert answer(other)
