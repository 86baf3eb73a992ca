"""OrchestratorService: RunRequest in → `TurnRunner` → one RunResponse per domain event out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from athena.chat.v1 import chat_pb2
from athena.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from mesh.context import principal
from orchestrator import events
from orchestrator.coalesce import coalesced
from orchestrator.records import NewTurn
from orchestrator.turn import TurnRunner


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runner: TurnRunner, *, coalesce_seconds: float = 0.0) -> None:
        self._runner = runner
        self._coalesce_seconds = coalesce_seconds

    async def Run(
        self, request: orchestrator_pb2.RunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[orchestrator_pb2.RunResponse]:
        chat = request.chat
        turn = NewTurn(
            agent_id=chat.agent_id,
            text=chat.text,
            conversation_id=chat.conversation_id,
            client_request_id=chat.client_request_id,
        )
        # `aclosing`: if the client goes away while we wait on it, the turn is closed (and its model call
        # with it) now, not whenever the generator happens to be collected.
        turn_events = coalesced(self._runner.run(principal().user_id, turn), self._coalesce_seconds)
        async with aclosing(turn_events):
            async for event in turn_events:
                yield orchestrator_pb2.RunResponse(event=chat_event(event))


def _usage(usage: events.Usage) -> chat_pb2.Usage:
    return chat_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def chat_event(event: events.TurnEvent) -> chat_pb2.ChatResponse:
    """A domain event as the public `ChatResponse` the router passes on."""
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
