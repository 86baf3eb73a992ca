"""The memory service as the orchestrator needs it: a small protocol, and its gRPC adapter.

`MemoryGateway` speaks the domain records of `orchestrator.records`; `GrpcMemoryGateway` translates them
to memory's Protobuf messages, forwards the caller's token, request id and remaining deadline on every
call (`mesh.clients.outgoing`), and maps peer statuses back into `mesh.errors` (`from_rpc_error`), once,
here. `orchestrator.fake_memory.InMemoryGateway` is the in-process implementation unit tests use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from mesh.clients import from_rpc_error, outgoing
from orchestrator.catalog import AgentSpec
from orchestrator.records import (
    AssistantMessage,
    HistoryMessage,
    Memory,
    Role,
    Scope,
    StoredMemory,
    UserMessage,
)


class MemoryGateway(Protocol):
    """What a turn and its tools ask of memory, always on behalf of the current caller."""

    async def agent_states(self) -> dict[str, bool]:
        """Every agent of memory's catalog → whether the caller may talk to it (enabled in the catalog and
        for the caller)."""
        ...

    async def append_user_message(
        self, *, conversation_id: str, agent_id: str, text: str, client_request_id: str
    ) -> UserMessage: ...

    async def append_assistant_message(
        self, conversation_id: str, message: AssistantMessage, *, detached: bool = False
    ) -> None:
        """Stores the answer. `detached` writes outlive the caller's deadline (storing a failed turn)."""
        ...

    async def history(self, conversation_id: str, last: int) -> list[HistoryMessage]:
        """The conversation's last `last` messages, oldest first."""
        ...

    async def recall(self, query: str, agent_id: str, k: int) -> list[Memory]: ...

    async def remember(self, text: str, scope: Scope, agent_id: str, key: str = "") -> StoredMemory: ...

    async def forget(self, query: str, agent_id: str) -> list[str]:
        """Deletes the memory that best fits `query`; returns the ids deleted."""
        ...

    async def put_ephemeral(self, namespace: str, key: str, value_json: str, ttl_seconds: float) -> None: ...

    async def get_ephemeral(self, namespace: str, key: str) -> str | None: ...


_SCOPES = {Scope.USER: account_pb2.MEMORY_SCOPE_USER, Scope.AGENT: account_pb2.MEMORY_SCOPE_AGENT}
_SCOPE_NAMES = {value: key for key, value in _SCOPES.items()}
_STAGES = {memory_pb2.RECALL_STAGE_VECTOR: "vector", memory_pb2.RECALL_STAGE_KEYWORD: "keyword"}
_ROLES = {chat_pb2.ROLE_USER: Role.USER, chat_pb2.ROLE_ASSISTANT: Role.ASSISTANT}


class GrpcMemoryGateway:
    """`MemoryGateway` over memory's gRPC services on one channel (also the catalog's `AgentStore`)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, timeout: float = 5.0, detached_timeout: float = 5.0
    ) -> None:
        self._memories = memory_pb2_grpc.MemoryServiceStub(channel)
        self._conversations = memory_pb2_grpc.ConversationServiceStub(channel)
        self._agents = memory_pb2_grpc.AgentServiceStub(channel)
        self._timeout = timeout
        self._detached_timeout = detached_timeout

    async def _call(self, method: Any, request: Any, *, detached: bool = False, **kwargs: Any) -> Any:
        if detached:
            call_kwargs = outgoing(timeout=self._detached_timeout, detached=True)
        else:
            call_kwargs = outgoing(timeout=self._timeout)
        try:
            return await method(request, **call_kwargs, **kwargs)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def agent_states(self) -> dict[str, bool]:
        response = await self._call(self._agents.ListAgents, memory_pb2.ListAgentsRequest())
        return {agent.id: agent.enabled for agent in response.agents}

    async def append_user_message(
        self, *, conversation_id: str, agent_id: str, text: str, client_request_id: str
    ) -> UserMessage:
        response = await self._call(
            self._conversations.AppendUserMessage,
            memory_pb2.AppendUserMessageRequest(
                conversation_id=conversation_id,
                agent_id=agent_id,
                text=text,
                client_request_id=client_request_id,
            ),
        )
        return UserMessage(
            conversation_id=response.conversation.id,
            message_id=response.message.id,
            replayed=response.replayed,
        )

    async def append_assistant_message(
        self, conversation_id: str, message: AssistantMessage, *, detached: bool = False
    ) -> None:
        record = chat_pb2.Message(
            id=message.id,
            role=chat_pb2.ROLE_ASSISTANT,
            agent_id=message.agent_id,
            content=message.content,
            tool_calls=[
                chat_pb2.ToolCallRecord(
                    call_id=call.call_id,
                    name=call.name,
                    arguments_json=call.arguments_json,
                    result_json=call.result_json,
                    is_error=call.is_error,
                )
                for call in message.tool_calls
            ],
            status=chat_pb2.MESSAGE_STATUS_FAILED if message.failed else chat_pb2.MESSAGE_STATUS_COMPLETE,
            error=message.error,
        )
        await self._call(
            self._conversations.AppendAssistantMessage,
            memory_pb2.AppendAssistantMessageRequest(conversation_id=conversation_id, message=record),
            detached=detached,
        )

    async def history(self, conversation_id: str, last: int) -> list[HistoryMessage]:
        response = await self._call(
            self._conversations.GetConversation,
            memory_pb2.GetConversationRequest(conversation_id=conversation_id, last_messages=last),
        )
        return [
            HistoryMessage(
                id=message.id,
                role=_ROLES[message.role],
                agent_id=message.agent_id,
                content=message.content,
                failed=message.status == chat_pb2.MESSAGE_STATUS_FAILED,
                created_at=message.created_at.ToDatetime() if message.HasField("created_at") else None,
            )
            for message in response.conversation.messages
            if message.role in _ROLES
        ]

    async def recall(self, query: str, agent_id: str, k: int) -> list[Memory]:
        response = await self._call(
            self._memories.Recall, memory_pb2.RecallRequest(query=query, agent_id=agent_id, k=k)
        )
        return [
            Memory(
                id=result.memory.id,
                text=result.memory.text,
                scope=_SCOPE_NAMES.get(result.memory.scope, Scope.USER),
                agent_id=result.memory.agent_id,
                similarity=result.similarity,
                score=result.score,
                stage=_STAGES.get(result.stage, ""),
            )
            for result in response.results
        ]

    async def remember(self, text: str, scope: Scope, agent_id: str, key: str = "") -> StoredMemory:
        response = await self._call(
            self._memories.Remember,
            memory_pb2.RememberRequest(text=text, scope=_SCOPES[scope], agent_id=agent_id, key=key),
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
        response = await self._call(
            self._memories.Forget, memory_pb2.ForgetRequest(query=query, agent_id=agent_id, limit=1)
        )
        return list(response.forgotten_ids)

    async def put_ephemeral(self, namespace: str, key: str, value_json: str, ttl_seconds: float) -> None:
        ttl = Duration()
        ttl.FromMilliseconds(int(ttl_seconds * 1000))
        await self._call(
            self._memories.PutEphemeral,
            memory_pb2.PutEphemeralRequest(namespace=namespace, key=key, value_json=value_json, ttl=ttl),
        )

    async def get_ephemeral(self, namespace: str, key: str) -> str | None:
        response = await self._call(
            self._memories.GetEphemeral, memory_pb2.GetEphemeralRequest(namespace=namespace, key=key)
        )
        return response.value_json if response.found else None

    async def sync_agents(self, agents: Sequence[AgentSpec], metadata: Sequence[tuple[str, str]]) -> None:
        """Replaces memory's catalog. Runs at start-up, outside any call: `metadata` holds the credentials."""
        request = memory_pb2.SyncAgentsRequest(
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
        try:
            await self._agents.SyncAgents(request, metadata=tuple(metadata), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
