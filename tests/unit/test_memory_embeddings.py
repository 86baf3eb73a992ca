"""OpenAIEmbedder against a scripted OpenAI-compatible transport (no network, no real model)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx2 as httpx
import openai
import pytest
import pytest_asyncio

from memory.embeddings import OpenAIEmbedder
from mesh.errors import FailedPrecondition, Unavailable

Handler = Callable[[httpx.Request], httpx.Response]


def embeddings_answer(vectors: list[list[float]]) -> httpx.Response:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return httpx.Response(
        200,
        json={"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}},
    )


@pytest_asyncio.fixture
async def client_for() -> AsyncIterator[Callable[[Handler], openai.AsyncOpenAI]]:
    clients: list[httpx.AsyncClient] = []

    def make(handler: Handler) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(http)
        return openai.AsyncOpenAI(
            base_url="http://model.test/v1", api_key="k", http_client=http, max_retries=0
        )

    yield make
    for http in clients:
        await http.aclose()


async def test_sends_model_and_dimensions_and_returns_vectors_in_order(
    client_for: Callable[[Handler], openai.AsyncOpenAI],
) -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        seen.append(json.loads(request.content))
        return embeddings_answer([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    embedder = OpenAIEmbedder(client_for(handler), "athena-offline-embed", 3)
    vectors = await embedder.embed(["a", "b"])
    assert vectors == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
    assert seen[0]["model"] == "athena-offline-embed"
    assert seen[0]["dimensions"] == 3
    assert seen[0]["input"] == ["a", "b"]


async def test_dimensions_are_not_sent_to_models_without_the_parameter(
    client_for: Callable[[Handler], openai.AsyncOpenAI],
) -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return embeddings_answer([[0.5, 0.5]])

    await OpenAIEmbedder(client_for(handler), "text-embedding-ada-002", 2, send_dimensions=False).embed(["a"])
    assert "dimensions" not in seen[0]


async def test_model_errors_are_unavailable(client_for: Callable[[Handler], openai.AsyncOpenAI]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    with pytest.raises(Unavailable):
        await OpenAIEmbedder(client_for(handler), "m", 3).embed(["a"])


async def test_a_model_answering_another_dimension_is_a_configuration_error(
    client_for: Callable[[Handler], openai.AsyncOpenAI],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return embeddings_answer([[1.0, 0.0]])

    with pytest.raises(FailedPrecondition, match="MEMORY_EMBEDDING_DIMENSION"):
        await OpenAIEmbedder(client_for(handler), "m", 3).embed(["a"])
