"""Settings of the memory service (env prefix `MEMORY_`), read once in `__main__`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from memory.embedding_models import (
    OFFLINE_EMBEDDING_MODEL,
    EmbeddingModel,
    check_dimension,
    sends_dimensions,
    similarity_threshold,
)
from mesh.settings import ServiceSettings

__all__ = ["OFFLINE_EMBEDDING_MODEL", "MemorySettings"]


class MemorySettings(ServiceSettings):
    """How the memory service runs: its ports, PostgreSQL, Redis, the embedding model and retrieval."""

    model_config = SettingsConfigDict(env_prefix="MEMORY_", frozen=True, extra="ignore")

    port: int = Field(50053, ge=0, le=65535)
    """gRPC port."""
    http_port: int = Field(9103, ge=0, le=65535)
    """HTTP side port (/metrics)."""
    database_url: str = Field(
        "postgresql://athena:athena@127.0.0.1:5432/athena",
        validation_alias=AliasChoices("MEMORY_DATABASE_URL", "DATABASE_URL"),
    )
    """PostgreSQL as a role that is neither superuser nor BYPASSRLS (row-level security must apply)."""
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("MEMORY_REDIS_URL", "REDIS_URL")
    )
    """The Redis-compatible server holding ephemeral values."""
    openai_base_url: str = Field(
        "http://127.0.0.1:8090/v1", validation_alias=AliasChoices("MEMORY_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    """OpenAI-compatible API serving /embeddings (the offline model server by default)."""
    openai_api_key: SecretStr = Field(
        SecretStr("offline"), validation_alias=AliasChoices("MEMORY_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    """API key of `openai_base_url`."""
    embedding_model: str = OFFLINE_EMBEDDING_MODEL
    """Embedding model name. Changing it (or the dimension) makes the new model current: recall uses only
    its vectors, and every stored memory and message is embedded again in the background (memory.reembed)."""
    embedding_dimension: int = Field(384, ge=1, le=16000)
    """Length of embeddings (a model at another dimension is another model)."""
    embedding_send_dimensions: bool | None = None
    """Whether requests carry `dimensions`; None: yes, except for models that refuse it (ada-002)."""
    embedding_timeout_seconds: float = Field(10.0, gt=0)
    """Longest wait for one embeddings call (the caller's deadline may cut it shorter)."""
    embedding_concurrency: int = Field(4, ge=1, le=256)
    """Embeddings requests out at once; calls arriving meanwhile wait and go out as one request."""
    embedding_batch_size: int = Field(64, ge=1, le=2048)
    """Most texts in one embeddings request (OpenAI accepts up to 2,048 inputs)."""
    similarity_thresholds: dict[str, float] = Field(default_factory=dict)
    """Vector-stage threshold per embedding model (JSON in MEMORY_SIMILARITY_THRESHOLDS), over the
    calibrated table `memory.embedding_models.KNOWN_MODELS`."""
    default_similarity_threshold: float | None = Field(None, ge=-1.0, le=1.0)
    """Threshold of models neither in `similarity_thresholds` nor in the calibrated table; a model without
    any threshold is refused at start-up."""
    reembed_sweep: bool = True
    """Whether this replica works on the re-embedding job (the job is leased: one replica at a time does);
    false keeps a replica off it, e.g. to spend the embedding API's rate limit on turns."""
    reembed_batch_size: int = Field(64, ge=1, le=2048)
    """Texts embedded (and written) at once by the background re-embedding."""
    reembed_lease_seconds: float = Field(30.0, ge=1, le=3600)
    """How long a replica holds the re-embedding job between batches before another may take it over."""
    reembed_idle_seconds: float = Field(30.0, gt=0, le=3600)
    """How often a replica without the job (or with nothing to do) looks at it again."""
    recency_weight: float = Field(0.15, ge=0.0, le=1.0)
    """w in score = (1 − w)·similarity + w·2^(−age_days / half_life_days)."""
    recency_half_life_days: float = Field(30.0, gt=0)
    """Age at which the recency term halves."""
    recall_default_k: int = Field(8, ge=1, le=50)
    """Results of Recall when the request says 0."""
    hnsw_ef_search: int = Field(400, ge=1, le=1000)
    """HNSW search breadth (raised to the candidate count when smaller). 400: at 100k memories of one user
    no query loses its neighbours (100 left 4 of 400 near zero recall) for +1.4 ms p95; see
    bench/results/memory.md."""
    turn_lease_seconds: float = Field(30.0, ge=1, le=600)
    """How long a turn's answerer holds it when StartTurn names no lease (a repeated request may take
    the turn over after it lapses)."""
    ephemeral_ttl_seconds: float = Field(300.0, gt=0)
    """Time to live of ephemeral values when the request gives none."""
    pool_min_size: int | None = Field(None, ge=0)
    """Connections the pool keeps open however quiet it gets; unset, all it may open (`pool_max_size`): a
    pool of a fixed size, as HikariCP recommends for spikes of demand. Those above it close after five
    minutes unused (`mesh.postgres.IDLE_CONNECTION_SECONDS`) and are opened again by the next burst, on
    its turns' way: a new backend (its login, its cold catalog caches, every statement parsed and planned
    anew), 41-50 ms to the first delta of a lone turn instead of 14-25 ms (one kept open against four,
    2026-12-03). With four kept, bursts of 50 turns after a warm-up of 20 at a time still opened 3-5 more
    in some rounds, PostgreSQL's CPU a turn 2.6-3.4 ms there against 0.8-1.8 with all twenty open
    (2026-12-04). A turn holds two at once (its message stored while memories are recalled) and its
    background work one or two more."""
    pool_max_size: int = Field(20, ge=1)
    """Most connections the pool opens."""
    db_acquire_timeout_seconds: float = Field(2.0, gt=0)
    """Longest wait for a pooled connection (or a new one) before answering UNAVAILABLE."""
    db_command_timeout_seconds: float = Field(5.0, gt=0)
    """Longest a single statement may run."""
    redis_timeout_seconds: float = Field(1.0, gt=0)
    """Connect and command timeout of Redis calls."""
    vapid_key_file: Path | None = None
    """The deployment's VAPID private key for Web Push (P-256, PKCS#8 PEM; `memory.webpush`);
    `data_dir/vapid/private_key.pem` when unset. Made on a dev first start; in Kubernetes the Secret
    memory-vapid-key, mounted read-only. Without it Web Push is off (notifications are still stored)."""
    vapid_subject: str = Field("mailto:webpush@localhost", pattern=r"^(mailto:|https://)\S+$")
    """The VAPID `sub` claim: how a push service reaches the operator (a `mailto:` or `https:` URI)."""
    push_ttl_seconds: int = Field(86_400, ge=0, le=2_419_200)
    """How long a push service keeps a notification for a device that is offline (the `TTL` header)."""
    push_urgency: Literal["very-low", "low", "normal", "high"] = "normal"
    """The `Urgency` header of every push (RFC 8030 §5.3)."""
    push_timeout_seconds: float = Field(10.0, gt=0)
    """Longest wait for one push service's answer."""
    push_allow_http_endpoints: bool = False
    """Accept http:// push endpoints (a local push-service emulator); real push services are https."""
    notifications_heartbeat_seconds: float = Field(30.0, gt=0, le=300)
    """An idle WatchNotifications stream carries a heartbeat this often (below the edge's idle timeout)."""
    background_quiet_seconds: float = Field(0.05, ge=0, le=60)
    """Background work (embedding stored messages, re-embedding, learning facts) waits until no call has
    been served for this long (`mesh.quiet`): it runs in the gaps between turns, not on their path. 0: no
    waiting."""
    background_lag_seconds: float = Field(10.0, ge=0, le=600)
    """...but falls no further behind than this: under load without such gaps it runs anyway."""
    extraction_enabled: bool = True
    """Learn facts after each completed turn (`memory.extraction`): the answer's storing queues a job on
    the Redis stream `extraction_stream`, which a consumer of this service works off in the background."""
    extraction_model: str = "athena-offline"
    """Chat model asked which durable facts a person stated (structured output; at `openai_base_url`)."""
    extraction_timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait for one extraction answer."""
    extraction_min_confidence: float = Field(0.6, ge=0.0, le=1.0)
    """Extracted facts less certain than this are not remembered."""
    extraction_duplicate_similarity: float = Field(0.92, ge=-1.0, le=1.0)
    """Cosine similarity at which an extracted fact counts as a near-duplicate of a current memory of its
    scope and is not stored (see `memory.facts.FactPolicy`)."""
    extraction_max_attempts: int = Field(3, ge=1, le=20)
    """Deliveries of a job at most; one failing that often goes to the dead letters."""
    extraction_retry_seconds: float = Field(30.0, gt=0)
    """How long a failed (or stuck) job waits before it is tried again."""
    extraction_stream: str = Field("athena:memory:facts", min_length=1)
    """The Redis stream of extraction jobs; its dead letters are `<stream>:dead`."""
    extraction_consumer_group: str = Field("memory-facts", min_length=1)
    """The consumer group of the memory replicas working off the jobs."""

    @property
    def vapid_key_path(self) -> Path:
        return (
            self.vapid_key_file
            if self.vapid_key_file is not None
            else self.data_dir / "vapid" / "private_key.pem"
        )

    @model_validator(mode="after")
    def _embedding_model_known(self) -> MemorySettings:
        """A model at a dimension it cannot answer, or one without a threshold, stops start-up."""
        check_dimension(self.embedding_model, self.embedding_dimension)
        _ = self.similarity_threshold
        return self

    @model_validator(mode="after")
    def _pool_floor_within_its_size(self) -> MemorySettings:
        """A pool that would keep more connections open than it may open stops start-up."""
        if self.pool_floor > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must not exceed pool_max_size ({self.pool_max_size})"
            )
        return self

    @property
    def pool_floor(self) -> int:
        """Connections the pool keeps open (`pool_min_size`, else `pool_max_size`)."""
        return self.pool_max_size if self.pool_min_size is None else self.pool_min_size

    @property
    def embedding(self) -> EmbeddingModel:
        """The current embedding model."""
        return EmbeddingModel(self.embedding_model, self.embedding_dimension)

    @property
    def sends_dimensions(self) -> bool:
        """Whether embedding requests carry the `dimensions` parameter."""
        if self.embedding_send_dimensions is not None:
            return self.embedding_send_dimensions
        return sends_dimensions(self.embedding_model)

    @property
    def similarity_threshold(self) -> float:
        """The vector-stage threshold of the configured embedding model."""
        return similarity_threshold(
            self.embedding_model, self.similarity_thresholds, self.default_similarity_threshold
        )
