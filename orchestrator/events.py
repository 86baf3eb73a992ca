"""The events of a turn, in the order a client sees them.

    ConversationStarted      once, after the user message is stored
    MemoriesRecalled         before the first text of each answering agent
    TextDelta*               pieces of the answer
    ToolCallStarted / ToolCallFinished   around each tool run (a handoff is a tool call too)
    Handoff                  after the handoff's ToolCallFinished (the record `records.Handoff`)
    MessageCompleted         last, after the assistant message is stored

`service` maps them to `athena.chat.v1.ChatResponse`; nothing here knows about Protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.records import Handoff, Memory, Usage

__all__ = [
    "ConversationStarted",
    "Handoff",
    "MemoriesRecalled",
    "MessageCompleted",
    "TextDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "TurnEvent",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class ConversationStarted:
    conversation_id: str
    user_message_id: str
    assistant_message_id: str
    agent_id: str
    model: str
    offline_model: bool
    title: str = ""


@dataclass(frozen=True, slots=True)
class MemoriesRecalled:
    memories: tuple[Memory, ...]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    call_id: str
    name: str
    arguments_json: str
    agent_id: str
    handoff: bool = False
    """True for a handoff call: its result is followed by a `Handoff`."""


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    call_id: str
    name: str
    result_json: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class MessageCompleted:
    message_id: str
    agent_id: str
    model: str
    usage: Usage
    time_to_first_token: float | None
    """Seconds from receiving the request to the first text delta; None when no text was produced."""
    content: str


TurnEvent = (
    ConversationStarted
    | MemoriesRecalled
    | TextDelta
    | ToolCallStarted
    | ToolCallFinished
    | Handoff
    | MessageCompleted
)
