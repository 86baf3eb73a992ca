"""Turning text into vectors: the `Embedder` port and its OpenAI-compatible adapter.

`OpenAIEmbedder` calls `/embeddings` of any OpenAI-compatible API with the official SDK (OpenAI itself,
vLLM, Ollama, the offline model server).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
