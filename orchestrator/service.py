"""The orchestrator's two doors to a turn, both `TurnRunner` → one event per domain event:

- `athena.chat.v1.ChatService/Chat`, the public chat stream: the edge routes it here directly, so an
  answer's text crosses one Python process between the model and the client. A turn is admitted under the
  user's limits (`orchestrator.limits`) before anything else happens.
- `athena.orchestrator.v1.OrchestratorService/Run`, the same turn for services inside the mesh, under the
  same limits.

The rest of ChatService (agents, conversations) is the router's; the edge routes each method where it is
served.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from athena.chat.v1 import chat_pb2
from athena.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from mesh.context import current_call, principal
from orchestrator import events
from orchestrator.coalesce import Starting, coalesced
from orchestrator.limits import Limiter
from orchestrator.metrics import ACTIVE_STREAMS, TURNS_STARTING
from orchestrator.records import NewTurn
from orchestrator.turn import TurnRunner

Context = grpc.aio.ServicerContext[Any, Any]


class Turns:
    """Runs admitted turns as public chat events."""

    def __init__(
        self,
        runner: TurnRunner,
        limiter: Limiter,
        *,
        coalesce_seconds: float = 0.0,
        busy_coalesce_seconds: float = 0.0,
    ) -> None:
        """Text waits `coalesce_seconds` for more to go out with it, up to `busy_coalesce_seconds` while
        other turns wait for their first text (`orchestrator.coalesce`)."""
        self._runner = runner
        self._limiter = limiter
        self._coalesce_seconds = coalesce_seconds
        self._busy_coalesce_seconds = busy_coalesce_seconds
        self._starting = Starting()
        # Read when scraped (nothing per turn); one `Turns` serves a process.
        TURNS_STARTING.set_function(lambda: self._starting.waiting)

    async def run(self, chat: chat_pb2.ChatRequest) -> AsyncGenerator[chat_pb2.ChatResponse, None]:
        user_id = principal().user_id
        turn = NewTurn(
            agent_id=chat.agent_id,
            text=chat.text,
            conversation_id=chat.conversation_id,
            client_request_id=chat.client_request_id or _request_id(chat),
        )
        # The text's embedding for memory's recall is made while the turn is admitted (not for a user just
        # refused: their turn is likely refused again, and the embedding would be paid for all the same).
        embedding = None if self._limiter.refusing(user_id) else self._runner.embedding(turn)
        start = self._starting.begin()
        try:
            if embedding is not None:
                # One step for the embedding's task first: its request is on its way before admission's.
                await asyncio.sleep(0)
            async with self._limiter.stream(user_id):
                with ACTIVE_STREAMS.track_inprogress():
                    # `aclosing`: if the client goes away while we wait on it, the turn is closed (and its
                    # model call with it) now, not whenever the generator happens to be collected.
                    turn_events = coalesced(
                        self._runner.run(user_id, turn, embedding),
                        self._coalesce_seconds,
                        start,
                        self._busy_coalesce_seconds,
                    )
                    async with aclosing(turn_events):
                        async for event in turn_events:
                            yield chat_event(event)
        finally:
            start.first_text()  # or none: the turn waits no longer
            if embedding is not None:
                embedding.cancel()


def _request_id(chat: chat_pb2.ChatRequest) -> str:
    """The id a Chat without a client request id is stored under: made from the call's request id, which
    the edge sets once and keeps when it retries the call on another replica (so a retried turn is stored
    once), and from the request itself (so a client reusing an `x-request-id` for another message is not
    taken for a retry). Hashed: a client request id keeps the contract's form."""
    call = current_call.get()
    assert call is not None, "a turn runs inside an RPC"
    identity = "\0".join((call.request_id, chat.agent_id, chat.conversation_id, chat.text))
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


class ChatServicer:
    """The public `ChatService.Chat`; the router serves the service's other methods (`add_to_server`)."""

    def __init__(self, turns: Turns) -> None:
        self._turns = turns

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        async with aclosing(self._turns.run(request)) as answer:
            async for event in answer:
                yield event

    @staticmethod
    def add_to_server(servicer: ChatServicer, server: grpc.aio.Server) -> None:
        """Registers Chat alone: the service's other methods answer UNIMPLEMENTED here."""
        chat = grpc.unary_stream_rpc_method_handler(
            servicer.Chat,
            request_deserializer=chat_pb2.ChatRequest.FromString,
            response_serializer=chat_pb2.ChatResponse.SerializeToString,
        )
        service = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Chat": chat}),))


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """`Run`: the same turn for callers inside the mesh."""

    def __init__(self, turns: Turns) -> None:
        self._turns = turns

    async def Run(
        self, request: orchestrator_pb2.RunRequest, context: Context
    ) -> AsyncIterator[orchestrator_pb2.RunResponse]:
        async with aclosing(self._turns.run(request.chat)) as answer:
            async for event in answer:
                yield orchestrator_pb2.RunResponse(event=event)


def _usage(usage: events.Usage) -> chat_pb2.Usage:
    return chat_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def chat_event(event: events.TurnEvent) -> chat_pb2.ChatResponse:
    """A domain event as the public `ChatResponse`."""
    match event:
        case events.ConversationStarted():
            return chat_pb2.ChatResponse(
                conversation_started=chat_pb2.ConversationStarted(
                    conversation_id=event.conversation_id,
                    user_message_id=event.user_message_id,
                    assistant_message_id=event.assistant_message_id,
                    agent_id=event.agent_id,
                    model=event.model,
                    offline_model=event.offline_model,
                    title=event.title,
                )
            )
        case events.MemoriesRecalled():
            return chat_pb2.ChatResponse(
                memories_recalled=chat_pb2.MemoriesRecalled(
                    memories=[
                        chat_pb2.RecalledMemory(
                            id=memory.id,
                            text=memory.text,
                            scope=memory.scope.value,
                            similarity=memory.similarity,
                            score=memory.score,
                            stage=memory.stage,
                        )
                        for memory in event.memories
                    ]
                )
            )
        case events.TextDelta():
            return chat_pb2.ChatResponse(
                text_delta=chat_pb2.TextDelta(text=event.text, agent_id=event.agent_id)
            )
        case events.ToolCallStarted():
            return chat_pb2.ChatResponse(
                tool_call=chat_pb2.ToolCall(
                    call_id=event.call_id,
                    name=event.name,
                    arguments_json=event.arguments_json,
                    agent_id=event.agent_id,
                    handoff=event.handoff,
                )
            )
        case events.ToolCallFinished():
            return chat_pb2.ChatResponse(
                tool_result=chat_pb2.ToolResult(
                    call_id=event.call_id,
                    name=event.name,
                    result_json=event.result_json,
                    is_error=event.is_error,
                )
            )
        case events.Handoff():
            return chat_pb2.ChatResponse(
                handoff=chat_pb2.Handoff(
                    from_agent_id=event.from_agent_id, to_agent_id=event.to_agent_id, reason=event.reason
                )
            )
        case events.MessageCompleted():
            completed = chat_pb2.MessageCompleted(
                message_id=event.message_id,
                agent_id=event.agent_id,
                model=event.model,
                usage=_usage(event.usage),
                content=event.content,
            )
            if event.time_to_first_token is not None:
                ttft = Duration()
                ttft.FromNanoseconds(round(event.time_to_first_token * 1e9))
                completed.time_to_first_token.CopyFrom(ttft)
            return chat_pb2.ChatResponse(message_completed=completed)
    raise TypeError(f"unknown turn event {event!r}")
