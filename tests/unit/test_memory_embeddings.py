"""OpenAIEmbedder against a scripted OpenAI-compatible endpoint on loopback (no real model)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.trace import SpanKind, StatusCode
from tracing_fixtures import recording_spans

from memory.embeddings import OpenAIEmbedder
from mesh.errors import FailedPrecondition, Unavailable
from mesh.model_api import ModelApi, client_session
from mesh.telemetry import traced

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


async def test_an_embeddings_call_is_one_genai_span_without_the_texts(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    api = await api_for(lambda _: embeddings_answer([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    with recording_spans() as exporter:
        with traced("served", SpanKind.SERVER):
            await OpenAIEmbedder(api, "athena-offline-embed", 3).embed(["oolong tea", "green tea"])
        failing = await api_for(lambda _: (503, {}))
        with traced("served", SpanKind.SERVER), pytest.raises(Unavailable):
            await OpenAIEmbedder(failing, "athena-offline-embed", 3).embed(["a"])
    ok, failed = [span for span in exporter.get_finished_spans() if span.name.startswith("embeddings ")]
    attributes = dict(ok.attributes or {})
    assert ok.name == "embeddings athena-offline-embed"
    assert ok.kind is SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.request.model"] == "athena-offline-embed"
    assert attributes["gen_ai.response.model"] == "m"
    assert attributes["gen_ai.embeddings.dimension.count"] == 3
    assert attributes["gen_ai.usage.input_tokens"] == 1
    assert not any("tea" in str(value) for value in attributes.values())
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "ModelApiStatus"
