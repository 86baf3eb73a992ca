"""Settings of the orchestrator (env prefix `ORCHESTRATOR_`), read once in `__main__`; tests build them."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings
from orchestrator.limits import Limits

OFFLINE_MODEL_NAME = "athena-offline"
"""What the offline model server calls its chat model; used when no real API key is configured."""
OFFLINE_EMBEDDING_MODEL = "athena-offline-embed"
"""What the offline model server calls its embedding model (memory's default)."""


class OrchestratorSettings(ServiceSettings):
    """How the orchestrator runs: its ports, the memory service, the model endpoint, tools and limits."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    port: int = Field(50052, ge=0, le=65535)
    """gRPC port."""
    http_port: int = Field(9102, ge=0, le=65535)
    """HTTP side port (/metrics)."""
    memory_target: str = "127.0.0.1:50053"
    """The memory service ("host:port" or "dns:///name:port" for every replica behind a headless Service)."""
    memory_timeout_seconds: float = Field(5.0, gt=0)
    """Longest wait for one memory call (the caller's deadline may cut it shorter)."""
    turn_lease_seconds: float = Field(6.0, ge=1, le=600)
    """A turn being answered is held this long at a time (renewed every third of it): if this replica dies
    mid-turn, a repeated request takes the turn over after at most this long."""
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("ORCHESTRATOR_REDIS_URL", "REDIS_URL")
    )
    """Redis-compatible server holding the answer outbox (answers kept until memory stores them) and the
    per-user chat limits every replica shares."""
    redis_timeout_seconds: float = Field(1.0, gt=0)
    """Connect and command timeout of the outbox's Redis calls."""
    limits_timeout_seconds: float = Field(0.5, gt=0)
    """Longest wait for Redis on a chat turn's admission before the limits are skipped (availability over
    limits: while Redis is down turns are admitted and a WARNING is logged)."""
    max_streams_per_user: int = Field(4, ge=1)
    """Chat streams one user may have open at once, across every replica (RESOURCE_EXHAUSTED beyond)."""
    turns_per_minute: int = Field(30, ge=1)
    """Chat turns one user may start per minute, across every replica (RESOURCE_EXHAUSTED with
    retry-after beyond)."""
    stream_lease_seconds: float = Field(10.0, gt=0)
    """How long a chat stream's slot outlives the last heartbeat of the replica holding it (renewed every
    third of it): a replica killed mid-stream frees its users' slots within this long."""
    openai_base_url: str = Field(
        "http://127.0.0.1:8090/v1",
        validation_alias=AliasChoices("ORCHESTRATOR_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    """OpenAI-compatible Chat Completions endpoint: OpenAI, vLLM, Ollama, llama.cpp or the offline model."""
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ORCHESTRATOR_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    """API key of `openai_base_url`. Unset means the built-in offline model answers (see `offline_model`)."""
    offline_model: bool | None = None
    """Whether answers come from the built-in offline model, as clients are told. Unset: true exactly when
    no API key is configured (set it to false for a keyless local server such as Ollama)."""
    model: str | None = None
    """Model used by every agent instead of the catalog's. Unset: the catalog's model, or
    "athena-offline" for the offline model."""
    embedding_model: str | None = Field(
        None, validation_alias=AliasChoices("ORCHESTRATOR_EMBEDDING_MODEL", "MEMORY_EMBEDDING_MODEL")
    )
    """Memory's embedding model (MEMORY_EMBEDDING_MODEL), at `openai_base_url`: a turn's text is embedded
    while the turn is admitted and sent to memory with it, so its recall searches at once
    (`orchestrator.embedding`; memory ignores a vector of another model and embeds the text itself). Unset:
    "athena-offline-embed" with the offline model, else nothing is embedded here. Empty: off."""
    embedding_dimensions: int | None = Field(None, ge=1, le=16000)
    """Length asked of the embedding model (`dimensions`), for a model memory shortens
    (MEMORY_EMBEDDING_DIMENSION below the model's own). Unset: the model's own length."""
    embedding_timeout_seconds: float = Field(2.0, gt=0)
    """Longest wait for a turn's embedding before memory is left to make it."""
    max_steps: int = Field(8, ge=1, le=64)
    """Model calls per turn at most (each tool round is one); a turn needing more fails clearly."""
    history_messages: int = Field(20, ge=0, le=200)
    """How many earlier messages of the conversation are packed into the prompt."""
    recall_k: int = Field(8, ge=1, le=50)
    """How many memories are recalled for the prompt."""
    turn_starts_at_once: int = Field(8, ge=1, le=1024)
    """Turns this replica starts in memory at once at least (`orchestrator.gate`): a burst's other turns
    wait for a place, so that the first ones are answered while memory stores the next."""
    turn_starts_at_most: int = Field(256, ge=1, le=4096)
    """Turns started in memory at once at most, however well memory keeps up (the limit grows from
    `turn_starts_at_once` while memory's latency shows no queue)."""
    model_attempts: int = Field(3, ge=1, le=10)
    """Attempts of one model call on 429, 5xx and timeouts (only before anything was streamed)."""
    model_timeout_seconds: float = Field(60.0, gt=0)
    """Longest wait for one model call without a caller deadline."""
    coalesce_ms: float = Field(50.0, ge=0, le=500)
    """Longest a piece of an answer's text waits for more text to go out with it (the first text of an
    answer never waits); 0 sends every piece the model writes as an event of its own."""
    coalesce_busy_ms: float = Field(250.0, ge=0, le=1000)
    """Longest a piece of text waits while other turns of this orchestrator wait for their first text:
    first words first (`orchestrator.coalesce`: the longer hold, and the model read only as the held text goes
    meanwhile). At most `coalesce_ms` turns both off."""
    catalog_path: Path | None = None
    """Agent catalog file; unset uses the catalog shipped in the package (`orchestrator/agents.json`)."""
    integrations_target: str | None = None
    """The integrations service: `calendar_freebusy` and `calendar_events` read the person's connected
    calendars there, `file_search`/`file_read` their connected drives and `wearable_stats` their health
    data. Unset: agents have memory tools only."""

    @model_validator(mode="after")
    def _turn_starts_floor_within_its_ceiling(self) -> OrchestratorSettings:
        """A limit of turn starts whose floor is above its ceiling stops start-up."""
        if self.turn_starts_at_once > self.turn_starts_at_most:
            raise ValueError(
                f"turn_starts_at_once ({self.turn_starts_at_once}) must not exceed turn_starts_at_most "
                f"({self.turn_starts_at_most})"
            )
        return self

    def limits(self) -> Limits:
        return Limits(
            max_streams=self.max_streams_per_user,
            turns_per_window=self.turns_per_minute,
            stream_lease_seconds=self.stream_lease_seconds,
        )

    @property
    def uses_offline_model(self) -> bool:
        if self.offline_model is not None:
            return self.offline_model
        return self.openai_api_key is None

    @property
    def turn_embedding_model(self) -> str | None:
        """The model turns' texts are embedded with here, or None when memory embeds them."""
        if self.embedding_model is not None:
            return self.embedding_model or None
        return OFFLINE_EMBEDDING_MODEL if self.uses_offline_model else None

    def model_for(self, catalog_model: str) -> str:
        """The model name sent for an agent whose catalog entry names `catalog_model`."""
        if self.model:
            return self.model
        return OFFLINE_MODEL_NAME if self.uses_offline_model else catalog_model
