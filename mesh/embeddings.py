"""One request to the `/embeddings` of an OpenAI-compatible API (OpenAI, vLLM, Ollama, the offline model):
its GenAI span, its failures as `Unavailable`, its vectors decoded; and `Batching`, which bounds the
requests out at once and sends what waits meanwhile as one.

Memory embeds what it stores and recalls with (`memory.embeddings.OpenAIEmbedder`, which adds the model's
identity and batching); the orchestrator embeds a turn's text while it admits the turn
(`orchestrator.embedding`), so that memory's recall searches at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh import genai
from mesh.context import time_remaining
from mesh.errors import Unavailable
from mesh.model_api import ModelApi, ModelApiError

Vector = tuple[float, ...]


async def request_embeddings(
    api: ModelApi,
    model: str,
    texts: Sequence[str],
    *,
    dimensions: int | None,
    longest: float,
) -> list[Vector]:
    """The vectors `api` answers for `texts`, in their order, of `dimensions` components when given (None:
    the model's own length; fixed-size models refuse to be asked for one). Each wait for the answer lasts
    at most `longest` seconds, or until the caller's deadline if sooner (a batch is no caller's: no
    deadline). How many vectors came back, and how long they are, is the caller's to check. Raises
    Unavailable when the API is unreachable, refuses or answers something else than embeddings."""
    remaining = time_remaining()
    read_timeout = longest if remaining is None else min(longest, remaining)
    body: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": "base64"}
    attributes: dict[str, Any] = {"athena.embeddings.inputs": len(texts)}  # no convention names it
    if dimensions is not None:
        body["dimensions"] = attributes["gen_ai.embeddings.dimension.count"] = dimensions
    call = genai.start_model_call("embeddings", model, api.server, attributes=attributes)
    try:
        try:
            # Vectors arrive as base64 float32 (as the official SDK asks for them too), decoded here.
            with call.current() if call is not None else contextlib.nullcontext():
                async with api.post("/embeddings", body, read_timeout=read_timeout) as response:
                    answer = await response.read()
            decoded = json.loads(answer)
            items = sorted(decoded["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in items]
            if call is not None:
                usage = decoded.get("usage") or {}
                call.finished(
                    response_model=decoded.get("model") or "", input_tokens=usage.get("prompt_tokens")
                )
        except ModelApiError as exc:
            raise Unavailable("the embedding model is unavailable") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable("the embedding model answered with an error") from exc
    except Unavailable as exc:
        if call is not None:
            call.failed(exc.__cause__ or exc)
        raise
    finally:
        if call is not None:
            call.end()
    return vectors


def _future() -> asyncio.Future[list[Vector]]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class _Waiting:
    """A call waiting for a batch; a caller giving up cancels its future alone, not the batch."""

    texts: Sequence[str]
    vectors: asyncio.Future[list[Vector]] = field(default_factory=_future)


class Batching:
    """At most `concurrency` requests (`send`) at once; calls arriving while that many are out wait, and
    when one comes back, what waits goes out as one request (up to `max_batch` texts). Alone, a call goes out
    at once; at a burst of turns, the embedding API sees a few large requests instead of one per turn (less
    CPU here and there, fewer requests against its rate limit).

    A batch is one request, so it fails (or succeeds) for every call in it. It runs under the embedder's own
    timeout, not one caller's deadline; a caller whose deadline passes stops waiting for it."""

    def __init__(
        self,
        send: Callable[[Sequence[str]], Awaitable[list[Vector]]],
        *,
        concurrency: int = 4,
        max_batch: int = 64,
    ) -> None:
        if concurrency < 1 or max_batch < 1:
            raise ValueError("concurrency and max_batch must be at least 1")
        self._request = send
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._out = 0
        self._waiting: list[_Waiting] = []
        self._batches: set[asyncio.Task[None]] = set()

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if self._out < self._concurrency and not self._waiting:
            self._out += 1
            try:
                return await self._request(texts)
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
            vectors = await self._request([text for waiting in batch for text in waiting.texts])
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


def _vector(embedding: str | list[float]) -> Vector:
    """A vector as the API answers it: base64 little-endian float32, or (some servers ignore the encoding
    asked for) a list of numbers."""
    if isinstance(embedding, str):
        return tuple(np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist())
    return tuple(float(value) for value in embedding)
