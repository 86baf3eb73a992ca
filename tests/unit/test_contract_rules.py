"""The field rules of the contracts (`buf.validate` annotations in proto/), checked as every service checks
them (`mesh.validation`): each rule once, named by its field, with the same answer wherever the message
travels (the router's ChatRequest is the orchestrator's RunRequest.chat and memory's StartTurnRequest.chat).
"""

from __future__ import annotations

import uuid

import pytest
from athena.account.v1 import account_pb2
from athena.auth.v1 import auth_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from athena.orchestrator.v1 import orchestrator_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from mesh.errors import InvalidArgument
from mesh.validation import check, shared_validator

ID = str(uuid.uuid4())


def refused(message: Message) -> str:
    """The `field: problem` a service answers for `message`."""
    with pytest.raises(InvalidArgument) as raised:
        check(shared_validator(), message)
    return raised.value.message


def chat(**fields: str) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(**{"agent_id": "athena", "text": "hi", **fields})


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"agent_id": ""}, "agent_id", "required"),
        ({"agent_id": "Athena"}, "agent_id", "agent id"),
        ({"agent_id": "a" * 33}, "agent_id", "agent id"),
        ({"agent_id": "nutrition-coach"}, "agent_id", "agent id"),
        ({"agent_id": "user"}, "agent_id", "reserved"),
        ({"text": ""}, "text", ""),
        ({"text": " \n\t"}, "text", "blank"),
        ({"text": "x" * 32_001}, "text", "32000"),
        ({"text": "a\x00"}, "text", "NUL"),
        ({"conversation_id": "1234"}, "conversation_id", "UUID"),
        ({"client_request_id": "x" * 65}, "client_request_id", "64"),
        ({"client_request_id": "a b"}, "client_request_id", ""),
    ],
)
def test_a_chat_request_breaking_a_rule_is_refused_naming_the_field(
    fields: dict[str, str], field: str, problem: str
) -> None:
    message = refused(chat(**fields))
    assert message.startswith(f"{field}: "), message
    assert problem in message
    # The same rule, the same answer, inside the internal requests that carry it.
    assert refused(orchestrator_pb2.RunRequest(chat=chat(**fields))) == f"chat.{message}"
    assert refused(memory_pb2.StartTurnRequest(chat=chat(**fields))) == f"chat.{message}"


def test_good_chat_requests_pass() -> None:
    for request in (
        chat(),
        chat(text="x" * 32_000, conversation_id=ID, client_request_id="web:2f1c-7.retry_1"),
        chat(agent_id="sme", conversation_id=ID.upper()),
    ):
        check(shared_validator(), request)
        check(shared_validator(), orchestrator_pb2.RunRequest(chat=request))
    assert refused(orchestrator_pb2.RunRequest()).startswith("chat: ")


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (chat_pb2.SetAgentEnabledRequest(agent_id="No"), "agent_id"),
        (chat_pb2.ListConversationsRequest(page_size=101), "page_size"),
        (chat_pb2.ListConversationsRequest(page_size=-1), "page_size"),
        (chat_pb2.ListConversationsRequest(page_token="t" * 513), "page_token"),
        (chat_pb2.GetConversationRequest(), "conversation_id"),
        (chat_pb2.DeleteConversationRequest(conversation_id="x"), "conversation_id"),
        (account_pb2.ListMemoriesRequest(page_size=101), "page_size"),
        (account_pb2.ForgetMemoryRequest(memory_id="1234"), "memory_id"),
        (auth_pb2.BeginLoginRequest(provider="google"), "redirect_uri"),
        (auth_pb2.CompleteLoginRequest(state="s", code="c" * 4097), "code"),
        (auth_pb2.DevLoginRequest(email=""), "email"),
        (auth_pb2.DevLoginRequest(email="a@b.co", display_name="n" * 201), "display_name"),
        (auth_pb2.RefreshSessionRequest(), "refresh_token"),
        (auth_pb2.RefreshSessionRequest(refresh_token="t", refresh_token_in_cookie=True), "refresh_token"),
        (auth_pb2.LogoutRequest(), "refresh_token"),
        (auth_pb2.LogoutRequest(refresh_token="t", refresh_token_in_cookie=True), "refresh_token"),
        (memory_pb2.RememberRequest(text="x", agent_id="athena"), "scope"),
        (
            memory_pb2.RememberRequest(
                text="x", scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena", key="a b"
            ),
            "key",
        ),
        (memory_pb2.RecallRequest(query="x" * 4001, agent_id="athena"), "query"),
        (memory_pb2.RecallRequest(query="x", agent_id="athena", k=51), "k"),
        (memory_pb2.ForgetRequest(agent_id="athena"), "target"),
        (memory_pb2.ForgetRequest(query="tea"), "agent_id"),
        (memory_pb2.PutEphemeralRequest(namespace="a b", key="k", value_json="1"), "namespace"),
        (
            memory_pb2.PutEphemeralRequest(
                namespace="n", key="k", value_json="1", ttl=Duration(seconds=86_401)
            ),
            "ttl",
        ),
        (memory_pb2.GetEphemeralRequest(namespace="n", key=""), "key"),
        (memory_pb2.StartTurnRequest(chat=chat(), history_messages=201), "history_messages"),
        (memory_pb2.GetConversationRequest(conversation_id=ID, last_messages=-1), "last_messages"),
        (memory_pb2.AppendAssistantMessageRequest(conversation_id=ID), "message"),
        (
            memory_pb2.AppendAssistantMessageRequest(
                conversation_id=ID, message=chat_pb2.Message(agent_id="athena", content="x" * 200_001)
            ),
            "message.content",
        ),
        (
            memory_pb2.AppendAssistantMessageRequest(
                conversation_id=ID,
                message=chat_pb2.Message(
                    agent_id="athena", tool_calls=[chat_pb2.ToolCallRecord(call_id="c1", name="")]
                ),
            ),
            "message.tool_calls[0].name",
        ),
        (memory_pb2.SyncAgentsRequest(), "agents"),
        (
            memory_pb2.SyncAgentsRequest(agents=[memory_pb2.AgentDefinition(id="a", name="")]),
            "agents[0].name",
        ),
    ],
)
def test_every_contract_names_the_field_of_a_broken_rule(message: Message, field: str) -> None:
    assert refused(message).startswith(f"{field}: ")


def test_rules_across_fields_name_them_in_their_message() -> None:
    twice = [chat_pb2.ToolCallRecord(call_id="c1", name="a"), chat_pb2.ToolCallRecord(call_id="c1", name="b")]
    message = chat_pb2.Message(agent_id="athena", tool_calls=twice)
    assert "call_id must be unique" in refused(
        memory_pb2.AppendAssistantMessageRequest(conversation_id=ID, message=message)
    )
    agents = [memory_pb2.AgentDefinition(id="a", name="A"), memory_pb2.AgentDefinition(id="a", name="B")]
    assert "ids must be unique" in refused(memory_pb2.SyncAgentsRequest(agents=agents))
