"""Settings of the router (env prefix ROUTER_)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings
from router.limits import Limits


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    port: int = Field(50051, ge=0, le=65535)
    """gRPC port."""
    http_port: int = Field(9101, ge=0, le=65535)
    """HTTP side port (/metrics)."""
    orchestrator_target: str = "127.0.0.1:50052"
    """The orchestrator pool. On Kubernetes "dns:///orchestrator:50052" (a headless Service): calls are
    balanced round-robin over every replica. Any gRPC target works, for example
    "ipv4:10.0.0.1:50052,10.0.0.2:50052"."""
    memory_target: str = "127.0.0.1:50053"
    """The memory service."""
    auth_target: str = "127.0.0.1:50054"
    """The auth service (its internal IdentityService erases accounts)."""
    peer_timeout_seconds: float = Field(10.0, gt=0)
    """Upper bound of a unary call to a peer when the client set no deadline."""
    chat_attempts: int = Field(2, ge=1, le=5)
    """How often a Chat is tried on the orchestrator pool when it fails before its first event."""
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("ROUTER_REDIS_URL", "REDIS_URL")
    )
    """Redis-compatible server holding the rate-limit counters every router replica shares. When it is
    down, chat turns are admitted without limits (availability over limits) and a WARNING is logged."""
    redis_timeout_seconds: float = Field(0.5, gt=0)
    """Longest wait for Redis on a chat turn before the limits are skipped."""
    max_streams_per_user: int = Field(4, ge=1)
    """Chat streams one user may have open at once (RESOURCE_EXHAUSTED beyond)."""
    turns_per_minute: int = Field(30, ge=1)
    """Chat turns one user may start per minute (RESOURCE_EXHAUSTED with retry-after beyond)."""
    stream_lease_seconds: float = Field(10.0, gt=0)
    """How long a chat stream's slot outlives the last heartbeat of the replica holding it (renewed every
    third of it): a replica killed mid-stream frees its users' slots within this long."""

    def limits(self) -> Limits:
        return Limits(
            max_streams=self.max_streams_per_user,
            turns_per_window=self.turns_per_minute,
            stream_lease_seconds=self.stream_lease_seconds,
        )
