"""ChatService: thin translation between the public API and the orchestrator and memory services."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.memory.v1 import memory_pb2
from athena.orchestrator.v1 import orchestrator_pb2

from mesh.clients import outgoing
from router import validation
from router.peers import Peers
from router.settings import RouterSettings

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, peers: Peers, settings: RouterSettings) -> None:
        self._peers = peers
        self._settings = settings

    def _unary(self) -> dict[str, Any]:
        return outgoing(timeout=self._settings.peer_timeout_seconds)

    async def ListAgents(
        self, request: chat_pb2.ListAgentsRequest, context: Context
    ) -> chat_pb2.ListAgentsResponse:
        response = await self._peers.agents.ListAgents(memory_pb2.ListAgentsRequest(), **self._unary())
        return chat_pb2.ListAgentsResponse(agents=response.agents)

    async def SetAgentEnabled(
        self, request: chat_pb2.SetAgentEnabledRequest, context: Context
    ) -> chat_pb2.SetAgentEnabledResponse:
        response = await self._peers.agents.SetAgentEnabled(
            memory_pb2.SetAgentEnabledRequest(
                agent_id=validation.agent_id(request.agent_id), enabled=request.enabled
            ),
            **self._unary(),
        )
        return chat_pb2.SetAgentEnabledResponse(agent=response.agent)

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        run = orchestrator_pb2.RunRequest(
            agent_id=validation.agent_id(request.agent_id),
            conversation_id=validation.object_id(request.conversation_id, "conversation_id", required=False),
            text=validation.message_text(request.text),
            # Retrying a turn is only safe when storing its message is idempotent: give every turn an id.
            client_request_id=validation.client_request_id(request.client_request_id) or uuid.uuid4().hex,
        )
        attempts = self._settings.chat_attempts
        for attempt in range(1, attempts + 1):
            started = False
            try:
                async for response in self._peers.orchestrator.Run(run, **outgoing()):
                    started = True
                    yield response.event
                return
            except grpc.aio.AioRpcError as exc:
                # Before the first event nothing reached the client, so another replica may take the turn;
                # after it, the client has seen part of an answer and must decide itself.
                if started or exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts:
                    raise
                log.warning(
                    "orchestrator unavailable before the first event; retrying", extra={"attempt": attempt}
                )

    async def ListConversations(
        self, request: chat_pb2.ListConversationsRequest, context: Context
    ) -> chat_pb2.ListConversationsResponse:
        response = await self._peers.conversations.ListConversations(
            memory_pb2.ListConversationsRequest(
                page_size=validation.page_size(request.page_size),
                page_token=validation.page_token(request.page_token),
            ),
            **self._unary(),
        )
        return chat_pb2.ListConversationsResponse(
            conversations=response.conversations, next_page_token=response.next_page_token
        )

    async def GetConversation(
        self, request: chat_pb2.GetConversationRequest, context: Context
    ) -> chat_pb2.GetConversationResponse:
        response = await self._peers.conversations.GetConversation(
            memory_pb2.GetConversationRequest(
                conversation_id=validation.object_id(request.conversation_id, "conversation_id")
            ),
            **self._unary(),
        )
        return chat_pb2.GetConversationResponse(conversation=response.conversation)

    async def DeleteConversation(
        self, request: chat_pb2.DeleteConversationRequest, context: Context
    ) -> chat_pb2.DeleteConversationResponse:
        await self._peers.conversations.DeleteConversation(
            memory_pb2.DeleteConversationRequest(
                conversation_id=validation.object_id(request.conversation_id, "conversation_id")
            ),
            **self._unary(),
        )
        return chat_pb2.DeleteConversationResponse()
