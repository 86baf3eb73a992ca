"""How recall ranks memories (SPEC §3): similarity blended with recency.

    score = (1 − w)·similarity + w·2^(−age_days / half_life_days)

`similarity` is the cosine similarity in the vector stage and the share of the query's words a memory holds
(blind tokens, `mesh.envelope`) in the keyword stage, so both stages rank the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

T = TypeVar("T")

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RankingPolicy:
    """The retrieval knobs of one deployment."""

    threshold: float
    """Cosine similarity a memory needs to pass the vector stage."""
    recency_weight: float = 0.15
    """w: how much recency counts against similarity."""
    half_life_days: float = 30.0
    """Age at which the recency term halves."""

    def recency(self, updated_at: datetime, now: datetime) -> float:
        """2^(−age_days / half_life_days): 1 for a memory written now, ½ after one half-life."""
        age_days = max(0.0, (now - updated_at).total_seconds() / SECONDS_PER_DAY)
        return float(2.0 ** (-age_days / self.half_life_days))

    def score(self, similarity: float, updated_at: datetime, now: datetime) -> float:
        w = self.recency_weight
        return (1.0 - w) * similarity + w * self.recency(updated_at, now)

    def passes(self, similarity: float) -> bool:
        return similarity >= self.threshold


def candidate_count(k: int) -> int:
    """Neighbours fetched for a top-k recall: more than k, since recency may reorder them."""
    return max(4 * k, 40)


def ranked(
    found: Sequence[tuple[T, float]],
    policy: RankingPolicy,
    k: int,
    now: datetime,
    *,
    vector: bool,
    changed_at: Callable[[T], datetime],
    ident: Callable[[T], str],
) -> list[tuple[T, float, float]]:
    """The top `k` of `found` (item, similarity) as (item, similarity, score), best score first, ties by id;
    the `vector` stage also drops what misses the threshold. Memories and messages rank alike."""
    scored = [
        (item, similarity, policy.score(similarity, changed_at(item), now))
        for item, similarity in found
        if not vector or policy.passes(similarity)
    ]
    scored.sort(key=lambda hit: (-hit[2], ident(hit[0])))
    return scored[:k]
