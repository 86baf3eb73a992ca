"""A turn's text embedded while the turn is admitted (`orchestrator.embedding`): the request, a failure
left to memory, and the vector reaching memory's StartTurn with the turn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from doubles.memory import InMemoryGateway
from doubles.model import ScriptedModel, ScriptedReply
from test_memory_embeddings import Handler, api_for, embeddings_answer

from mesh.model_api import ModelApi
from orchestrator.catalog import Catalog
from orchestrator.embedding import RECALL_TEXT_LENGTH, TurnEmbedder
from orchestrator.records import NewTurn, TextEmbedding
from orchestrator.tools import build_registry
from orchestrator.turn import TurnRunner

__all__ = ["api_for"]


async def test_the_text_recall_compares_is_embedded_with_memorys_model(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    seen: list[dict[str, Any]] = []

    def handler(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen.append(body)
        return embeddings_answer([[0.6, 0.8]])

    api = await api_for(handler)
    long_text = "  " + "x" * (RECALL_TEXT_LENGTH + 50) + "  "
    embedded = await TurnEmbedder(api, "text-embedding-3-small", dimensions=2).embed(long_text)
    assert embedded == TextEmbedding("text-embedding-3-small", (0.6, 0.8))
    assert await TurnEmbedder(api, "athena-offline-embed").embed(" what is my goal? ") is not None
    first, second = seen
    assert first["model"] == "text-embedding-3-small"
    assert first["input"] == ["x" * RECALL_TEXT_LENGTH]  # stripped and cut as memory's recall cuts it
    assert first["dimensions"] == 2
    assert second["input"] == ["what is my goal?"]
    assert "dimensions" not in second  # the model's own length


async def test_a_failed_embedding_is_left_to_memory(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    failing = await api_for(lambda _: (503, {}))
    assert await TurnEmbedder(failing, "athena-offline-embed").embed("hello") is None
    empty = await api_for(lambda _: embeddings_answer([]))
    assert await TurnEmbedder(empty, "athena-offline-embed").embed("hello") is None


async def test_the_turns_vector_reaches_memory_with_the_turn(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    catalog = Catalog.load()
    memory = InMemoryGateway(agents=list(catalog))
    api = await api_for(lambda _: embeddings_answer([[1.0, 0.0, 0.0]]))

    def runner(embedder: TurnEmbedder | None) -> TurnRunner:
        model = ScriptedModel([ScriptedReply("Hello")])
        return TurnRunner(catalog, memory, model, build_registry(), embedder=embedder)

    embedded = runner(TurnEmbedder(api, "athena-offline-embed"))
    turn = NewTurn("athena", "hi there")
    embedding = embedded.embedding(turn)
    assert embedding is not None
    [event async for event in embedded.run("user-1", turn, embedding)]
    assert memory.started[-1].embedding == TextEmbedding("athena-offline-embed", (1.0, 0.0, 0.0))

    plain = runner(None)
    assert plain.embedding(turn) is None
    [event async for event in plain.run("user-1", NewTurn("athena", "hi again"))]
    assert memory.started[-1].embedding is None


async def test_a_burst_of_turns_is_embedded_in_a_few_requests_each_turn_its_own_vector(
    api_for: Callable[[Handler], Awaitable[ModelApi]],
) -> None:
    requests: list[list[str]] = []

    def handler(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        requests.append(body["input"])
        return embeddings_answer([[float(len(text)), 1.0] for text in body["input"]])

    embedder = TurnEmbedder(await api_for(handler), "athena-offline-embed", concurrency=1)
    texts = ["a" * length for length in range(1, 9)]
    embedded = await asyncio.gather(*(embedder.embed(text) for text in texts))
    assert [e.vector if e else None for e in embedded] == [(float(len(text)), 1.0) for text in texts]
    assert len(requests) == 2  # the first alone, then what waited meanwhile as one request
    assert sorted(text for sent in requests for text in sent) == sorted(texts)
