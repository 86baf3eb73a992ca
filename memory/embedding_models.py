"""Which embedding model made a vector, and what its similarities mean. No I/O.

A vector is only comparable with vectors of the same model at the same dimension (text-embedding-3 at 512
and at 1536 dimensions are two models here): `EmbeddingModel` is that identity. Every stored vector
records the id of its model (`embedding_models`, memory_0006), recall compares a query only with vectors of
the configured ("current") model, and a vector of another model is treated as no vector at all (the row is
found by its words until `memory.reembed` has embedded it again).

`KNOWN_MODELS` is the table of models AthenaOS has a calibrated vector-stage threshold for, with where each
value comes from. A model missing from it needs an explicit threshold (`MemorySettings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OFFLINE_EMBEDDING_MODEL = "athena-offline-embed"
"""Name under which the offline model server (and the in-package hashing embedder) embeds."""


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """A model at one dimension: the identity vectors are compared under."""

    name: str
    dimension: int

    def __str__(self) -> str:
        return f"{self.name}@{self.dimension}"


@dataclass(frozen=True, slots=True)
class KnownModel:
    """What AthenaOS knows of an embedding model."""

    threshold: float
    """Cosine similarity a memory needs to pass the vector stage."""
    source: str
    """Where `threshold` comes from."""
    dimensions: tuple[int, int] | None = None
    """The dimensions the model can answer (min, max); None: any (the offline hashing embedder)."""
    sends_dimensions: bool = True
    """Whether requests may carry `dimensions` (fixed-size models refuse it)."""


KNOWN_MODELS: Mapping[str, KnownModel] = {
    OFFLINE_EMBEDDING_MODEL: KnownModel(
        threshold=0.55,
        source=(
            "measured here (tests/unit/test_memory_domain.py) at 384 dimensions: a question and the fact it "
            "asks about ≈ 0.66-0.79; unrelated memories ≈ 0.06 median, 0.27 p95, 0.53 worst; weaker matches "
            "(≈ 0.42) are left to the keyword stage"
        ),
    ),
    "text-embedding-ada-002": KnownModel(
        threshold=0.82,
        source="the seed's figure for ada-002, whose similarities crowd between 0.7 and 1; not measured here",
        dimensions=(1536, 1536),
        sends_dimensions=False,
    ),
    "text-embedding-3-small": KnownModel(
        threshold=0.45,
        source=(
            "the v3 models spread similarities lower than ada-002 (related text ≈ 0.4-0.7 in OpenAI's "
            "published examples); an estimate, not measured here (no key in CI)"
        ),
        dimensions=(1, 1536),
    ),
    "text-embedding-3-large": KnownModel(
        threshold=0.45,
        source="as text-embedding-3-small (same family and spread); an estimate, not measured here",
        dimensions=(1, 3072),
    ),
    "all-MiniLM-L6-v2": KnownModel(
        threshold=0.5,
        source=(
            "an estimate, not measured here: MiniLM-family sentence embeddings score a question and its "
            "answer ≈ 0.5-0.7, unrelated sentences ≈ 0-0.2; served by an OpenAI-compatible server "
            "(vLLM, Ollama)"
        ),
        dimensions=(384, 384),
        sends_dimensions=False,
    ),
}
"""Models with a calibrated threshold, by the name the embeddings API knows them by."""


class UnknownThreshold(ValueError):
    """No threshold is known for a model and none was configured."""


def similarity_threshold(
    model: str, overrides: Mapping[str, float] | None = None, default: float | None = None
) -> float:
    """The vector-stage threshold of `model`: a configured override, else the table's, else `default`;
    raises UnknownThreshold when there is none (a guessed threshold would silently recall nothing or
    everything)."""
    if overrides and model in overrides:
        return overrides[model]
    known = KNOWN_MODELS.get(model)
    if known is not None:
        return known.threshold
    if default is not None:
        return default
    raise UnknownThreshold(
        f"no calibrated similarity threshold for embedding model {model!r}: set "
        "MEMORY_SIMILARITY_THRESHOLDS (JSON, per model) or MEMORY_DEFAULT_SIMILARITY_THRESHOLD"
    )


def check_dimension(model: str, dimension: int) -> None:
    """Raises ValueError when a known model cannot answer vectors of `dimension` components."""
    known = KNOWN_MODELS.get(model)
    if known is None or known.dimensions is None:
        return
    low, high = known.dimensions
    if not low <= dimension <= high:
        span = str(low) if low == high else f"{low} to {high}"
        raise ValueError(f"embedding model {model!r} answers {span} dimensions, not {dimension}")


def sends_dimensions(model: str) -> bool:
    """Whether embedding requests for `model` carry the `dimensions` parameter."""
    known = KNOWN_MODELS.get(model)
    return known.sends_dimensions if known is not None else True


@dataclass(frozen=True, slots=True)
class ReembedProgress:
    """How far embedding every stored text with the current model has come."""

    model: EmbeddingModel
    users_done: int
    """Users (in id order) whose memories and messages all have a vector of `model`."""
    users_total: int
    embedded: int
    """Texts embedded by this job so far."""
    finished: bool
    leased_by: str
    """The replica working on it now ("" when none)."""

    @property
    def fraction(self) -> float:
        """Share of users done, 0..1 (1 when finished or when there is nobody)."""
        if self.finished or self.users_total == 0:
            return 1.0
        return min(1.0, self.users_done / self.users_total)


def pending_batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    """`count` texts as (start, end) slices of at most `batch_size`, in order (one embeddings request and
    one UPDATE each)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
