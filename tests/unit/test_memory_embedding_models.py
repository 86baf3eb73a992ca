"""The embedding-model table (thresholds and dimensions per model), the settings that use it, and the
re-embedding's planning helpers. No I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from memory.embedding_models import (
    KNOWN_MODELS,
    OFFLINE_EMBEDDING_MODEL,
    EmbeddingModel,
    ReembedProgress,
    UnknownThreshold,
    check_dimension,
    pending_batches,
    similarity_threshold,
)
from memory.settings import MemorySettings


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MEMORY_EMBEDDING_MODEL",
        "MEMORY_EMBEDDING_DIMENSION",
        "MEMORY_SIMILARITY_THRESHOLDS",
        "MEMORY_DEFAULT_SIMILARITY_THRESHOLD",
    ):
        monkeypatch.delenv(name, raising=False)


def test_every_known_model_says_where_its_threshold_comes_from() -> None:
    assert {"athena-offline-embed", "text-embedding-3-small", "text-embedding-3-large"} <= set(KNOWN_MODELS)
    for name, known in KNOWN_MODELS.items():
        assert -1.0 < known.threshold < 1.0, name
        assert len(known.source) > 20, name


def test_thresholds_come_from_overrides_then_the_table_then_the_default() -> None:
    assert similarity_threshold(OFFLINE_EMBEDDING_MODEL) == 0.55
    assert similarity_threshold(OFFLINE_EMBEDDING_MODEL, {OFFLINE_EMBEDDING_MODEL: 0.7}) == 0.7
    assert similarity_threshold("my-model", {"my-model": 0.3}) == 0.3
    assert similarity_threshold("my-model", default=0.6) == 0.6
    with pytest.raises(UnknownThreshold, match="my-model"):
        similarity_threshold("my-model")


def test_an_unknown_model_needs_an_explicit_threshold_to_start() -> None:
    with pytest.raises(ValidationError, match="MEMORY_SIMILARITY_THRESHOLDS"):
        MemorySettings(embedding_model="nomic-embed-text")
    assert (
        MemorySettings(
            embedding_model="nomic-embed-text", default_similarity_threshold=0.5
        ).similarity_threshold
        == 0.5
    )
    named = MemorySettings(
        embedding_model="nomic-embed-text", similarity_thresholds={"nomic-embed-text": 0.4}
    )
    assert named.similarity_threshold == 0.4


def test_a_model_at_a_dimension_it_cannot_answer_is_refused() -> None:
    check_dimension("text-embedding-3-small", 512)  # v3 models shorten on request
    check_dimension(OFFLINE_EMBEDDING_MODEL, 8)  # the hashing embedder answers any dimension
    with pytest.raises(ValueError, match="1536"):
        check_dimension("text-embedding-ada-002", 384)
    with pytest.raises(ValidationError, match="384"):
        MemorySettings(embedding_model="all-MiniLM-L6-v2", embedding_dimension=768)
    minilm = MemorySettings(embedding_model="all-MiniLM-L6-v2")
    assert not minilm.sends_dimensions
    assert minilm.embedding == EmbeddingModel("all-MiniLM-L6-v2", 384)


def test_a_model_at_another_dimension_is_another_model() -> None:
    assert EmbeddingModel("text-embedding-3-small", 512) != EmbeddingModel("text-embedding-3-small", 1536)
    assert str(EmbeddingModel("text-embedding-3-small", 512)) == "text-embedding-3-small@512"


def test_pending_texts_go_out_in_batches_in_order() -> None:
    assert pending_batches(0, 4) == []
    assert pending_batches(5, 4) == [(0, 4), (4, 5)]
    assert pending_batches(8, 4) == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="batch_size"):
        pending_batches(3, 0)


def test_progress_is_the_share_of_users_done() -> None:
    model = EmbeddingModel(OFFLINE_EMBEDDING_MODEL, 256)
    assert ReembedProgress(model, 1, 4, 10, finished=False, leased_by="a").fraction == 0.25
    assert ReembedProgress(model, 0, 0, 0, finished=False, leased_by="").fraction == 1.0
    assert ReembedProgress(model, 3, 4, 10, finished=True, leased_by="").fraction == 1.0
