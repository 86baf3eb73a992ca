"""`HashingEmbedder`: memory's `Embedder` in-process, with the offline model's own algorithm.

Tests are deterministic, need no model server, and exercise the similarity threshold calibrated for the
offline model (`memory.embedding_models.KNOWN_MODELS`). A `name` other than the offline model's makes it
another model (tests switching models).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from memory.embedding_models import OFFLINE_EMBEDDING_MODEL, EmbeddingModel
from memory.embeddings import Vector
from mesh.errors import Unavailable
from offline_model.embeddings import embed


def hashing_embedding(text: str, dimension: int) -> Vector:
    """The offline model's embedding of `text` (unit length)."""
    return tuple(float(x) for x in embed(text, dimension))


class HashingEmbedder:
    """Counts its calls, so tests can tell whether an embedding was computed; `down` makes it fail as an
    unreachable embedding model does."""

    def __init__(self, dimension: int = 384, name: str = OFFLINE_EMBEDDING_MODEL) -> None:
        self._dimension = dimension
        self._name = name
        self.calls = 0
        self.texts = 0
        self.down = False

    @property
    def model(self) -> EmbeddingModel:
        return EmbeddingModel(self._name, self._dimension)

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        self.calls += 1
        self.texts += len(texts)
        if self.down:
            raise Unavailable("the embedding model is unavailable")
        return [hashing_embedding(text, self._dimension) for text in texts]


class GatedEmbedder(HashingEmbedder):
    """A `HashingEmbedder` whose background work can be held mid-way: after `allowed` calls embedding
    anything but the texts in `free` (recall queries), further calls wait until `release()`."""

    def __init__(
        self, dimension: int, name: str = OFFLINE_EMBEDDING_MODEL, *, allowed: int, free: Iterable[str] = ()
    ) -> None:
        super().__init__(dimension, name)
        self.allowed = allowed
        self.free = set(free)
        self.held = 0
        """Calls waiting now."""
        self._released: asyncio.Event | None = None

    def release(self) -> None:
        self.allowed = 1 << 30
        if self._released is not None:
            self._released.set()

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if not set(texts) <= self.free:
            if self.allowed <= 0:
                self._released = self._released or asyncio.Event()
                self.held += 1
                try:
                    await self._released.wait()
                finally:
                    self.held -= 1
            self.allowed -= 1
        return await super().embed(texts)
