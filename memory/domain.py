"""The memory service's records, and the checks of what callers send that the contract cannot state (the
embedding dimension is a deployment setting; JSON must parse). No I/O, no gRPC.

Field rules (lengths, ids, ranges) are declared once in memory.proto and enforced before a handler runs.
Every failure here names the request field (`mesh.errors.InvalidArgument(field, problem)`), and all of it
runs before anything is written, so a bad request never leaves a partial write behind.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mesh.errors import InvalidArgument

TITLE_LENGTH = 60
"""A new conversation's title is the start of its first message, at most this many characters."""


class Scope(enum.Enum):
    """Who can see a memory."""

    USER = "user"
    """Every agent of the user."""
    AGENT = "agent"
    """Only the agent that stored it."""


class Source(enum.Enum):
    """How a memory came to be remembered."""

    EXPLICIT = "explicit"
    """An agent was asked to remember it (remember/note), or the person wrote or corrected it."""
    INFERRED = "inferred"
    """Extracted after a turn from what the person said in passing (`memory.extraction`)."""


class Stage(enum.Enum):
    """Which retrieval stage found a memory."""

    VECTOR = "vector"
    KEYWORD = "keyword"


class Role(enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(enum.Enum):
    COMPLETE = "complete"
    FAILED = "failed"


USER_SCOPE = "user"
"""`vector_memory.agent_scope` of user-global memories; agent-scoped ones hold the agent id."""


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """One long-term memory."""

    id: str
    text: str
    scope: Scope
    agent_id: str
    """The agent that stored it (for agent scope, also the only one that sees it)."""
    key: str
    """Empty when the memory has no key."""
    created_at: datetime
    updated_at: datetime
    source: Source = Source.EXPLICIT
    valid_from: datetime | None = None
    """Since when the fact holds (None: since `created_at`)."""
    valid_to: datetime | None = None
    """None while current; when a newer version superseded it, or it was invalidated."""
    supersedes_id: str = ""
    """The version this one replaced ("" for a first version)."""
    conversation_id: str = ""
    message_id: str = ""
    """The user message that stated it (inferred facts)."""
    confidence: float = 1.0

    @property
    def current(self) -> bool:
        return self.valid_to is None


@dataclass(frozen=True, slots=True)
class RecallHit:
    """A memory found by recall, with how well it fits."""

    memory: MemoryRecord
    similarity: float
    """Cosine similarity (vector stage) or normalised text rank in 0..1 (keyword stage)."""
    score: float
    """`similarity` blended with recency."""
    stage: Stage


@dataclass(frozen=True, slots=True)
class Handoff:
    """The conversation moved from one agent to another."""

    from_agent_id: str
    to_agent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call made while writing an assistant message, with its result."""

    call_id: str
    name: str
    arguments_json: str
    result_json: str
    is_error: bool
    handoff: Handoff | None = None
    """Set when the call handed the conversation to another agent."""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    role: Role
    agent_id: str
    content: str
    tool_calls: tuple[ToolCall, ...]
    status: MessageStatus
    error: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: str
    agent_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: tuple[MessageRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentDefinition:
    """An agent of the catalog (global, not per user)."""

    id: str
    name: str
    description: str = ""
    system_prompt: str = ""
    user_prompt: str = ""
    model: str = ""
    accent_token: str = ""
    enabled: bool = True
    """Whether the catalog offers the agent at all."""


@dataclass(frozen=True, slots=True)
class UserAgent:
    """A catalog agent as one user sees it."""

    definition: AgentDefinition
    enabled: bool
    """False when the user disabled it or the catalog did."""


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    deleted_rows: int = 0
    deleted_keys: int = 0


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A validated Remember request."""

    text: str
    scope: Scope
    agent_id: str
    key: str
    embedding: tuple[float, ...] | None = None

    @property
    def agent_scope(self) -> str:
        return USER_SCOPE if self.scope is Scope.USER else self.agent_id


@dataclass(frozen=True, slots=True)
class NewTurn:
    """A validated StartTurn request."""

    conversation_id: str | None
    """None starts a new conversation."""
    agent_id: str
    text: str
    client_request_id: str | None
    history_messages: int = 0
    lease_seconds: float = 30.0
    """How long the caller holds the turn while it answers (renewed with RenewTurn)."""


class TurnState(enum.Enum):
    """Where a turn stands (memory.proto's TurnState)."""

    ANSWER = "answer"
    """The caller answers it now (a new turn, or one whose holder stopped renewing its lease)."""
    RUNNING = "running"
    """Another caller holds it: wait and ask again."""
    DONE = "done"
    """It was answered: replay the stored answer."""


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What a turn needs from memory before it calls the model."""

    conversation: ConversationRecord
    message: MessageRecord
    """The stored user message."""
    replayed: bool
    """True when an earlier request with the same client request id stored `message`."""
    enabled_agent_ids: tuple[str, ...]
    """Agents the caller may talk to now, in catalog order."""
    state: TurnState
    answer_id: str
    """The id the answer is (to be) stored under."""
    answer: MessageRecord | None = None
    """With `TurnState.DONE`, the stored answer."""
    history: tuple[MessageRecord, ...] = ()
    """Messages of the conversation before `message`, oldest first."""


@dataclass(frozen=True, slots=True)
class NewAssistantMessage:
    """A validated AppendAssistantMessage request."""

    conversation_id: str
    message_id: str
    agent_id: str
    content: str
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)
    status: MessageStatus = MessageStatus.COMPLETE
    error: str = ""


# Validators: each returns the normalised value or raises InvalidArgument naming `field_name`.


def optional_embedding(
    values: Sequence[float], dimension: int, field_name: str = "embedding"
) -> tuple[float, ...] | None:
    """A caller's precomputed embedding: absent, or exactly `dimension` finite numbers, not all zero."""
    if not values:
        return None
    if len(values) != dimension:
        raise InvalidArgument(field_name, f"must have {dimension} dimensions (got {len(values)})")
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument(field_name, "must hold finite numbers")
    if not any(values):
        raise InvalidArgument(field_name, "must not be all zeros (cosine is undefined)")
    return tuple(values)


def require_json(value: str, field_name: str) -> str:
    """`value` when it is JSON (its size is the contract's rule)."""
    try:
        json.loads(value)
    except ValueError:
        raise InvalidArgument(field_name, "must be JSON") from None
    return value


def conversation_title(text: str) -> str:
    """The first line-folded `TITLE_LENGTH` characters of the first message, cut at a word if possible."""
    folded = " ".join(text.split())
    if len(folded) <= TITLE_LENGTH:
        return folded
    cut = folded[:TITLE_LENGTH]
    space = cut.rfind(" ")
    return (cut[:space] if space > TITLE_LENGTH // 2 else cut).rstrip() + "…"


def validate_tool_calls(
    calls: Sequence[ToolCall], field_name: str = "message.tool_calls"
) -> tuple[ToolCall, ...]:
    """The calls, when their arguments and results are JSON (names, sizes and unique ids are the
    contract's rules)."""
    for index, call in enumerate(calls):
        for name, value in (("arguments_json", call.arguments_json), ("result_json", call.result_json)):
            if value:
                require_json(value, f"{field_name}[{index}].{name}")
    return tuple(calls)
