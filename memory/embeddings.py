"""Turning text into vectors: the `Embedder` port and its OpenAI-compatible adapter.

`OpenAIEmbedder` calls `/embeddings` of any OpenAI-compatible API through `mesh.model_api` (OpenAI itself,
vLLM, Ollama, the offline model server).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from mesh.context import time_remaining
from mesh.errors import FailedPrecondition, Unavailable
from mesh.model_api import ModelApi, ModelApiError

Vector = tuple[float, ...]


class Embedder(Protocol):
    """Embeds texts into vectors of `dimension` components."""

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
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        remaining = time_remaining()
        timeout = self._timeout if remaining is None else min(self._timeout, remaining)
        body: dict[str, Any] = {"model": self._model, "input": list(texts), "encoding_format": "base64"}
        if self._send_dimensions:
            body["dimensions"] = self._dimension
        try:
            # Vectors arrive as base64 float32 (as the official SDK asks for them too), decoded here.
            async with self._api.post("/embeddings", body, read_timeout=timeout) as response:
                answer = await response.read()
            items = sorted(json.loads(answer)["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in items]
        except ModelApiError as exc:
            raise Unavailable("the embedding model is unavailable") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable("the embedding model answered with an error") from exc
        if len(vectors) != len(texts) or any(len(v) != self._dimension for v in vectors):
            raise FailedPrecondition(
                f"the embedding model {self._model!r} did not answer {len(texts)} vectors of "
                f"{self._dimension} dimensions (check MEMORY_EMBEDDING_DIMENSION)"
            )
        return vectors


def _vector(embedding: str | list[float]) -> Vector:
    """A vector as the API answers it: base64 little-endian float32, or (some servers ignore the encoding
    asked for) a list of numbers."""
    if isinstance(embedding, str):
        return tuple(np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist())
    return tuple(float(value) for value in embedding)
