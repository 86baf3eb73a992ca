"""Recall as SPEC §3 defines it, over any `MemoryStore` and `Embedder`.

1. Candidates: the caller's user-global memories plus the calling agent's own (the store filters).
2. Vector stage: nearest neighbours by cosine among vectors of the current embedding model (never another
   model's: `memory.embedding_models`); keep similarity ≥ the model's threshold.
3. Score = (1 − w)·similarity + w·recency; top k. While the model is being changed, memories without a
   current vector yet can only be found by their words: those matching the query's words follow the vector
   hits (stage KEYWORD).
4. Nothing passed: full-text search, ranked with the same blend (normalised text rank as similarity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from memory.domain import MemoryRecord, RecallHit, Stage
from memory.embeddings import Embedder
from memory.ranking import RankingPolicy, candidate_count
from memory.stores import MemoryStore


@dataclass(frozen=True, slots=True)
class RecallQuery:
    """A validated Recall (or Forget-by-query) request."""

    text: str
    agent_id: str
    k: int
    embedding: tuple[float, ...] | None = None
    """The caller's precomputed embedding of `text`, if any."""


def rank(
    found: Sequence[tuple[MemoryRecord, float]], policy: RankingPolicy, stage: Stage, k: int, now: datetime
) -> list[RecallHit]:
    """The top `k` of `found` by blended score (stage VECTOR also drops what misses the threshold)."""
    hits = [
        RecallHit(
            memory=memory,
            similarity=similarity,
            score=policy.score(similarity, memory.updated_at, now),
            stage=stage,
        )
        for memory, similarity in found
        if stage is not Stage.VECTOR or policy.passes(similarity)
    ]
    hits.sort(key=lambda hit: (-hit.score, hit.memory.id))
    return hits[:k]


class Recaller:
    """Runs the two stages for one user."""

    def __init__(self, store: MemoryStore, embedder: Embedder, policy: RankingPolicy) -> None:
        self._store = store
        self._embedder = embedder
        self._policy = policy

    async def recall(self, user_id: str, query: RecallQuery, now: datetime | None = None) -> list[RecallHit]:
        embedding = query.embedding
        if embedding is None:
            (embedding,) = await self._embedder.embed([query.text])
        # Both stages' candidates in one round trip: the keyword stage is needed exactly when no vector
        # candidate passes, which only ranking them tells.
        found = await self._store.candidates(
            user_id, query.agent_id, embedding, query.text, candidate_count(query.k)
        )
        now = now or datetime.now(UTC)
        hits = rank(found.nearest, self._policy, Stage.VECTOR, query.k, now)
        if hits:
            # Memories the vector stage cannot see yet come after its (calibrated) hits, best first.
            hits += rank(found.unembedded, self._policy, Stage.KEYWORD, query.k, now)
            return hits[: query.k]
        return rank(found.keyword, self._policy, Stage.KEYWORD, query.k, now)
