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

from mesh.clients import from_rpc_error, outgoing
from mesh.context import principal
from mesh.errors import AthenaError, Unavailable
from router import validation
from router.limits import Limiter
from router.peers import Peers
from router.settings import RouterSettings

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, peers: Peers, settings: RouterSettings) -> None:
        self._peers = peers
        self._settings = settings
        self._limiter = Limiter(settings.limits(), peers.limit_store)

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
        async with self._limiter.stream(principal().user_id):
            attempts = self._settings.chat_attempts
            for attempt in range(1, attempts + 1):
                started = False
                # Carries the caller's remaining deadline; no deadline of its own (a turn lasts as long as
                # the model takes, bounded by the orchestrator's model timeouts).
                call = self._peers.orchestrator.Run(run, **outgoing())
                try:
                    async for response in call:
                        started = True
                        yield response.event
                    return
                except grpc.aio.AioRpcError as exc:
                    # Before the first event nothing reached the client and the message is stored under
                    # its client_request_id, so another replica may take the turn; after it, the client
                    # has seen part of an answer and must decide itself.
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and not started and attempt < attempts:
                        log.warning(
                            "orchestrator unavailable before the first event; retrying",
                            extra={"attempt": attempt, "error": exc.details()},
                        )
                        continue
                    raise _turn_error(exc) from exc
                finally:
                    # Ends the downstream turn (and its model call) when the client went away, even if
                    # it left while this generator waited to send rather than to receive.
                    call.cancel()

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


def _turn_error(exc: grpc.aio.AioRpcError) -> AthenaError:
    """The orchestrator's status as the client should see it. CANCELLED here never comes from our own
    caller (that cancels this handler instead): the orchestrator replica went away mid-turn."""
    if exc.code() == grpc.StatusCode.CANCELLED:
        return Unavailable("the orchestrator stopped during the turn; your message is stored, try again")
    return from_rpc_error(exc)
