"""Settings of the router (env prefix ROUTER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", frozen=True, extra="ignore")

    port: int = Field(50051, ge=0, le=65535)
    http_port: int = Field(9101, ge=0, le=65535)
    orchestrator_target: str = "127.0.0.1:50052"
    """The orchestrator pool. On Kubernetes "dns:///orchestrator:50052" (a headless Service): calls are
    balanced round-robin over every replica."""
    memory_target: str = "127.0.0.1:50053"
    auth_target: str = "127.0.0.1:50054"
    peer_timeout_seconds: float = Field(10.0, gt=0)
    """Upper bound of a unary call to a peer when the client set no deadline."""
    chat_attempts: int = Field(2, ge=1, le=5)
    """How often a Chat is tried on the orchestrator pool when it fails before its first event."""
