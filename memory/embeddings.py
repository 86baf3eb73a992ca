"""Turning text into vectors: the `Embedder` port, its OpenAI-compatible adapter and a batching wrapper.

`OpenAIEmbedder` calls `/embeddings` of any OpenAI-compatible API (`mesh.embeddings`: OpenAI itself, vLLM,
Ollama, the offline model server). `BatchingEmbedder` bounds the requests out at once and sends what
waits meanwhile as one request.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from memory.embedding_models import EmbeddingModel
from mesh.context import time_remaining
from mesh.embeddings import Vector, request_embeddings
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
        remaining = time_remaining()
        timeout = self._timeout if remaining is None else min(self._timeout, remaining)
        vectors = await request_embeddings(
            self._api,
            self._model,
            texts,
            dimensions=self._dimension if self._send_dimensions else None,
            read_timeout=timeout,
        )
        if len(vectors) != len(texts) or any(len(v) != self._dimension for v in vectors):
            raise FailedPrecondition(
                f"the embedding model {self._model!r} did not answer {len(texts)} vectors of "
                f"{self._dimension} dimensions (check MEMORY_EMBEDDING_DIMENSION)"
            )
        return vectors


def _future() -> asyncio.Future[list[Vector]]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class _Waiting:
    """A call waiting for a batch; a caller giving up cancels its future alone, not the batch."""

    texts: Sequence[str]
    vectors: asyncio.Future[list[Vector]] = field(default_factory=_future)


class BatchingEmbedder:
    """At most `concurrency` requests to `inner` at once; calls arriving while that many are out wait, and
    when one comes back, what waits goes out as one request (up to `max_batch` texts). Alone, a call goes out
    at once; at a burst of turns, the embedding API sees a few large requests instead of one per turn (less
    CPU here and there, fewer requests against its rate limit).

    A batch is one request, so it fails (or succeeds) for every call in it. It runs under the embedder's own
    timeout, not one caller's deadline; a caller whose deadline passes stops waiting for it."""

    def __init__(self, inner: Embedder, *, concurrency: int = 4, max_batch: int = 64) -> None:
        if concurrency < 1 or max_batch < 1:
            raise ValueError("concurrency and max_batch must be at least 1")
        self._inner = inner
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._out = 0
        self._waiting: list[_Waiting] = []
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def model(self) -> EmbeddingModel:
        return self._inner.model

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if self._out < self._concurrency and not self._waiting:
            self._out += 1
            try:
                return await self._inner.embed(texts)
            finally:
                self._returned()
        waiting = _Waiting(texts)
        self._waiting.append(waiting)
        return await waiting.vectors

    def _returned(self) -> None:
        self._out -= 1
        while self._waiting and self._out < self._concurrency:
            batch: list[_Waiting] = []
            count = 0
            while self._waiting and (not batch or count + len(self._waiting[0].texts) <= self._max_batch):
                count += len(self._waiting[0].texts)
                batch.append(self._waiting.pop(0))
            self._out += 1
            # In a context of its own: the batch is nobody's in particular (no caller's deadline applies).
            task = asyncio.get_running_loop().create_task(self._send(batch), context=contextvars.Context())
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        try:
            vectors = await self._inner.embed([text for waiting in batch for text in waiting.texts])
        except BaseException as exc:
            for waiting in batch:
                if not waiting.vectors.done():
                    waiting.vectors.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            start = 0
            for waiting in batch:
                end = start + len(waiting.texts)
                if not waiting.vectors.done():
                    waiting.vectors.set_result(vectors[start:end])
                start = end
        finally:
            self._returned()
