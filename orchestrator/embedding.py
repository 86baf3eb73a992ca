"""A turn's text embedded while the turn is admitted, so that memory's recall searches at once.

Memory recalls what a person told their agents by comparing the turn's text with stored memories, which
needs the text's vector: an embeddings request to the model API before the search can start. Made by
memory, that request starts only once the turn was admitted here and reached memory; made here, it runs
meanwhile (`Turns.run` starts it as the turn arrives), and `StartTurn` carries the vector
(`TurnRecall.embedding`). Memory uses a vector only when it is of its own embedding model (name and
dimension) and embeds the text itself otherwise, so a mismatched setting costs time, never a wrong recall;
a failed request here leaves the embedding to memory too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mesh.embeddings import Batching, Vector, request_embeddings
from mesh.errors import AthenaError, Unavailable
from mesh.model_api import ModelApi
from orchestrator.records import TextEmbedding

log = logging.getLogger(__name__)

RECALL_TEXT_LENGTH = 4000
"""How much of a turn's text (stripped) recall compares, as memory cuts it (memory.service)."""


class TurnEmbedder:
    """Embeds turns' texts with memory's embedding model at an OpenAI-compatible API; a burst of turns is
    embedded in a few requests (`mesh.embeddings.Batching`), as memory would."""

    def __init__(
        self,
        api: ModelApi,
        model: str,
        *,
        dimensions: int | None = None,
        timeout: float = 2.0,
        concurrency: int = 4,
    ) -> None:
        self._api = api
        self._model = model
        self._dimensions = dimensions
        self._timeout = timeout
        self._batching = Batching(self._request, concurrency=concurrency)

    async def embed(self, text: str) -> TextEmbedding | None:
        """The vector of what recall compares of `text`, or None when the API could not make it within the
        timeout (or the caller's deadline): memory then embeds the text itself."""
        try:
            (vector,) = await self._batching.embed([text.strip()[:RECALL_TEXT_LENGTH]])
        except AthenaError as exc:
            log.warning("embedding a turn failed; memory embeds it", extra={"error": exc.message})
            return None
        return TextEmbedding(self._model, vector)

    async def _request(self, texts: Sequence[str]) -> list[Vector]:
        vectors = await request_embeddings(
            self._api,
            self._model,
            texts,
            dimensions=self._dimensions,
            longest=self._timeout,
        )
        if len(vectors) != len(texts):
            raise Unavailable(f"the embedding model answered {len(vectors)} vectors for {len(texts)} texts")
        return vectors
