"""The storage the servicers and recall depend on, as small protocols (implemented in memory.repository
and memory.ephemeral; tests may substitute doubles). Every method takes the verified caller's user id."""

from __future__ import annotations

import builtins
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
from memory.facts import Decision, FactCandidate, FactPolicy
from memory.pagination import Cursor
from memory.timeframe import Timeframe

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
class CandidateSearch:
    """What `MemoryStore.candidates` is asked, as a value: a turn's recall made in the statement that
    stores the turn (`ConversationStore.start_turn_searching`)."""

    agent_id: str
    embedding: Vector
    text: str | None
    limit: int
    timeframe: Timeframe | None = None


@dataclass(frozen=True, slots=True)
class StatedMessage:
    """The user message of a completed turn, which facts are extracted from."""

    message: MessageRecord
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Purged:
    """What erasing a user's stored data did."""

    rows: int
    """Rows deleted, all tables together."""
    data_key: bool
    """Whether their data key was destroyed (false: they had none)."""


class MemoryStore(Protocol):
    async def upsert(self, user_id: str, memory: NewMemory, embedding: Vector) -> tuple[MemoryRecord, bool]:
        """Stores `memory` as an explicit memory. The current one with the same key (or, keyless, the same
        text) in the same scope and the same text is refreshed; with another text it is closed and the new
        version supersedes it. Returns the memory and whether it is a new fact (not a version of one)."""
        ...

    async def candidates(
        self,
        user_id: str,
        agent_id: str,
        embedding: Vector,
        text: str | None,
        limit: int,
        timeframe: Timeframe | None = None,
    ) -> Candidates:
        """What both stages of a recall rank, in one round trip: up to `limit` memories visible to
        `agent_id`, nearest first with their cosine similarity, and (given the query `text`) up to `limit`
        holding any of its words, best first with the share of its words they hold (0..1). Current
        versions only, or with a `timeframe` every version valid at some moment of it."""
        ...

    async def delete(self, user_id: str, memory_ids: Sequence[str]) -> list[str]:
        """Deletes those of `memory_ids` that exist, with the versions they superseded; returns the ids
        deleted."""
        ...

    async def list(
        self, user_id: str, limit: int, after: Cursor | None, *, include_history: bool = False
    ) -> list[MemoryRecord]:
        """Current memories (with `include_history`, closed versions too) newest first by creation, after
        `after`."""
        ...

    async def history(self, user_id: str, memory_id: str) -> builtins.list[MemoryRecord]:
        """The versions of `memory_id`'s fact, newest first (NotFound if there is no such memory)."""
        ...

    async def correct(self, user_id: str, memory_id: str, text: str, embedding: Vector) -> MemoryRecord:
        """Closes the current version `memory_id` and stores `text` as its explicit successor (NotFound,
        FailedPrecondition when it is not current)."""
        ...

    async def learns_facts(self, user_id: str) -> bool:
        """Whether facts are learnt from the user's turns (their memory settings; on by default)."""
        ...

    async def set_learns_facts(self, user_id: str, enabled: bool) -> bool:
        """Stores the user's choice; answers it as stored."""
        ...

    async def stated(self, user_id: str, answer_id: str) -> StatedMessage | None:
        """The user message answered by `answer_id`, or None when it is gone."""
        ...

    async def reconcile(
        self,
        user_id: str,
        candidate: FactCandidate,
        embedding: Vector,
        origin: StatedMessage,
        policy: FactPolicy,
    ) -> Decision:
        """Reconciles an extracted fact with the user's memories (`memory.facts.decide`) and applies the
        decision, in one transaction; idempotent per (message, key)."""
        ...


class ConversationStore(Protocol):
    async def start_turn(self, user_id: str, turn: NewTurn) -> TurnStart:
        """Checks the caller may talk to `turn.agent_id` and stores the user message (starting a
        conversation when `turn.conversation_id` is None), unless an earlier request with the same client
        request id stored it already; answers what the turn needs (see `TurnStart`)."""
        ...

    async def start_turn_searching(
        self, user_id: str, turn: NewTurn, search: CandidateSearch
    ) -> tuple[TurnStart, Candidates | None]:
        """`start_turn`, and the candidates of `search` as `MemoryStore.candidates` finds them, read in the
        statement that stores the turn when it can be (one round trip for both); None when the turn took
        another way (a repeated request): then nothing was searched."""
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
