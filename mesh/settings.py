"""Typed settings shared by every service; each service subclasses `ServiceSettings` with its env prefix.

Settings are read once, in `__main__`, and passed down; nothing else reads the environment. Fields shared
by the whole deployment (ATHENA_ENV, ATHENA_DATA_DIR, token issuer/audience, JWKS URL, REDIS_URL) use fixed
variable names; service fields use the service's prefix (ROUTER_PORT, MEMORY_DATABASE_URL, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def shared(name: str) -> AliasChoices:
    """Read a deployment-wide setting from `name` whatever the service's prefix."""
    return AliasChoices(name)


class ServiceSettings(BaseSettings):
    """What every gRPC service of the mesh needs to start."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        use_attribute_docstrings=True,
    )

    env: Literal["dev", "prod"] = Field("prod", validation_alias=shared("ATHENA_ENV"))
    """"dev" enables DevLogin and other local conveniences; anything facing people runs "prod"."""
    data_dir: Path = Field(Path("var"), validation_alias=shared("ATHENA_DATA_DIR"))
    """Where local state lives (keys, embedded database files)."""
    host: str = "127.0.0.1"
    """Address the gRPC and HTTP ports bind to ("0.0.0.0" in a container)."""
    port: int = Field(0, ge=0, le=65535)
    """gRPC port; 0 picks a free one (tests)."""
    http_port: int = Field(0, ge=0, le=65535)
    """HTTP port for /metrics (and, on auth, /.well-known/jwks.json); 0 picks a free one."""
    startup_timeout_seconds: float = Field(60.0, gt=0)
    """How long start-up keeps retrying while a dependency (PostgreSQL, a peer) is not reachable yet."""
    readiness_interval_seconds: float = Field(2.0, gt=0)
    """How often the readiness check runs while serving."""
    request_read_timeout_seconds: float = Field(10.0, gt=0)
    """How long a call's request message may take to arrive whole before it is refused."""
    max_concurrent_streams: int = Field(512, ge=1)
    """Calls one client connection may hold open at once."""
    drain_seconds: float = Field(10.0, gt=0)
    """After SIGTERM, how long in-flight calls may finish before they are cancelled."""
    max_connection_age_seconds: float = Field(300.0, gt=0)
    """Clients reconnect after this long, so new replicas behind a headless Service receive traffic."""
    max_connection_age_grace_seconds: float = Field(60.0, ge=0)
    """How long calls on an aged connection may still run (streams included)."""
    keepalive_time_seconds: float = Field(30.0, gt=0)
    """Interval of HTTP/2 keepalive pings on idle connections."""
    log_level: str = "INFO"
    """Level of the JSON logs on stderr."""
    otlp_endpoint: str | None = Field(None, validation_alias=shared("OTEL_EXPORTER_OTLP_ENDPOINT"))
    """OpenTelemetry collector (OTLP/gRPC); traces are not exported when unset."""
    genai_capture_message_content: bool = Field(
        False, validation_alias=shared("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    )
    """Record what people said and were answered on model calls' spans (`mesh.genai`); off by default."""
    jwt_issuer: str = Field("athenaos", validation_alias=shared("ATHENA_JWT_ISSUER"))
    """`iss` of access tokens."""
    jwt_audience: str = Field("athenaos-api", validation_alias=shared("ATHENA_JWT_AUDIENCE"))
    """`aud` of access tokens."""
    jwks_url: str = Field(
        "http://127.0.0.1:9104/.well-known/jwks.json", validation_alias=shared("ATHENA_JWKS_URL")
    )
    """Where services fetch the keys that verify access tokens (the auth service's HTTP port)."""
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=shared("REDIS_URL"))
    """The deployment's Redis-compatible server. Every service follows the access-token revocation list
    there (`mesh.revocation_feed`; auth writes it), so every service must name the same server (memory and
    the orchestrator, which keep more there, may name it under their own prefix instead)."""
    service_key: SecretStr | None = Field(None, validation_alias=shared("ATHENA_SERVICE_KEY"))
    """Shared secret of the few internal calls made for no user (the orchestrator syncing the agent
    catalog); such methods are refused when it is unset."""
    kms: Literal["local", "aws-kms"] = Field("local", validation_alias=shared("ATHENA_KMS"))
    """Which KMS wraps the data keys of envelope encryption (`mesh.kms`): "local", key files in
    `kms_keys_dir`; "aws-kms", the AWS KMS key `kms_aws_key_id`."""
    kms_keys_dir: Path | None = Field(None, validation_alias=shared("ATHENA_KMS_KEYS_DIR"))
    """The local KMS's key-encryption keys; default `<data_dir>/kms-keys` (made on a dev first start)."""
    kms_aws_key_id: str | None = Field(None, validation_alias=shared("ATHENA_KMS_AWS_KEY_ID"))
    """The AWS KMS key (id, ARN or alias) that wraps new data keys."""
    kms_aws_region: str | None = Field(None, validation_alias=shared("AWS_REGION"))
    """The AWS region of the KMS key (credentials come from boto3's usual chain)."""
    kms_aws_endpoint_url: str | None = Field(None, validation_alias=shared("ATHENA_KMS_AWS_ENDPOINT_URL"))
    """Another endpoint for AWS KMS (a VPC endpoint; a local emulator in tests)."""
    data_key_cache_seconds: float = Field(
        300.0, ge=0, validation_alias=shared("ATHENA_DATA_KEY_CACHE_SECONDS")
    )
    """How long an unwrapped data key stays in a service's memory after its last unwrap."""

    @property
    def kms_directory(self) -> Path:
        return self.kms_keys_dir if self.kms_keys_dir is not None else self.data_dir / "kms-keys"
