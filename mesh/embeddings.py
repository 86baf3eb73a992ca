"""One request to the `/embeddings` of an OpenAI-compatible API (OpenAI, vLLM, Ollama, the offline model):
its GenAI span, its failures as `Unavailable`, its vectors decoded.

Memory embeds what it stores and recalls with (`memory.embeddings.OpenAIEmbedder`, which adds the model's
identity and batching); the orchestrator embeds a turn's text while it admits the turn
(`orchestrator.embedding`), so that memory's recall searches at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from mesh import genai
from mesh.errors import Unavailable
from mesh.model_api import ModelApi, ModelApiError

Vector = tuple[float, ...]


async def request_embeddings(
    api: ModelApi,
    model: str,
    texts: Sequence[str],
    *,
    dimensions: int | None,
    read_timeout: float,
) -> list[Vector]:
    """The vectors `api` answers for `texts`, in their order, within `read_timeout` (`ModelApi.post`),
    of `dimensions` components when given (None: the model's own length; fixed-size models refuse to be
    asked for one). How many vectors came back, and how long they are, is the caller's to check. Raises
    Unavailable when the API is unreachable, refuses or answers something else than embeddings."""
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


def _vector(embedding: str | list[float]) -> Vector:
    """A vector as the API answers it: base64 little-endian float32, or (some servers ignore the encoding
    asked for) a list of numbers."""
    if isinstance(embedding, str):
        return tuple(np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist())
    return tuple(float(value) for value in embedding)
