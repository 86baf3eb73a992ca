"""The storage the servicers and recall depend on, as small protocols (implemented in memory.repository
and memory.ephemeral; tests may substitute doubles). Every method takes the verified caller's user id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from memory.domain import (
    AgentDefinition,
    ConversationRecord,
    MemoryRecord,
    MessageRecord,
    NewAssistantMessage,
    NewMemory,
    NewTurn,
    TurnStart,
    UserAgent,
)
from memory.pagination import Cursor

Vector = Sequence[float]
ExportRecord = UserAgent | ConversationRecord | MemoryRecord


@dataclass(frozen=True, slots=True)
class Candidates:
    """A recall's candidates: the nearest memories with their cosine similarity, nearest first, and the
    keyword matches with their normalised text rank, best first. `nearest` holds only memories with a
    vector of the current embedding model."""

    nearest: list[tuple[MemoryRecord, float]]
    keyword: list[tuple[MemoryRecord, float]]
    unembedded: list[tuple[MemoryRecord, float]] = field(default_factory=list)
    """Those of `keyword` without a vector of the current model (not yet re-embedded): the vector stage
    cannot see them, so they follow its hits."""


@dataclass(frozen=True, slots=True)
class Purged:
    """What erasing a user's stored data did."""

    rows: int
    """Rows deleted, all tables together."""
    data_key: bool
    """Whether their data key was destroyed (false: they had none)."""


class MemoryStore(Protocol):
    async def upsert(self, user_id: str, memory: NewMemory, embedding: Vector) -> tuple[MemoryRecord, bool]:
        """Stores `memory`, replacing the one with the same key (or, keyless, the same text) in the same
        scope; returns it and whether it was created."""
        ...

    async def candidates(
        self, user_id: str, agent_id: str, embedding: Vector, text: str | None, limit: int
    ) -> Candidates:
        """What both stages of a recall rank, in one round trip: up to `limit` memories visible to
        `agent_id`, nearest first with their cosine similarity, and (given the query `text`) up to `limit`
        holding any of its words, best first with the share of its words they hold (0..1)."""
        ...

    async def delete(self, user_id: str, memory_ids: Sequence[str]) -> list[str]:
        """Deletes those of `memory_ids` that exist; returns the ids deleted."""
        ...

    async def list(self, user_id: str, limit: int, after: Cursor | None) -> list[MemoryRecord]:
        """Memories newest first (by creation), after `after`."""
        ...


class ConversationStore(Protocol):
    async def start_turn(self, user_id: str, turn: NewTurn) -> TurnStart:
        """Checks the caller may talk to `turn.agent_id` and stores the user message (starting a
        conversation when `turn.conversation_id` is None), unless an earlier request with the same client
        request id stored it already; answers what the turn needs (see `TurnStart`)."""
        ...

    async def renew_turn(self, user_id: str, message_id: str, lease_seconds: float) -> None:
        """Holds the turn of user message `message_id` for `lease_seconds` from now (NotFound if none)."""
        ...

    async def append_assistant_message(self, user_id: str, message: NewAssistantMessage) -> MessageRecord: ...

    async def list(self, user_id: str, limit: int, after: Cursor | None) -> list[ConversationRecord]:
        """Conversations by last activity, newest first, without messages."""
        ...

    async def get(self, user_id: str, conversation_id: str, last_messages: int) -> ConversationRecord:
        """The conversation with its messages (the last `last_messages`, or all for 0), oldest first."""
        ...

    async def delete(self, user_id: str, conversation_id: str) -> None: ...


class AgentStore(Protocol):
    async def sync(self, agents: Sequence[AgentDefinition]) -> None:
        """Makes `agents` the catalog, in this order; agents missing from it are disabled."""
        ...

    async def list(self, user_id: str) -> list[UserAgent]: ...

    async def set_enabled(self, user_id: str, agent_id: str, enabled: bool) -> UserAgent: ...


class UserDataStore(Protocol):
    def export(self, user_id: str) -> AsyncIterator[ExportRecord]:
        """Every record of the user: agents with the user's state, conversations with messages, memories."""
        ...

    async def purge(self, user_id: str) -> Purged:
        """Destroys the user's data key, then deletes everything of theirs."""
        ...


class EphemeralStore(Protocol):
    async def put(self, user_id: str, namespace: str, key: str, value: str, ttl_seconds: float) -> None: ...

    async def get(self, user_id: str, namespace: str, key: str) -> str | None: ...

    async def purge(self, user_id: str) -> int:
        """Deletes every ephemeral value of the user; returns how many."""
        ...

    async def forget(self, user_id: str, namespaces: Sequence[str]) -> int:
        """Deletes the user's values of `namespaces`; returns how many."""
        ...
