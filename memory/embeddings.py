"""Turning text into vectors: the `Embedder` port, its OpenAI-compatible adapter and a batching wrapper.

`OpenAIEmbedder` calls `/embeddings` of any OpenAI-compatible API (`mesh.embeddings`: OpenAI itself, vLLM,
Ollama, the offline model server). `BatchingEmbedder` bounds the requests out at once and sends what
waits meanwhile as one request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from memory.embedding_models import EmbeddingModel
from mesh.embeddings import Batching, Vector, request_embeddings
from mesh.errors import FailedPrecondition
from mesh.model_api import ModelApi

__all__ = ["BatchingEmbedder", "Embedder", "OpenAIEmbedder", "Vector"]


class Embedder(Protocol):
    """Embeds texts into vectors of `dimension` components, all made by `model` (the identity stored with
    each vector: memory.embedding_models)."""

    @property
    def model(self) -> EmbeddingModel: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """One vector per text, in order. Raises Unavailable when the model cannot be reached."""
        ...


class OpenAIEmbedder:
    """The OpenAI embeddings API."""

    def __init__(
        self,
        api: ModelApi,
        model: str,
        dimension: int,
        *,
        send_dimensions: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self._api = api
        self._model = model
        self._dimension = dimension
        self._send_dimensions = send_dimensions
        self._timeout = timeout

    @property
    def model(self) -> EmbeddingModel:
        return EmbeddingModel(self._model, self._dimension)

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        vectors = await request_embeddings(
            self._api,
            self._model,
            texts,
            dimensions=self._dimension if self._send_dimensions else None,
            longest=self._timeout,
        )
        if len(vectors) != len(texts) or any(len(v) != self._dimension for v in vectors):
            raise FailedPrecondition(
                f"the embedding model {self._model!r} did not answer {len(texts)} vectors of "
                f"{self._dimension} dimensions (check MEMORY_EMBEDDING_DIMENSION)"
            )
        return vectors


class BatchingEmbedder:
    """`inner` behind `mesh.embeddings.Batching`: at most `concurrency` requests out at once, and what waits
    meanwhile goes out as one request (up to `max_batch` texts)."""

    def __init__(self, inner: Embedder, *, concurrency: int = 4, max_batch: int = 64) -> None:
        self._inner = inner
        self._batching = Batching(inner.embed, concurrency=concurrency, max_batch=max_batch)

    @property
    def model(self) -> EmbeddingModel:
        return self._inner.model

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        return await self._batching.embed(texts)
