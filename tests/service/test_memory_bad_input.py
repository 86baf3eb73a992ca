"""Every RPC refuses malformed input with INVALID_ARGUMENT naming the field, and writes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from google.protobuf.duration_pb2 import Duration
from memory_fixtures import MemoryHarness, expect_status, memory_service, start_turn_request

__all__ = ["memory_service"]

USER = account_pb2.MEMORY_SCOPE_USER
OFFLINE = "athena-offline-embed"
GOOD_CONVERSATION = "6f1c2e1a-4d4b-4c53-9d1e-1f6b1f1c2e1a"
CASES: list[tuple[str, str, Any, str]] = [
    ("memory", "Remember", memory_pb2.RememberRequest(text="", scope=USER, agent_id="athena"), "text"),
    ("memory", "Remember", memory_pb2.RememberRequest(text="   ", scope=USER, agent_id="athena"), "text"),
    (
        "memory",
        "Remember",
        memory_pb2.RememberRequest(text="x" * 4001, scope=USER, agent_id="athena"),
        "text",
    ),
    ("memory", "Remember", memory_pb2.RememberRequest(text="fact", agent_id="athena"), "scope"),
    ("memory", "Remember", memory_pb2.RememberRequest(text="fact", scope=7, agent_id="athena"), "scope"),  # type: ignore[arg-type]
    ("memory", "Remember", memory_pb2.RememberRequest(text="fact", scope=USER), "agent_id"),
    (
        "memory",
        "Remember",
        memory_pb2.RememberRequest(text="fact", scope=USER, agent_id="Bad Agent!"),
        "agent_id",
    ),
    (
        "memory",
        "Remember",
        memory_pb2.RememberRequest(text="fact", scope=USER, agent_id="athena", key="no spaces"),
        "key",
    ),
    (
        "memory",
        "Remember",
        memory_pb2.RememberRequest(text="fact", scope=USER, agent_id="athena", key="k" * 65),
        "key",
    ),
    (
        "memory",
        "Remember",
        memory_pb2.RememberRequest(
            text="fact", scope=USER, agent_id="athena", embedding=[0.1] * 3, embedding_model=OFFLINE
        ),
        "embedding",
    ),
    (
        "memory",
        "Remember",
        memory_pb2.RememberRequest(text="fact", scope=USER, agent_id="athena", embedding=[0.1] * 384),
        "embedding_model",
    ),
    ("memory", "Recall", memory_pb2.RecallRequest(query="", agent_id="athena"), "query"),
    ("memory", "Recall", memory_pb2.RecallRequest(query="x" * 4001, agent_id="athena"), "query"),
    ("memory", "Recall", memory_pb2.RecallRequest(query="goal", agent_id="athena", k=51), "k"),
    ("memory", "Recall", memory_pb2.RecallRequest(query="goal", agent_id="athena", k=-1), "k"),
    (
        "memory",
        "Recall",
        memory_pb2.RecallRequest(
            query="goal", agent_id="athena", embedding=[1.0] * 385, embedding_model=OFFLINE
        ),
        "embedding",
    ),
    (
        "memory",
        "Recall",
        memory_pb2.RecallRequest(query="goal", agent_id="athena", embedding=[1.0] * 384),
        "embedding_model",
    ),
    ("memory", "Forget", memory_pb2.ForgetRequest(), "target"),
    ("memory", "Forget", memory_pb2.ForgetRequest(memory_id="not-a-uuid"), "memory_id"),
    ("memory", "Forget", memory_pb2.ForgetRequest(query="goal", agent_id="athena", limit=99), "limit"),
    ("memory", "ListMemories", memory_pb2.ListMemoriesRequest(page_size=101), "page_size"),
    ("memory", "ListMemories", memory_pb2.ListMemoriesRequest(page_token="garbage!"), "page_token"),
    (
        "memory",
        "PutEphemeral",
        memory_pb2.PutEphemeralRequest(namespace="", key="k", value_json="{}"),
        "namespace",
    ),
    (
        "memory",
        "PutEphemeral",
        memory_pb2.PutEphemeralRequest(namespace="n", key="k", value_json="{nope"),
        "value_json",
    ),
    (
        "memory",
        "PutEphemeral",
        memory_pb2.PutEphemeralRequest(namespace="n", key="k", value_json='"' + "x" * 262144 + '"'),
        "value_json",
    ),
    (
        "memory",
        "PutEphemeral",
        memory_pb2.PutEphemeralRequest(namespace="n", key="k", value_json="{}", ttl=Duration(seconds=-5)),
        "ttl",
    ),
    ("memory", "GetEphemeral", memory_pb2.GetEphemeralRequest(namespace="n", key=""), "key"),
    (
        "conversations",
        "StartTurn",
        start_turn_request(agent_id="athena", text=""),
        "chat.text",
    ),
    (
        "conversations",
        "StartTurn",
        start_turn_request(conversation_id="123", agent_id="athena", text="hi"),
        "chat.conversation_id",
    ),
    ("conversations", "StartTurn", start_turn_request(text="hi"), "chat.agent_id"),
    (
        "conversations",
        "StartTurn",
        start_turn_request(agent_id="athena", text="hi", client_request_id="r" * 65),
        "chat.client_request_id",
    ),
    (
        "conversations",
        "AppendAssistantMessage",
        memory_pb2.AppendAssistantMessageRequest(conversation_id=GOOD_CONVERSATION),
        "message",
    ),
    (
        "conversations",
        "AppendAssistantMessage",
        memory_pb2.AppendAssistantMessageRequest(
            conversation_id=GOOD_CONVERSATION, message=chat_pb2.Message(id="nope", agent_id="athena")
        ),
        "message.id",
    ),
    (
        "conversations",
        "AppendAssistantMessage",
        memory_pb2.AppendAssistantMessageRequest(
            conversation_id=GOOD_CONVERSATION,
            message=chat_pb2.Message(agent_id="athena", role=chat_pb2.ROLE_USER),
        ),
        "message.role",
    ),
    (
        "conversations",
        "AppendAssistantMessage",
        memory_pb2.AppendAssistantMessageRequest(
            conversation_id=GOOD_CONVERSATION,
            message=chat_pb2.Message(
                agent_id="athena",
                tool_calls=[chat_pb2.ToolCallRecord(call_id="c", name="t", arguments_json="{broken")],
            ),
        ),
        "message.tool_calls[0].arguments_json",
    ),
    ("conversations", "ListConversations", memory_pb2.ListConversationsRequest(page_size=1000), "page_size"),
    (
        "conversations",
        "ListConversations",
        memory_pb2.ListConversationsRequest(
            page_token="eyJrIjoibWVtb3JpZXMiLCJ0IjoiMjAyNS0wMS0wMVQwMDowMDowMCswMDowMCIsImkiOiIxIn0"
        ),
        "page_token",
    ),
    (
        "conversations",
        "GetConversation",
        memory_pb2.GetConversationRequest(conversation_id=""),
        "conversation_id",
    ),
    (
        "conversations",
        "GetConversation",
        memory_pb2.GetConversationRequest(conversation_id=GOOD_CONVERSATION, last_messages=-1),
        "last_messages",
    ),
    (
        "conversations",
        "DeleteConversation",
        memory_pb2.DeleteConversationRequest(conversation_id="x"),
        "conversation_id",
    ),
    ("agents", "SetAgentEnabled", memory_pb2.SetAgentEnabledRequest(agent_id=""), "agent_id"),
    (
        "agents",
        "SyncAgents",
        memory_pb2.SyncAgentsRequest(
            agents=[
                memory_pb2.AgentDefinition(id="a", name="A"),
                memory_pb2.AgentDefinition(id="a", name="A again"),
            ]
        ),
        "agents",
    ),
    (
        "agents",
        "SyncAgents",
        memory_pb2.SyncAgentsRequest(agents=[memory_pb2.AgentDefinition(id="a")]),
        "agents[0].name",
    ),
]


@pytest.mark.parametrize(
    ("stub", "method", "request_message", "field"),
    CASES,
    ids=[f"{c[1]}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    memory_service: MemoryHarness, stub: str, method: str, request_message: Any, field: str
) -> None:
    _, md = memory_service.user()
    if method == "SyncAgents":
        md = memory_service.service_metadata
    call = getattr(getattr(memory_service, stub), method)(request_message, metadata=md)
    error = await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert (error.details() or "").startswith(f"{field}: "), error.details()


async def test_refused_requests_write_nothing(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    for request in (
        memory_pb2.RememberRequest(
            text="fact", scope=USER, agent_id="athena", embedding=[0.5] * 10, embedding_model=OFFLINE
        ),
        memory_pb2.RememberRequest(text="fact", scope=USER, agent_id="athena", key="bad key"),
    ):
        await expect_status(
            memory_service.memory.Remember(request, metadata=md), grpc.StatusCode.INVALID_ARGUMENT
        )
    await expect_status(
        memory_service.conversations.StartTurn(
            start_turn_request(agent_id="athena", text="hi", client_request_id="r" * 65),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    memories = await memory_service.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md)
    conversations = await memory_service.conversations.ListConversations(
        memory_pb2.ListConversationsRequest(), metadata=md
    )
    assert list(memories.memories) == []
    assert list(conversations.conversations) == []
    assert memory_service.embedder.calls == 0  # validation ran before the (costly) embedding call


async def test_unknown_conversation_for_assistant_message_is_not_found(memory_service: MemoryHarness) -> None:
    _, md = memory_service.user()
    await expect_status(
        memory_service.conversations.AppendAssistantMessage(
            memory_pb2.AppendAssistantMessageRequest(
                conversation_id=GOOD_CONVERSATION, message=chat_pb2.Message(agent_id="athena", content="x")
            ),
            metadata=md,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
