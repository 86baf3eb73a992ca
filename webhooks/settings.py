"""Settings of the webhooks service, read once by `python -m webhooks` (env prefix `WEBHOOKS_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings


class WebhooksSettings(ServiceSettings):
    """What `python -m webhooks` needs; tests construct it directly."""

    model_config = SettingsConfigDict(env_prefix="WEBHOOKS_", validate_by_name=True, validate_by_alias=True)

    port: int = Field(50056, ge=0, le=65535)
    """gRPC port: health only (probes); the webhooks are on the HTTP port."""
    http_port: int = Field(9106, ge=0, le=65535)
    """HTTP port: the webhooks under `/webhooks/` (what the edge routes there) and `/metrics`."""
    redis_timeout_seconds: float = Field(1.0, gt=0)
    """Each Redis command gives up after this long (the request is then answered 503 and retried by the
    provider): Graph wants an answer within 3 seconds."""
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    """The largest request body taken (413 above it)."""
    rate_limit: int = Field(600, ge=1)
    """Requests one source address may make per `rate_window_seconds` (429 above it)."""
    rate_window_seconds: float = Field(60.0, gt=0)
    """Length of a rate-limit window."""
    replay_window_seconds: int = Field(6 * 3600, ge=1)
    """How long a published Graph or Health notification is remembered: the same one again within it is a
    replay, answered 2xx and not published. Above Graph's 4 hours of retries."""
    forwarded_for: bool = True
    """Take the client's address from the last `X-Forwarded-For` entry (the one Envoy appends) instead of the
    connection's peer (Envoy itself). Only the edge reaches the service (its NetworkPolicy)."""
    google_health_secret: SecretStr | None = None
    """The Google Health subscriber's `endpointAuthorization.secret`, sent verbatim as `Authorization`
    ("Bearer …"): verification requests carrying it are answered 201, others 401."""
    google_health_public_keys: Path | None = None
    """Google Health API's public key that signs notifications (`X-HEALTHAPI-SIGNATURE`): a Tink JSON
    keyset, a JWK or JWK set, or a PEM file (`webhooks.signatures`). Unset: every notification is refused."""
