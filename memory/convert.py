"""Domain records ↔ protobuf messages. The only module besides memory.service that imports `*_pb2`."""

from __future__ import annotations

from datetime import datetime

from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from memory.conversation_recall import MessageHit
from memory.domain import (
    AgentDefinition,
    ConversationRecord,
    Handoff,
    MemoryRecord,
    MessageRecord,
    MessageStatus,
    RecallHit,
    Role,
    Scope,
    Source,
    Stage,
    ToolCall,
    TurnStart,
    TurnState,
    UserAgent,
)

_SCOPES = {account_pb2.MEMORY_SCOPE_USER: Scope.USER, account_pb2.MEMORY_SCOPE_AGENT: Scope.AGENT}
_SCOPE_TO_PROTO = {scope: value for value, scope in _SCOPES.items()}
_SOURCES = {
    Source.EXPLICIT: account_pb2.MEMORY_SOURCE_EXPLICIT,
    Source.INFERRED: account_pb2.MEMORY_SOURCE_INFERRED,
}
_STAGES = {Stage.VECTOR: memory_pb2.RECALL_STAGE_VECTOR, Stage.KEYWORD: memory_pb2.RECALL_STAGE_KEYWORD}
_ROLES = {Role.USER: chat_pb2.ROLE_USER, Role.ASSISTANT: chat_pb2.ROLE_ASSISTANT}
_STATUSES = {
    MessageStatus.COMPLETE: chat_pb2.MESSAGE_STATUS_COMPLETE,
    MessageStatus.FAILED: chat_pb2.MESSAGE_STATUS_FAILED,
}


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def scope_from_proto(value: int) -> Scope | None:
    """None for MEMORY_SCOPE_UNSPECIFIED and values this build does not know."""
    return next((scope for proto, scope in _SCOPES.items() if proto == value), None)


def status_from_proto(value: int) -> MessageStatus | None:
    if value in (chat_pb2.MESSAGE_STATUS_UNSPECIFIED, chat_pb2.MESSAGE_STATUS_COMPLETE):
        return MessageStatus.COMPLETE
    if value == chat_pb2.MESSAGE_STATUS_FAILED:
        return MessageStatus.FAILED
    return None


def memory_to_proto(memory: MemoryRecord) -> account_pb2.Memory:
    message = account_pb2.Memory(
        id=memory.id,
        text=memory.text,
        scope=_SCOPE_TO_PROTO[memory.scope],
        agent_id=memory.agent_id,
        key=memory.key,
        created_at=timestamp(memory.created_at),
        updated_at=timestamp(memory.updated_at),
        source=_SOURCES[memory.source],
        valid_from=timestamp(memory.valid_from or memory.created_at),
        supersedes_id=memory.supersedes_id,
        conversation_id=memory.conversation_id,
        message_id=memory.message_id,
        confidence=memory.confidence,
    )
    if memory.valid_to is not None:
        message.valid_to.CopyFrom(timestamp(memory.valid_to))
    return message


def hit_to_proto(hit: RecallHit) -> memory_pb2.RecallResult:
    return memory_pb2.RecallResult(
        memory=memory_to_proto(hit.memory),
        similarity=hit.similarity,
        score=hit.score,
        stage=_STAGES[hit.stage],
    )


def tool_call_from_proto(record: chat_pb2.ToolCallRecord) -> ToolCall:
    return ToolCall(
        call_id=record.call_id,
        name=record.name,
        arguments_json=record.arguments_json,
        result_json=record.result_json,
        is_error=record.is_error,
        handoff=handoff_from_proto(record.handoff) if record.HasField("handoff") else None,
    )


def handoff_from_proto(handoff: chat_pb2.Handoff) -> Handoff:
    return Handoff(handoff.from_agent_id, handoff.to_agent_id, handoff.reason)


def handoff_to_proto(handoff: Handoff) -> chat_pb2.Handoff:
    return chat_pb2.Handoff(
        from_agent_id=handoff.from_agent_id, to_agent_id=handoff.to_agent_id, reason=handoff.reason
    )


def message_hit_to_proto(hit: MessageHit) -> memory_pb2.RecalledMessage:
    return memory_pb2.RecalledMessage(
        conversation_id=hit.found.conversation_id,
        message=message_to_proto(hit.found.message),
        similarity=hit.similarity,
        score=hit.score,
        stage=_STAGES[hit.stage],
    )


def message_to_proto(message: MessageRecord) -> chat_pb2.Message:
    return chat_pb2.Message(
        id=message.id,
        role=_ROLES[message.role],
        agent_id=message.agent_id,
        content=message.content,
        tool_calls=[
            chat_pb2.ToolCallRecord(
                call_id=c.call_id,
                name=c.name,
                arguments_json=c.arguments_json,
                result_json=c.result_json,
                is_error=c.is_error,
                handoff=handoff_to_proto(c.handoff) if c.handoff is not None else None,
            )
            for c in message.tool_calls
        ],
        created_at=timestamp(message.created_at),
        status=_STATUSES[message.status],
        error=message.error,
    )


def conversation_to_proto(conversation: ConversationRecord) -> chat_pb2.Conversation:
    return chat_pb2.Conversation(
        id=conversation.id,
        agent_id=conversation.agent_id,
        title=conversation.title,
        created_at=timestamp(conversation.created_at),
        updated_at=timestamp(conversation.updated_at),
        messages=[message_to_proto(m) for m in conversation.messages],
    )


def agent_from_proto(agent: memory_pb2.AgentDefinition) -> AgentDefinition:
    return AgentDefinition(
        id=agent.id,
        name=agent.name,
        description=agent.description,
        system_prompt=agent.system_prompt,
        user_prompt=agent.user_prompt,
        model=agent.model,
        accent_token=agent.accent_token,
        enabled=agent.enabled,
    )


def user_agent_to_proto(agent: UserAgent) -> chat_pb2.Agent:
    d = agent.definition
    return chat_pb2.Agent(
        id=d.id, name=d.name, description=d.description, accent_token=d.accent_token, enabled=agent.enabled
    )


_TURN_STATES = {
    TurnState.ANSWER: memory_pb2.TURN_STATE_ANSWER,
    TurnState.RUNNING: memory_pb2.TURN_STATE_RUNNING,
    TurnState.DONE: memory_pb2.TURN_STATE_DONE,
}


def turn_start_to_proto(start: TurnStart) -> memory_pb2.StartTurnResponse:
    return memory_pb2.StartTurnResponse(
        conversation=conversation_to_proto(start.conversation),
        message=message_to_proto(start.message),
        replayed=start.replayed,
        enabled_agent_ids=start.enabled_agent_ids,
        history=[message_to_proto(m) for m in start.history],
        state=_TURN_STATES[start.state],
        answer_id=start.answer_id,
        answer=message_to_proto(start.answer) if start.answer is not None else None,
    )
