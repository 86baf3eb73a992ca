"""Conversation recall: finding a user's past messages by what was said in them.

The same rule as memory recall (memory.recall, SPEC §3), over messages instead of memories:

1. Candidates: the caller's complete messages with text (theirs and the agents' answers), optionally of one
   agent and within [since, until) (the store filters; only the caller's rows exist for it).
2. Vector stage: nearest by cosine among vectors of the current embedding model; keep similarity ≥ the
   model's threshold. Messages are embedded in the background after they are stored (memory.reembed): one
   without a current vector yet is found by its words, after the vector hits.
3. Score = (1 − w)·similarity + w·recency (of the message's time); top k.
4. Nothing passed: the keyword stage alone (the share of the query's words a message holds).

Message contents stay sealed in PostgreSQL (mesh.envelope); what is searched is a vector and the blind
tokens of the words, and the hits are opened with the owner's key only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from memory.domain import MessageRecord, Stage
from memory.embeddings import Embedder
from memory.ranking import RankingPolicy, candidate_count, ranked
from memory.stores import Vector
from mesh.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ConversationQuery:
    """A validated RecallConversations request."""

    text: str
    k: int
    agent_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    exclude_conversation_id: str | None = None
    """The conversation asking, left out (its messages are in the model's context already)."""

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidArgument("until", "must be after since")


@dataclass(frozen=True, slots=True)
class FoundMessage:
    """A stored message with the conversation it belongs to."""

    conversation_id: str
    message: MessageRecord


@dataclass(frozen=True, slots=True)
class MessageHit:
    """A message found by conversation recall."""

    found: FoundMessage
    similarity: float
    score: float
    stage: Stage


@dataclass(frozen=True, slots=True)
class MessageCandidates:
    """Both stages' candidates (as memory.stores.Candidates, for messages)."""

    nearest: list[tuple[FoundMessage, float]]
    keyword: list[tuple[FoundMessage, float]]
    unembedded: list[tuple[FoundMessage, float]] = field(default_factory=list)
    """Those of `keyword` without a vector of the current model yet."""


class MessageSearch(Protocol):
    async def candidates(
        self, user_id: str, query: ConversationQuery, embedding: Vector, limit: int
    ) -> MessageCandidates:
        """Up to `limit` of the user's messages matching the query's filters nearest to `embedding`, and up
        to `limit` holding any of its words, each with its similarity."""
        ...


def rank_messages(
    found: Sequence[tuple[FoundMessage, float]], policy: RankingPolicy, stage: Stage, k: int, now: datetime
) -> list[MessageHit]:
    """The top `k` of `found` by blended score (stage VECTOR also drops what misses the threshold)."""
    return [
        MessageHit(found=message, similarity=similarity, score=score, stage=stage)
        for message, similarity, score in ranked(
            found,
            policy,
            k,
            now,
            vector=stage is Stage.VECTOR,
            changed_at=lambda message: message.message.created_at,
            ident=lambda message: message.message.id,
        )
    ]


class ConversationRecaller:
    """Runs the two stages over one user's messages."""

    def __init__(self, search: MessageSearch, embedder: Embedder, policy: RankingPolicy) -> None:
        self._search = search
        self._embedder = embedder
        self._policy = policy

    async def recall(
        self, user_id: str, query: ConversationQuery, now: datetime | None = None
    ) -> list[MessageHit]:
        (embedding,) = await self._embedder.embed([query.text])
        found = await self._search.candidates(user_id, query, embedding, candidate_count(query.k))
        now = now or datetime.now(UTC)
        hits = rank_messages(found.nearest, self._policy, Stage.VECTOR, query.k, now)
        if hits:
            # Messages the vector stage cannot see yet come after its (calibrated) hits, best first.
            hits += rank_messages(found.unembedded, self._policy, Stage.KEYWORD, query.k, now)
            return hits[: query.k]
        return rank_messages(found.keyword, self._policy, Stage.KEYWORD, query.k, now)
