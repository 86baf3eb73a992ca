"""The orchestrator's domain records: what the memory service stores and returns, in plain Python.

Adapters translate these to and from Protobuf (`memory_client`, `service`); domain modules (`turn`,
`prompt`, `tools`) only ever see these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Scope(enum.StrEnum):
    """Who can see a memory."""

    USER = "user"
    """Every agent of the user."""
    AGENT = "agent"
    """Only the agent that stored it."""


@dataclass(frozen=True, slots=True)
class Memory:
    """A memory as Recall found it."""

    id: str
    text: str
    scope: Scope
    agent_id: str = ""
    """For agent-scoped memories, the agent; for user-wide ones, the agent that stored it."""
    similarity: float = 0.0
    """Cosine similarity to the query (0 for keyword matches)."""
    score: float = 0.0
    """Ranking score: similarity blended with recency."""
    stage: str = ""
    """"vector" or "keyword"."""
    valid_from: str = ""
    """For a fact that no longer holds (a question about the past recalls those), since when it held
    (YYYY-MM-DD); "" for current ones."""
    valid_to: str = ""
    """Until when it held (YYYY-MM-DD); "" while it is current."""


@dataclass(frozen=True, slots=True)
class StoredMemory:
    """A memory as Remember stored it."""

    id: str
    text: str
    scope: Scope
    key: str = ""
    created: bool = True
    """False when an existing memory with the same key was replaced."""


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class PastMessage:
    """A message of an earlier conversation, as RecallConversations found it."""

    conversation_id: str
    message_id: str
    role: Role
    agent_id: str
    text: str
    at: datetime
    score: float = 0.0
    stage: str = ""
    """"vector" or "keyword"."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """The conversation moved to another agent, which answers from there on."""

    from_agent_id: str
    to_agent_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """A tool call made while writing an assistant message, with its result (`messages.tool_call`)."""

    call_id: str
    name: str
    arguments_json: str
    result_json: str
    is_error: bool = False
    handoff: Handoff | None = None
    """Set when the call handed the conversation to another agent."""


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """An earlier message of the conversation."""

    id: str
    role: Role
    agent_id: str
    content: str
    failed: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TextEmbedding:
    """A text's vector, and the embedding model that made it (vectors compare only within one model)."""

    model: str
    vector: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class NewTurn:
    """A person's message to an agent, as the router received it."""

    agent_id: str
    text: str
    conversation_id: str = ""
    """Empty starts a new conversation."""
    client_request_id: str = ""
    """Makes the turn idempotent: a second turn with the same id finds the first message stored."""
    embedding: TextEmbedding | None = None
    """The text's vector, when it was made while the turn was admitted (`orchestrator.embedding`): memory's
    recall searches with it at once."""


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    """The assistant message of a turn, as it is stored (complete or failed)."""

    id: str
    agent_id: str
    content: str
    tool_calls: tuple[ToolCallRecord, ...] = ()
    error: str = ""
    """Why the turn stopped; empty for a complete message."""

    @property
    def failed(self) -> bool:
        return bool(self.error)


class TurnState(enum.Enum):
    """Where a turn stands when it starts (see memory's StartTurn)."""

    ANSWER = "answer"
    """Answer it now: a new turn, or one whose earlier holder stopped renewing its lease."""
    RUNNING = "running"
    """Another caller holds it and answers: wait and ask again."""
    DONE = "done"
    """It was answered: `TurnStart.answer` is the stored answer, to replay."""


@dataclass(frozen=True, slots=True)
class TurnStart:
    """The stored user message of a turn, and what memory knows that the turn needs."""

    conversation_id: str
    title: str
    message_id: str
    enabled_agent_ids: frozenset[str]
    """Agents the caller may talk to now (the addressed one included): the handoff candidates."""
    answer_id: str
    """The id the answer is (to be) stored under."""
    state: TurnState = TurnState.ANSWER
    answer: AssistantMessage | None = None
    """With `TurnState.DONE`, the stored answer."""
    history: tuple[HistoryMessage, ...] = ()
    """Earlier messages of the conversation, oldest first."""
    replayed: bool = False
    """True when an earlier request with the same client request id stored the message already."""
    memories: tuple[Memory, ...] = ()
    """With a recall asked for: what the addressed agent remembers about the message, best first."""
    recall_failed: bool = False
    """With a recall asked for: it failed, and the turn goes on without memories."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, summed over the model calls of a turn."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )
