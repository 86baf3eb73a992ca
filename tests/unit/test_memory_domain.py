"""Memory domain code without a server: validation, page tokens, ranking, recall planning, embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from doubles.embedder import HashingEmbedder, hashing_embedding

from memory.domain import (
    MemoryRecord,
    Scope,
    Stage,
    conversation_title,
    optional_embedding,
    require_json,
)
from memory.embedding_models import KNOWN_MODELS, OFFLINE_EMBEDDING_MODEL
from memory.migrate import migration_dimension, render_schema
from memory.pagination import Cursor, decode_page_token, encode_page_token
from memory.ranking import RankingPolicy
from memory.recall import Recaller, RecallQuery
from memory.settings import MemorySettings
from memory.stores import Candidates
from mesh.errors import InvalidArgument

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def invalid_field(call: object) -> str:
    with pytest.raises(InvalidArgument) as raised:
        call()  # type: ignore[operator]
    return raised.value.field


def test_json_values_must_parse() -> None:
    assert invalid_field(lambda: require_json("{", "value_json")) == "value_json"
    assert require_json('{"steps": 1}', "value_json") == '{"steps": 1}'


def test_embeddings_must_match_the_dimension_and_be_usable() -> None:
    assert optional_embedding([], 3) is None
    assert optional_embedding([0.1, 0.2, 0.3], 3) == pytest.approx((0.1, 0.2, 0.3))
    assert invalid_field(lambda: optional_embedding([0.1, 0.2], 3)) == "embedding"
    assert invalid_field(lambda: optional_embedding([0.0, 0.0, 0.0], 3)) == "embedding"
    assert invalid_field(lambda: optional_embedding([math.nan, 1.0, 1.0], 3)) == "embedding"


def test_conversation_title_is_the_start_of_the_first_message() -> None:
    assert conversation_title("  Plan my\nmeals  ") == "Plan my meals"
    long = "word " * 40
    title = conversation_title(long)
    assert len(title) <= 61
    assert title.endswith("…")
    assert long.startswith(title[:-1])


def test_page_tokens_round_trip_and_refuse_garbage_and_other_kinds() -> None:
    cursor = Cursor(at=NOW, id="6f1c2e1a-4d4b-4c53-9d1e-1f6b1f1c2e1a")
    token = encode_page_token("memories", cursor)
    assert decode_page_token(token, "memories") == cursor
    assert decode_page_token("", "memories") is None
    for bad in ("garbage", token[:-3], "e30"):
        assert invalid_field(lambda bad=bad: decode_page_token(bad, "memories")) == "page_token"
    assert invalid_field(lambda: decode_page_token(token, "conversations")) == "page_token"


def test_score_blends_similarity_with_halving_recency() -> None:
    policy = RankingPolicy(threshold=0.5, recency_weight=0.15, half_life_days=30)
    assert policy.score(0.8, NOW, NOW) == pytest.approx(0.85 * 0.8 + 0.15)
    assert policy.recency(NOW - timedelta(days=30), NOW) == pytest.approx(0.5)
    assert policy.recency(NOW - timedelta(days=60), NOW) == pytest.approx(0.25)
    assert policy.recency(NOW + timedelta(days=1), NOW) == 1.0  # clock skew never boosts past "now"
    assert policy.passes(0.5)
    assert not policy.passes(0.4999)


def memory(text: str, *, days_old: float = 0, memory_id: str = "") -> MemoryRecord:
    moment = NOW - timedelta(days=days_old)
    return MemoryRecord(
        id=memory_id or text,
        text=text,
        scope=Scope.USER,
        agent_id="athena",
        key="",
        created_at=moment,
        updated_at=moment,
    )


class FakeStore:
    """A MemoryStore answering fixed neighbours and keyword hits, recording what it was asked."""

    def __init__(
        self,
        nearest: Sequence[tuple[MemoryRecord, float]],
        keyword: Sequence[tuple[MemoryRecord, float]] = (),
        unembedded: Sequence[tuple[MemoryRecord, float]] = (),
    ) -> None:
        self._nearest = list(nearest)
        self._keyword = list(keyword)
        self._unembedded = list(unembedded)
        self.keyword_queries: list[str] = []
        self.limits: list[int] = []

    async def nearest(
        self, user_id: str, agent_id: str, embedding: Sequence[float], limit: int
    ) -> list[tuple[MemoryRecord, float]]:
        self.limits.append(limit)
        return self._nearest[:limit]

    async def keyword(
        self, user_id: str, agent_id: str, query: str, limit: int
    ) -> list[tuple[MemoryRecord, float]]:
        self.keyword_queries.append(query)
        return self._keyword[:limit]

    async def candidates(
        self,
        user_id: str,
        agent_id: str,
        embedding: Sequence[float],
        words: str | None,
        limit: int,
        timeframe: object = None,
    ) -> Candidates:
        nearest = await self.nearest(user_id, agent_id, embedding, limit)
        keyword = await self.keyword(user_id, agent_id, words, limit) if words is not None else []
        return Candidates(nearest, keyword, self._unembedded[:limit])


def recaller(store: FakeStore, threshold: float = 0.55) -> Recaller:
    return Recaller(store, HashingEmbedder(16), RankingPolicy(threshold=threshold))  # type: ignore[arg-type]


async def test_vector_stage_keeps_what_passes_and_ranks_by_blended_score() -> None:
    store = FakeStore(
        nearest=[
            (memory("old but close", days_old=90), 0.90),
            (memory("fresh", days_old=0), 0.86),
            (memory("below threshold"), 0.54),
        ],
        keyword=[(memory("a keyword match", days_old=0), 0.99)],  # counts only when no vector passes
    )
    hits = await recaller(store).recall("u", RecallQuery(text="q", agent_id="athena", k=8), now=NOW)
    # 0.85·0.90 + 0.15·⅛ = 0.784 < 0.85·0.86 + 0.15 = 0.881: recency wins the close call.
    assert [h.memory.text for h in hits] == ["fresh", "old but close"]
    assert all(h.stage is Stage.VECTOR for h in hits)
    assert store.limits == [40]  # more candidates than k, since recency may reorder them


async def test_keyword_stage_ranks_only_when_no_vector_passes() -> None:
    store = FakeStore(
        nearest=[(memory("weak"), 0.3)],
        keyword=[(memory("a", days_old=300), 0.5), (memory("b"), 0.4)],
    )
    hits = await recaller(store).recall(
        "u", RecallQuery(text="breakfast oats", agent_id="athena", k=1), now=NOW
    )
    assert [(h.memory.text, h.stage) for h in hits] == [("b", Stage.KEYWORD)]
    assert store.keyword_queries == ["breakfast oats"]  # the store blinds its words


async def test_memories_without_a_current_vector_follow_the_vector_hits_while_re_embedding() -> None:
    """Mid-way through a model change: what the vector stage can see is ranked by it; memories with no
    vector of the current model yet are found by their words, after it; k still holds."""
    store = FakeStore(
        nearest=[(memory("embedded"), 0.7), (memory("unrelated"), 0.2)],
        keyword=[(memory("not yet embedded"), 1.0), (memory("embedded"), 0.5)],
        unembedded=[(memory("not yet embedded"), 1.0)],
    )
    hits = await recaller(store).recall("u", RecallQuery(text="q", agent_id="athena", k=8), now=NOW)
    assert [(h.memory.text, h.stage) for h in hits] == [
        ("embedded", Stage.VECTOR),
        ("not yet embedded", Stage.KEYWORD),
    ]
    one = await recaller(store).recall("u", RecallQuery(text="q", agent_id="athena", k=1), now=NOW)
    assert [h.memory.text for h in one] == ["embedded"]


async def test_precomputed_embedding_skips_the_model() -> None:
    store = FakeStore(nearest=[(memory("x"), 0.9)])
    embedder = HashingEmbedder(4)
    recall = Recaller(store, embedder, RankingPolicy(threshold=0.5))  # type: ignore[arg-type]
    await recall.recall(
        "u", RecallQuery(text="x", agent_id="a", k=1, embedding=(1.0, 0.0, 0.0, 0.0)), now=NOW
    )
    assert embedder.calls == 0


def cosine(a: str, b: str) -> float:
    return float(np.dot(hashing_embedding(a, 384), hashing_embedding(b, 384)))


def test_offline_threshold_separates_facts_from_unrelated_memories() -> None:
    """The calibration behind the shipped default for the offline (hashing) embedder."""
    threshold = KNOWN_MODELS[OFFLINE_EMBEDDING_MODEL].threshold
    assert cosine("what is my caloric goal?", "my caloric goal is 2000 kcal") >= threshold
    assert (
        cosine("what are my preferred focus blocks?", "my preferred focus blocks are 90 minutes") >= threshold
    )
    facts = [
        "my dog is called Rex",
        "I live in Berlin",
        "I am allergic to peanuts",
        "my name is Alice",
        "the quarterly invoice for Acme is due on Friday",
        "I run 5 km every Tuesday",
    ]
    for fact in facts:
        assert cosine("what is my caloric goal?", fact) < threshold, fact
    assert cosine("same text", "same text") == pytest.approx(1.0, abs=1e-6)


def test_thresholds_follow_the_embedding_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MEMORY_EMBEDDING_MODEL",
        "MEMORY_SIMILARITY_THRESHOLDS",
        "MEMORY_DEFAULT_SIMILARITY_THRESHOLD",
    ):
        monkeypatch.delenv(name, raising=False)
    assert MemorySettings().similarity_threshold == 0.55
    ada = MemorySettings(embedding_model="text-embedding-ada-002", embedding_dimension=1536)
    assert ada.similarity_threshold == 0.82
    assert MemorySettings(embedding_model="text-embedding-3-small").similarity_threshold == 0.45
    assert MemorySettings().sends_dimensions
    assert not ada.sends_dimensions


def test_settings_read_the_shared_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@h/db")
    monkeypatch.setenv("REDIS_URL", "redis://h:1/0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("MEMORY_EMBEDDING_DIMENSION", "1536")
    settings = MemorySettings()
    assert settings.database_url == "postgresql://a@h/db"
    assert settings.redis_url == "redis://h:1/0"
    assert settings.openai_api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(settings)
    assert settings.embedding_dimension == 1536
    assert (settings.port, settings.http_port) == (50053, 9103)


def test_the_pool_keeps_connections_open_within_what_it_may_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, the pool's floor is its size (a pool of a fixed size); a floor set stays within the size."""
    monkeypatch.delenv("MEMORY_POOL_MIN_SIZE", raising=False)
    monkeypatch.delenv("MEMORY_POOL_MAX_SIZE", raising=False)
    assert (MemorySettings().pool_floor, MemorySettings().pool_max_size) == (20, 20)
    assert MemorySettings(pool_max_size=8).pool_floor == 8
    assert MemorySettings(pool_min_size=2, pool_max_size=2).pool_floor == 2
    assert MemorySettings(pool_min_size=0).pool_floor == 0
    with pytest.raises(ValueError, match=r"pool_min_size \(3\) must not exceed pool_max_size \(2\)"):
        MemorySettings(pool_min_size=3, pool_max_size=2)


def test_schema_is_rendered_with_the_configured_dimension() -> None:
    sql = render_schema(1536)
    assert "vector(1536)" in sql
    assert "{dimension}" not in sql
    assert sql.count("FORCE ROW LEVEL SECURITY") == 5
    with pytest.raises(RuntimeError, match="embedding_dimension"):
        migration_dimension()  # only inside a migration run, which sets it
