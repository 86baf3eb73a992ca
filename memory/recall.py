"""Recall as SPEC §3 defines it, over any `MemoryStore` and `Embedder`.

1. Candidates: the caller's user-global memories plus the calling agent's own (the store filters): their
   current versions, or, when the query asks about the past (`memory.timeframe`: "what was my goal in
   March?", "what did it use to be?"), every version valid at some moment of that period.
2. Vector stage: nearest neighbours by cosine among vectors of the current embedding model (never another
   model's: `memory.embedding_models`); keep similarity ≥ the model's threshold.
3. Score = (1 − w)·similarity + w·recency; top k. While the model is being changed, memories without a
   current vector yet can only be found by their words: those matching the query's words follow the vector
   hits (stage KEYWORD).
4. Nothing passed: full-text search, ranked with the same blend (normalised text rank as similarity).

`athena_memory_recall_seconds{stage}` times each stage of a recall: `embed` (only when the caller sent
no embedding), `search` (the database round trip that read both stages' candidates: the turn's own
statement when a turn's recall is read along with it, `Recaller.search`) and `rank`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Histogram

from memory.domain import MemoryRecord, RecallHit, Stage
from memory.embedding_models import EmbeddingModel
from memory.embeddings import Embedder
from memory.ranking import RankingPolicy, candidate_count, ranked
from memory.stores import Candidates, CandidateSearch, MemoryStore, Vector
from memory.timeframe import timeframe
from mesh.metrics import exemplar

RECALL_SECONDS = Histogram(
    "athena_memory_recall_seconds",
    "Time each stage of a recall took: embed, search (the candidates' database round trip), rank.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5),
)
_EMBED, _SEARCH, _RANK = (RECALL_SECONDS.labels(stage) for stage in ("embed", "search", "rank"))


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
    return [
        RecallHit(memory=memory, similarity=similarity, score=score, stage=stage)
        for memory, similarity, score in ranked(
            found,
            policy,
            k,
            now,
            vector=stage is Stage.VECTOR,
            changed_at=lambda memory: memory.updated_at,
            ident=lambda memory: memory.id,
        )
    ]


class Recaller:
    """Runs the two stages for one user."""

    def __init__(self, store: MemoryStore, embedder: Embedder, policy: RankingPolicy) -> None:
        self._store = store
        self._embedder = embedder
        self._policy = policy

    @property
    def model(self) -> EmbeddingModel:
        """The embedding model queries are compared under (a caller's vector must be of it)."""
        return self._embedder.model

    async def recall(self, user_id: str, query: RecallQuery, now: datetime | None = None) -> list[RecallHit]:
        started = time.perf_counter()
        embedding = query.embedding
        if embedding is None:
            (embedding,) = await self._embedder.embed([query.text])
            _EMBED.observe(time.perf_counter() - started, exemplar())
        now = now or datetime.now(UTC)
        search = self.search(query, embedding, now)
        searching = time.perf_counter()
        # Both stages' candidates in one round trip: the keyword stage is needed exactly when no vector
        # candidate passes, which only ranking them tells.
        found = await self._store.candidates(
            user_id, search.agent_id, search.embedding, search.text, search.limit, timeframe=search.timeframe
        )
        return self.ranked(query, found, now, searched_in=time.perf_counter() - searching)

    def search(self, query: RecallQuery, embedding: Vector, now: datetime) -> CandidateSearch:
        """What the store is asked for `query` (its text embedded as `embedding`) at `now`."""
        return CandidateSearch(
            agent_id=query.agent_id,
            embedding=embedding,
            text=query.text,
            limit=candidate_count(query.k),
            timeframe=timeframe(query.text, now),
        )

    def ranked(
        self, query: RecallQuery, found: Candidates, now: datetime, *, searched_in: float
    ) -> list[RecallHit]:
        """The hits among the store's candidates for `query` (stages 2 to 4), found by a database round
        trip of `searched_in` seconds."""
        _SEARCH.observe(searched_in, exemplar())
        ranking = time.perf_counter()
        hits = rank(found.nearest, self._policy, Stage.VECTOR, query.k, now)
        if hits:
            # Memories the vector stage cannot see yet come after its (calibrated) hits, best first.
            hits += rank(found.unembedded, self._policy, Stage.KEYWORD, query.k, now)
            hits = hits[: query.k]
        else:
            hits = rank(found.keyword, self._policy, Stage.KEYWORD, query.k, now)
        _RANK.observe(time.perf_counter() - ranking)
        return hits
