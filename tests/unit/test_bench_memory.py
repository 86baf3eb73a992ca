"""The pure helpers of bench/memory.py (no database): recall@k, percentiles, the synthetic data."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from bench.memory import (
    DIMENSION,
    MEMORY_COLUMNS,
    Dataset,
    Scenario,
    nearest_ids,
    noise_scales,
    normalized,
    percentile,
    recall_at_k,
    vector_binary,
)


def test_recall_at_k_counts_the_exact_neighbours_found() -> None:
    exact = [str(i) for i in range(20)]
    assert recall_at_k(exact, exact, 10) == 1.0
    assert recall_at_k(["0", "1", "x", "3", "y", "5", "6", "7", "8", "9"], exact, 10) == 0.8
    # Only the first k of each side count.
    assert recall_at_k([*exact[10:20], *exact[:10]], exact, 10) == 0.0
    # Fewer than k candidates exist: the denominator is what exists.
    assert recall_at_k(["a", "b"], ["b", "a"], 10) == 1.0
    assert recall_at_k([], [], 10) == 1.0


def test_nearest_ids_sorts_by_similarity() -> None:
    found = [(SimpleNamespace(id="a"), 0.5), (SimpleNamespace(id="b"), 0.9), (SimpleNamespace(id="c"), 0.7)]
    assert nearest_ids(found) == ["b", "c", "a"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_vector_binary_is_pgvector_binary_format() -> None:
    matrix = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)
    (encoded,) = vector_binary(matrix)
    assert encoded == struct.pack(">HH3f", 3, 0, 1.0, -2.0, 0.5)


def test_synthetic_memories_are_unit_vectors_clustered_by_topic() -> None:
    scales = noise_scales(DIMENSION, 0.9)
    assert float(np.sqrt(np.sum(scales.astype(np.float64) ** 2))) == pytest.approx(0.9)
    assert np.allclose(np.linalg.norm(normalized(np.ones((2, 4), dtype=np.float32)), axis=1), 1.0)
    dataset = Dataset(
        Scenario(
            "t",
            users=3,
            per_user=50,
            topics_per_user=2,
            latency_queries=1,
            throughput_queries=1,
            recall_queries=1,
        ),
        seed=7,
    )
    (records,) = list(dataset.memory_chunks())
    assert len(records) == 150
    rows = [dict(zip(MEMORY_COLUMNS, record, strict=True)) for record in records]
    assert {row["user_id"] for row in rows} == set(dataset.user_ids)
    assert all(
        isinstance(row["created_at"], datetime) and row["created_at"] <= datetime.now(UTC) for row in rows
    )
    # Sealed as the service seals them: each opens with its user's key in its own row, and only there.
    user = {u: i for i, u in enumerate(dataset.user_ids)}
    for row in rows[:5]:
        cipher = dataset.cipher(user[row["user_id"]])
        assert cipher.open_text("vector_memory", "text", row["id"], row["text"]).startswith(
            "synthetic memory"
        )
        assert row["words"] == cipher.words(cipher.open_text("vector_memory", "text", row["id"], row["text"]))
    queries = dataset.queries(20, 0)
    assert queries == dataset.queries(20, 0)  # deterministic
    for user_id, agent_id, vector in queries:
        assert user_id in {str(u) for u in dataset.user_ids}
        assert agent_id != "user"
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        # A query is far closer to one of its user's topic centroids than to an unrelated direction.
        user = [str(u) for u in dataset.user_ids].index(user_id)
        assert float(np.max(dataset.centroids[user] @ np.asarray(vector))) > 0.5
