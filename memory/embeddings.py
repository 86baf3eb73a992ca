"""Turning text into vectors: the `Embedder` protocol, the OpenAI implementation and a hashing fake.

`OpenAIEmbedder` calls `/embeddings` of any OpenAI-compatible API with the official SDK (OpenAI itself,
vLLM, Ollama, the offline model server). `HashingEmbedder` runs the offline model
server's own embedder (`offline_model.embeddings`) in-process, so tests are deterministic,
need no server, and exercise the thresholds calibrated for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import openai

from mesh.context import time_remaining
from mesh.errors import FailedPrecondition, Unavailable
from offline_model.embeddings import embed as offline_embedding

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


def hashing_embedding(text: str, dimension: int) -> Vector:
    """The offline model's embedding of `text` (unit length), computed in-process."""
    return tuple(float(x) for x in offline_embedding(text, dimension))


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
