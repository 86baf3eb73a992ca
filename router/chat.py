"""ChatService: thin translation between the public API and the orchestrator and memory services.

Field rules are the contract's (`buf.validate` annotations, enforced by the shared interceptor before a
handler runs); here a Chat only gains a client request id when it has none, so that retrying it on
another orchestrator replica stores its message once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.memory.v1 import memory_pb2
from athena.orchestrator.v1 import orchestrator_pb2
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from mesh import clients
from mesh.context import principal
from mesh.errors import Unavailable
from mesh.retry import first_item_retrying, log_retry
from router.limits import Limiter
from router.peers import Peers
from router.settings import RouterSettings

Context = grpc.aio.ServicerContext[Any, Any]


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, peers: Peers, limiter: Limiter, settings: RouterSettings) -> None:
        self._peers = peers
        self._limiter = limiter
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
        chat = chat_pb2.ChatRequest()
        chat.CopyFrom(request)
        chat.client_request_id = chat.client_request_id or uuid.uuid4().hex
        run = orchestrator_pb2.RunRequest(chat=chat)
        async with self._limiter.stream(principal().user_id):
            # The Run carries the caller's remaining deadline and none of its own: a turn lasts as long
            # as the model takes, bounded by the orchestrator's model timeouts.
            events = first_item_retrying(
                lambda: clients.stream(self._peers.orchestrator.Run, run), self._retry_policy()
            )
            started = False
            try:
                async with aclosing(events):
                    async for response in events:
                        started = True
                        yield response.event
            except Unavailable as exc:
                if not started:
                    raise
                # The first event said the message is stored; the answer stopped on the way.
                cause = exc.message.split("; try again")[0]
                raise Unavailable(
                    f"the answer was interrupted ({cause}); your message is stored, try again"
                ) from exc

    def _retry_policy(self) -> AsyncRetrying:
        """Before the first event nothing reached the client and the message is stored under its client
        request id, so another replica may take the turn; after it, the client has seen part of an answer
        and decides itself."""
        return AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self._settings.chat_attempts),
            before_sleep=log_retry("a turn on the orchestrator pool"),
            reraise=True,
        )

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
