"""OpenAIEmbedder against a scripted OpenAI-compatible endpoint on loopback (no real model)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from memory.embeddings import OpenAIEmbedder
from mesh.errors import FailedPrecondition, Unavailable
from mesh.model_api import ModelApi, client_session

Handler = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
"""The request's JSON body → the status and JSON body answered."""


def embeddings_answer(vectors: list[list[float]]) -> tuple[int, dict[str, Any]]:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": 1, "total_tokens": 1}
    return 200, {"object": "list", "data": data, "model": "m", "usage": usage}


@pytest_asyncio.fixture
async def api_for() -> AsyncIterator[Callable[[Handler], Awaitable[ModelApi]]]:
    """Starts an /v1/embeddings endpoint answering with a handler; the API client calling it."""
    servers: list[TestServer] = []
    session = client_session()

    async def make(handler: Handler) -> ModelApi:
        async def embeddings(request: web.Request) -> web.Response:
            assert request.headers["authorization"] == "Bearer k"
            status, body = handler(await request.json())
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_post("/v1/embeddings", embeddings)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return ModelApi(str(server.make_url("/v1")), "k", session)

    yield make
    await session.close()
    for server in servers:
        await server.close()


async def test_sends_model_and_dimensions_and_returns_vectors_in_order(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    seen: list[dict[str, object]] = []

    def handler(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen.append(body)
        return embeddings_answer([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    embedder = OpenAIEmbedder(await api_for(handler), "athena-offline-embed", 3)
    vectors = await embedder.embed(["a", "b"])
    assert vectors == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
    assert seen[0]["model"] == "athena-offline-embed"
    assert seen[0]["dimensions"] == 3
    assert seen[0]["input"] == ["a", "b"]


async def test_dimensions_are_not_sent_to_models_without_the_parameter(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    seen: list[dict[str, object]] = []

    def handler(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen.append(body)
        return embeddings_answer([[0.5, 0.5]])

    api = await api_for(handler)
    await OpenAIEmbedder(api, "text-embedding-ada-002", 2, send_dimensions=False).embed(["a"])
    assert "dimensions" not in seen[0]


async def test_model_errors_are_unavailable(api_for: Callable[[Handler], Awaitable[ModelApi]]) -> None:
    def handler(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 503, {"error": {"message": "overloaded"}}

    with pytest.raises(Unavailable):
        await OpenAIEmbedder(await api_for(handler), "m", 3).embed(["a"])


async def test_a_model_answering_another_dimension_is_a_configuration_error(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    def handler(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return embeddings_answer([[1.0, 0.0]])

    with pytest.raises(FailedPrecondition, match="MEMORY_EMBEDDING_DIMENSION"):
        await OpenAIEmbedder(await api_for(handler), "m", 3).embed(["a"])
