"""Settings of the offline model server, read once in `__main__` (tests construct them directly)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CHAT_MODEL = "athena-offline"
"""Model id of the chat model, listed by /v1/models and echoed when a request names none."""
EMBEDDING_MODEL = "athena-offline-embed"
"""Model id of the hashing embedder."""


class OfflineModelSettings(BaseSettings):
    """AthenaOS offline model: an OpenAI-compatible chat and embeddings server with deterministic answers.

    Environment: OFFLINE_MODEL_HOST, OFFLINE_MODEL_PORT, OFFLINE_MODEL_EMBEDDING_DIMENSIONS,
    OFFLINE_MODEL_LOG_LEVEL, OFFLINE_MODEL_TEST_DIRECTIVES, ATHENA_OFFLINE_DELAY_MS.
    """

    model_config = SettingsConfigDict(
        env_prefix="OFFLINE_MODEL_",
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    """Address the HTTP server binds to ("0.0.0.0" in a container)."""
    port: int = Field(8090, ge=0, le=65535)
    """HTTP port; 0 picks a free one (tests)."""
    delay_ms: float = Field(20.0, ge=0, validation_alias=AliasChoices("ATHENA_OFFLINE_DELAY_MS"))
    """Pause between streamed chunks, so a person sees the stream; benchmarks set 0."""
    embedding_dimensions: int = Field(384, ge=1, le=16384)
    """Length of embeddings when a request does not ask for `dimensions`."""
    log_level: str = "INFO"
    """Level of the JSON logs on stderr."""
    test_directives: bool = False
    """Whether messages may steer the model with `!fail <status> <count>` and `!slow <ms>` (fault and
    latency tests). Off, such a message is an ordinary message: nobody can make the model fail or stall."""
    shutdown_seconds: float = Field(2.0, ge=0)
    """After SIGTERM/SIGINT, how long open streams may run before their connections are closed."""
