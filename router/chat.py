"""ChatService's agents and conversations: thin translation between the public API and memory.

Chat itself is served by the orchestrator, and the edge routes it there: an answer's text then crosses one
Python process on its way from the model to the person. Field rules are the contract's (`buf.validate`
annotations, enforced by the shared interceptor before a handler runs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.memory.v1 import memory_pb2

from mesh import clients
from mesh.errors import Unimplemented
from router.peers import Peers
from router.settings import RouterSettings

Context = grpc.aio.ServicerContext[Any, Any]


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, peers: Peers, settings: RouterSettings) -> None:
        self._peers = peers
        self._settings = settings

    def _timeout(self) -> float:
        return self._settings.peer_timeout_seconds

    async def ListAgents(
        self, request: chat_pb2.ListAgentsRequest, context: Context
    ) -> chat_pb2.ListAgentsResponse:
        response = await clients.call(
            self._peers.agents.ListAgents, memory_pb2.ListAgentsRequest(), timeout_seconds=self._timeout()
        )
        return chat_pb2.ListAgentsResponse(agents=response.agents)

    async def SetAgentEnabled(
        self, request: chat_pb2.SetAgentEnabledRequest, context: Context
    ) -> chat_pb2.SetAgentEnabledResponse:
        response = await clients.call(
            self._peers.agents.SetAgentEnabled,
            memory_pb2.SetAgentEnabledRequest(agent_id=request.agent_id, enabled=request.enabled),
            timeout_seconds=self._timeout(),
        )
        return chat_pb2.SetAgentEnabledResponse(agent=response.agent)

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        raise Unimplemented(
            "Chat is served by the orchestrator: call it through the edge, which routes it there"
        )
        yield  # pragma: no cover (never reached: it makes this a server-streaming handler)

    async def ListConversations(
        self, request: chat_pb2.ListConversationsRequest, context: Context
    ) -> chat_pb2.ListConversationsResponse:
        response = await clients.call(
            self._peers.conversations.ListConversations,
            memory_pb2.ListConversationsRequest(page_size=request.page_size, page_token=request.page_token),
            timeout_seconds=self._timeout(),
        )
        return chat_pb2.ListConversationsResponse(
            conversations=response.conversations, next_page_token=response.next_page_token
        )

    async def GetConversation(
        self, request: chat_pb2.GetConversationRequest, context: Context
    ) -> chat_pb2.GetConversationResponse:
        response = await clients.call(
            self._peers.conversations.GetConversation,
            memory_pb2.GetConversationRequest(conversation_id=request.conversation_id),
            timeout_seconds=self._timeout(),
        )
        return chat_pb2.GetConversationResponse(conversation=response.conversation)

    async def DeleteConversation(
        self, request: chat_pb2.DeleteConversationRequest, context: Context
    ) -> chat_pb2.DeleteConversationResponse:
        await clients.call(
            self._peers.conversations.DeleteConversation,
            memory_pb2.DeleteConversationRequest(conversation_id=request.conversation_id),
            timeout_seconds=self._timeout(),
        )
        return chat_pb2.DeleteConversationResponse()
