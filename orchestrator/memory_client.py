"""`MemoryGateway` and `AgentStore` (orchestrator.ports) over memory's gRPC services.

Translates the records of `orchestrator.records` to memory's Protobuf messages and back. Every call goes
through `mesh.clients.call`, which forwards the caller's token, request id and remaining deadline and
raises peer statuses as `mesh.errors` exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from mesh.clients import call
from orchestrator.catalog import AgentSpec
from orchestrator.records import (
    AssistantMessage,
    Handoff,
    HistoryMessage,
    Memory,
    NewTurn,
    PastMessage,
    Role,
    Scope,
    StoredMemory,
    ToolCallRecord,
    TurnStart,
    TurnState,
)

_SCOPES = {Scope.USER: account_pb2.MEMORY_SCOPE_USER, Scope.AGENT: account_pb2.MEMORY_SCOPE_AGENT}
_SCOPE_NAMES = {value: key for key, value in _SCOPES.items()}
_STAGES = {memory_pb2.RECALL_STAGE_VECTOR: "vector", memory_pb2.RECALL_STAGE_KEYWORD: "keyword"}
_ROLES = {chat_pb2.ROLE_USER: Role.USER, chat_pb2.ROLE_ASSISTANT: Role.ASSISTANT}


class GrpcMemoryGateway:
    """Memory's services on one channel."""

    def __init__(
        self, channel: grpc.aio.Channel, *, timeout: float = 5.0, detached_timeout: float = 5.0
    ) -> None:
        self._memories = memory_pb2_grpc.MemoryServiceStub(channel)
        self._conversations = memory_pb2_grpc.ConversationServiceStub(channel)
        self._agents = memory_pb2_grpc.AgentServiceStub(channel)
        self._timeout = timeout
        self._detached_timeout = detached_timeout

    async def start_turn(
        self, turn: NewTurn, history_messages: int, lease_seconds: float = 6.0, recall_k: int | None = None
    ) -> TurnStart:
        request = memory_pb2.StartTurnRequest(
            chat=chat_pb2.ChatRequest(
                agent_id=turn.agent_id,
                conversation_id=turn.conversation_id,
                text=turn.text,
                client_request_id=turn.client_request_id,
            ),
            history_messages=history_messages,
            lease=_duration(lease_seconds),
            recall=_turn_recall(turn, recall_k) if recall_k is not None else None,
        )
        response = await call(self._conversations.StartTurn, request, timeout_seconds=self._timeout)
        return TurnStart(
            conversation_id=response.conversation.id,
            title=response.conversation.title,
            message_id=response.message.id,
            enabled_agent_ids=frozenset(response.enabled_agent_ids),
            answer_id=response.answer_id,
            state=_TURN_STATES.get(response.state, TurnState.RUNNING),
            answer=_answer(response.answer) if response.HasField("answer") else None,
            history=tuple(_history(message) for message in response.history if message.role in _ROLES),
            replayed=response.replayed,
            memories=tuple(_memory(result) for result in response.memories),
            recall_failed=response.recall_failed,
        )

    async def renew_turn(self, message_id: str, lease_seconds: float) -> None:
        await call(
            self._conversations.RenewTurn,
            memory_pb2.RenewTurnRequest(message_id=message_id, lease=_duration(lease_seconds)),
            timeout_seconds=self._timeout,
        )

    async def append_assistant_message(
        self, conversation_id: str, message: AssistantMessage, *, detached: bool = False
    ) -> None:
        await call(
            self._conversations.AppendAssistantMessage,
            append_request(conversation_id, message),
            timeout_seconds=self._detached_timeout if detached else self._timeout,
            detached=detached,
        )

    async def deliver_answer(
        self,
        user_id: str,
        conversation_id: str,
        message: AssistantMessage,
        credentials: Sequence[tuple[str, str]],
    ) -> None:
        """Stores `user_id`'s answer for no caller (the outbox, with the service key's `credentials`)."""
        await call(
            self._conversations.DeliverAnswer,
            memory_pb2.DeliverAnswerRequest(user_id=user_id, append=append_request(conversation_id, message)),
            timeout_seconds=self._timeout,
            metadata=credentials,
        )

    async def recall(self, query: str, agent_id: str, k: int) -> list[Memory]:
        response = await call(
            self._memories.Recall,
            memory_pb2.RecallRequest(query=query, agent_id=agent_id, k=k),
            timeout_seconds=self._timeout,
        )
        return [_memory(result) for result in response.results]

    async def recall_conversations(
        self,
        query: str,
        *,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        k: int = 8,
        exclude_conversation_id: str = "",
    ) -> list[PastMessage]:
        request = memory_pb2.RecallConversationsRequest(
            query=query, agent_id=agent_id or "", k=k, exclude_conversation_id=exclude_conversation_id
        )
        if since is not None:
            request.since.FromDatetime(since)
        if until is not None:
            request.until.FromDatetime(until)
        response = await call(self._conversations.RecallConversations, request, timeout_seconds=self._timeout)
        return [_past_message(result) for result in response.results if result.message.role in _ROLES]

    async def remember(self, text: str, scope: Scope, agent_id: str, key: str = "") -> StoredMemory:
        response = await call(
            self._memories.Remember,
            memory_pb2.RememberRequest(text=text, scope=_SCOPES[scope], agent_id=agent_id, key=key),
            timeout_seconds=self._timeout,
        )
        memory = response.memory
        return StoredMemory(
            id=memory.id,
            text=memory.text,
            scope=_SCOPE_NAMES.get(memory.scope, scope),
            key=memory.key,
            created=response.created,
        )

    async def forget(self, query: str, agent_id: str) -> list[str]:
        response = await call(
            self._memories.Forget,
            memory_pb2.ForgetRequest(query=query, agent_id=agent_id, limit=1),
            timeout_seconds=self._timeout,
        )
        return list(response.forgotten_ids)

    async def put_ephemeral(self, namespace: str, key: str, value_json: str, ttl_seconds: float) -> None:
        await call(
            self._memories.PutEphemeral,
            memory_pb2.PutEphemeralRequest(
                namespace=namespace, key=key, value_json=value_json, ttl=_duration(ttl_seconds)
            ),
            timeout_seconds=self._timeout,
        )

    async def get_ephemeral(self, namespace: str, key: str) -> str | None:
        response = await call(
            self._memories.GetEphemeral,
            memory_pb2.GetEphemeralRequest(namespace=namespace, key=key),
            timeout_seconds=self._timeout,
        )
        return response.value_json if response.found else None

    async def sync_agents(self, agents: Sequence[AgentSpec], credentials: Sequence[tuple[str, str]]) -> None:
        """Replaces memory's catalog. Runs at start-up, outside any call: `credentials` is the metadata."""
        await call(
            self._agents.SyncAgents,
            sync_request(agents),
            timeout_seconds=self._timeout,
            metadata=credentials,
        )


def sync_request(agents: Sequence[AgentSpec]) -> memory_pb2.SyncAgentsRequest:
    """The catalog as memory's SyncAgents takes it (and as its field rules judge it)."""
    return memory_pb2.SyncAgentsRequest(
        agents=[
            memory_pb2.AgentDefinition(
                id=agent.id,
                name=agent.name,
                description=agent.description,
                system_prompt=agent.system_prompt,
                user_prompt=agent.user_prompt,
                model=agent.model,
                accent_token=agent.accent_token,
                enabled=agent.enabled,
            )
            for agent in agents
        ]
    )


_TURN_STATES = {
    memory_pb2.TURN_STATE_ANSWER: TurnState.ANSWER,
    memory_pb2.TURN_STATE_RUNNING: TurnState.RUNNING,
    memory_pb2.TURN_STATE_DONE: TurnState.DONE,
}


def append_request(
    conversation_id: str, message: AssistantMessage
) -> memory_pb2.AppendAssistantMessageRequest:
    record = chat_pb2.Message(
        id=message.id,
        role=chat_pb2.ROLE_ASSISTANT,
        agent_id=message.agent_id,
        content=message.content,
        tool_calls=[
            chat_pb2.ToolCallRecord(
                call_id=tool_call.call_id,
                name=tool_call.name,
                arguments_json=tool_call.arguments_json,
                result_json=tool_call.result_json,
                is_error=tool_call.is_error,
                handoff=_handoff(tool_call.handoff) if tool_call.handoff is not None else None,
            )
            for tool_call in message.tool_calls
        ],
        status=chat_pb2.MESSAGE_STATUS_FAILED if message.failed else chat_pb2.MESSAGE_STATUS_COMPLETE,
        error=message.error,
    )
    return memory_pb2.AppendAssistantMessageRequest(conversation_id=conversation_id, message=record)


def _answer(message: chat_pb2.Message) -> AssistantMessage:
    return AssistantMessage(
        id=message.id,
        agent_id=message.agent_id,
        content=message.content,
        tool_calls=tuple(
            ToolCallRecord(
                call_id=record.call_id,
                name=record.name,
                arguments_json=record.arguments_json,
                result_json=record.result_json,
                is_error=record.is_error,
                handoff=Handoff(
                    record.handoff.from_agent_id, record.handoff.to_agent_id, record.handoff.reason
                )
                if record.HasField("handoff")
                else None,
            )
            for record in message.tool_calls
        ),
        error=message.error if message.status == chat_pb2.MESSAGE_STATUS_FAILED else "",
    )


def _turn_recall(turn: NewTurn, k: int) -> memory_pb2.TurnRecall:
    recall = memory_pb2.TurnRecall(k=k)
    if turn.embedding is not None:
        recall.embedding.extend(turn.embedding.vector)
        recall.embedding_model = turn.embedding.model
    return recall


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _history(message: chat_pb2.Message) -> HistoryMessage:
    return HistoryMessage(
        id=message.id,
        role=_ROLES[message.role],
        agent_id=message.agent_id,
        content=message.content,
        failed=message.status == chat_pb2.MESSAGE_STATUS_FAILED,
        created_at=message.created_at.ToDatetime() if message.HasField("created_at") else None,
    )


def _handoff(handoff: Handoff) -> chat_pb2.Handoff:
    return chat_pb2.Handoff(
        from_agent_id=handoff.from_agent_id, to_agent_id=handoff.to_agent_id, reason=handoff.reason
    )


def _memory(result: memory_pb2.RecallResult) -> Memory:
    return Memory(
        id=result.memory.id,
        text=result.memory.text,
        scope=_SCOPE_NAMES.get(result.memory.scope, Scope.USER),
        agent_id=result.memory.agent_id,
        similarity=result.similarity,
        score=result.score,
        stage=_STAGES.get(result.stage, ""),
        valid_from=result.memory.valid_from.ToDatetime().date().isoformat()
        if result.memory.HasField("valid_to") and result.memory.HasField("valid_from")
        else "",
        valid_to=result.memory.valid_to.ToDatetime().date().isoformat()
        if result.memory.HasField("valid_to")
        else "",
    )


def _past_message(result: memory_pb2.RecalledMessage) -> PastMessage:
    message = result.message
    return PastMessage(
        conversation_id=result.conversation_id,
        message_id=message.id,
        role=_ROLES[message.role],
        agent_id=message.agent_id,
        text=message.content,
        at=message.created_at.ToDatetime(UTC),
        score=result.score,
        stage=_STAGES.get(result.stage, ""),
    )
