"""Settings of the router (env prefix ROUTER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    port: int = Field(50051, ge=0, le=65535)
    """gRPC port."""
    http_port: int = Field(9101, ge=0, le=65535)
    """HTTP side port (/metrics)."""
    memory_target: str = "127.0.0.1:50053"
    """The memory service."""
    auth_target: str = "127.0.0.1:50054"
    """The auth service (its internal IdentityService erases accounts)."""
    integrations_target: str = "127.0.0.1:50055"
    """The integrations service: a person's connections (exported, and erased by its internal
    IntegrationsService)."""
    peer_timeout_seconds: float = Field(10.0, gt=0)
    """Upper bound of a unary call to a peer when the client set no deadline."""
