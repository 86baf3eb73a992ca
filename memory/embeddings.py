"""Turning text into vectors: the `Embedder` protocol, the OpenAI implementation and a hashing fake.

`OpenAIEmbedder` calls `/embeddings` of any OpenAI-compatible API with the official SDK (OpenAI itself,
vLLM, Ollama, the offline model server). `HashingEmbedder` computes in-process the same signed feature
hashing as the offline model server (words and character trigrams, BLAKE2b buckets and signs,
L2-normalised), so tests are deterministic, need no server, and exercise the thresholds calibrated for it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np
import openai

from mesh.context import time_remaining
from mesh.errors import FailedPrecondition, Unavailable

Vector = tuple[float, ...]


class Embedder(Protocol):
    """Embeds texts into vectors of `dimension` components."""

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """One vector per text, in order. Raises Unavailable when the model cannot be reached."""
        ...


class OpenAIEmbedder:
    """The OpenAI embeddings API through the official SDK."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        dimension: int,
        *,
        send_dimensions: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self._client = client
        self._model = model
        self._dimension = dimension
        self._send_dimensions = send_dimensions
        self._timeout = timeout

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        remaining = time_remaining()
        timeout = self._timeout if remaining is None else min(self._timeout, remaining)
        try:
            if self._send_dimensions:
                response = await self._client.embeddings.create(
                    model=self._model, input=list(texts), dimensions=self._dimension, timeout=timeout
                )
            else:
                response = await self._client.embeddings.create(
                    model=self._model, input=list(texts), timeout=timeout
                )
        except openai.APIError as exc:
            raise Unavailable("the embedding model is unavailable") from exc
        vectors = [tuple(item.embedding) for item in sorted(response.data, key=lambda item: item.index)]
        if len(vectors) != len(texts) or any(len(v) != self._dimension for v in vectors):
            raise FailedPrecondition(
                f"the embedding model {self._model!r} did not answer {len(texts)} vectors of "
                f"{self._dimension} dimensions (check MEMORY_EMBEDDING_DIMENSION)"
            )
        return vectors


_WORD = re.compile(r"\w+")
_SIGN_BIT = 1 << 63
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.5


@lru_cache(maxsize=1 << 16)
def _feature_hash(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")


def _features(text: str) -> list[tuple[str, float]]:
    words = _WORD.findall(text.lower())
    if not words:
        return [("raw:" + text, _WORD_WEIGHT)]
    padded = " " + " ".join(words) + " "
    found = [("w:" + word, _WORD_WEIGHT) for word in words]
    found.extend(("c:" + padded[i : i + 3], _TRIGRAM_WEIGHT) for i in range(len(padded) - 2))
    return found


def hashing_embedding(text: str, dimension: int) -> Vector:
    """The offline model's embedding of `text` (unit length)."""
    vector = np.zeros(dimension, dtype=np.float64)
    for feature, weight in _features(text):
        hashed = _feature_hash(feature)
        vector[hashed % dimension] += -weight if hashed & _SIGN_BIT else weight
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        vector[_feature_hash("raw:" + text) % dimension] = 1.0
        norm = 1.0
    return tuple(float(x) for x in (vector / norm).astype(np.float32))


class HashingEmbedder:
    """Deterministic in-process embedder (the offline model's algorithm); counts its calls for tests."""

    def __init__(self, dimension: int = 384) -> None:
        self._dimension = dimension
        self.calls = 0

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        self.calls += 1
        return [hashing_embedding(text, self._dimension) for text in texts]
