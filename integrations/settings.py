"""Settings of the integrations service, read once by `python -m integrations` (env prefix `INTEGRATIONS_`).

Providers are nested settings: `INTEGRATIONS_GOOGLE__CLIENT_ID`, `INTEGRATIONS_GOOGLE__CLIENT_SECRET`,
`INTEGRATIONS_GOOGLE__REDIRECT_URIS='["https://app.example/connections"]'` (same for
`INTEGRATIONS_MICROSOFT__*`). A provider is offered only when its client id is set. Base URLs default to
the real hosts; tests and `make run` point them at the provider emulators (tests/emulators).
"""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from integrations import providers
from integrations.connections import redirect_allowed
from integrations.objects import ObjectStoreSettings
from integrations.providers import Provider, ProviderClient
from mesh.settings import ServiceSettings


class ProviderSettings(BaseModel):
    """This deployment's OAuth client at one provider (a confidential web client)."""

    model_config = ConfigDict(frozen=True)

    client_id: str = ""
    """OAuth client id registered with the provider; the provider is not offered while it is empty."""
    client_secret: SecretStr = SecretStr("")
    """OAuth client secret (sent to the token endpoint with `client_secret_post`)."""
    redirect_uris: tuple[str, ...] = ()
    """The only redirect URIs BeginConnection accepts (exact match, as registered with the provider):
    https, or http on loopback for development."""

    @field_validator("redirect_uris")
    @classmethod
    def _redirects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            if not redirect_allowed(uri):
                raise ValueError(f"{uri!r}: a redirect URI must be https (http only on loopback)")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.client_id)


class GoogleSettings(ProviderSettings):
    accounts_url: str = "https://accounts.google.com"
    """Where the consent page is (`/o/oauth2/v2/auth`)."""
    oauth2_url: str = "https://oauth2.googleapis.com"
    """Token (`/token`) and revocation (`/revoke`) endpoints."""
    calendar_url: str = "https://www.googleapis.com/calendar/v3"
    """Google Calendar API v3."""
    drive_url: str = "https://www.googleapis.com/drive/v3"
    """Google Drive API v3."""
    health_url: str = "https://health.googleapis.com/v4"
    """Google Health API v4 (the successor of the Fitbit Web API and of Google Fit)."""


class MicrosoftSettings(ProviderSettings):
    login_url: str = "https://login.microsoftonline.com"
    """The identity platform (`/{tenant}/oauth2/v2.0/authorize` and `/token`)."""
    tenant: str = "common"
    """`common` (work, school and personal accounts), `organizations`, `consumers`, or a tenant id."""
    graph_url: str = "https://graph.microsoft.com/v1.0"
    """Microsoft Graph v1.0."""


class IntegrationsSettings(ServiceSettings):
    """What `python -m integrations` needs; tests construct it directly."""

    model_config = SettingsConfigDict(
        env_prefix="INTEGRATIONS_", env_nested_delimiter="__", validate_by_name=True, validate_by_alias=True
    )

    port: int = Field(50055, ge=0, le=65535)
    """gRPC port."""
    http_port: int = Field(9105, ge=0, le=65535)
    """HTTP port: `/metrics`."""
    database_url: str = Field(
        "postgresql://athena:athena@127.0.0.1:5432/athena",
        validation_alias=AliasChoices("INTEGRATIONS_DATABASE_URL", "DATABASE_URL"),
    )
    """PostgreSQL of the `integrations` schema, as a non-superuser role."""
    database_pool_size: int = Field(5, ge=1)
    """Maximum connections of the asyncpg pool."""
    http_timeout_seconds: float = Field(10.0, gt=0)
    """Timeout of each call to a provider."""
    maintenance_seconds: float = Field(60.0, gt=0)
    """How often expired pending connections are purged."""
    max_upload_bytes: int = Field(2 * 1024**3, gt=0)
    """The largest file UploadsService takes (an Apple Health `export.zip`, or the `export.xml` in it)."""
    upload_receiving_hours: float = Field(24.0, gt=0)
    """An upload still waiting for its bytes this long after its last chunk is deleted."""
    import_concurrency: int = Field(1, ge=1)
    """Imports one replica runs at once (each keeps a core busy while it reads)."""
    webhooks_public_url: str = ""
    """The edge's public origin (`https://app.example`), where providers deliver change notifications
    (`/webhooks/graph`, `/webhooks/graph/lifecycle`, `/webhooks/google`); empty: no subscriptions are made.
    Providers want HTTPS (http only on loopback, for the emulators)."""
    subscription_renewal_limit: int = Field(100, ge=1)
    """Subscriptions renewed at most per maintenance round."""
    memory_target: str | None = None
    """Memory's gRPC address, whose `NotifierService` the proactive agents leave their notifications with
    (with the service key). Unset, or without `ATHENA_SERVICE_KEY`: the event bus is not consumed here."""
    event_consumer_group: str = "integrations-proactive"
    """The consumer group of the event bus (`mesh.events`) this service's replicas share."""
    google: GoogleSettings = GoogleSettings()
    microsoft: MicrosoftSettings = MicrosoftSettings()
    objects: ObjectStoreSettings = Field(
        default_factory=lambda data: ObjectStoreSettings(root=data["data_dir"] / "objects")
    )
    """Where uploads are kept, encrypted (`integrations.objects`): `INTEGRATIONS_OBJECTS__BACKEND` ("local" or
    "s3"), `…__ROOT`, `…__BUCKET`, `…__PREFIX`, `…__ENDPOINT_URL`, `…__REGION`. Unset, files under
    `<data_dir>/objects`."""

    @field_validator("webhooks_public_url")
    @classmethod
    def _webhooks_origin(cls, value: str) -> str:
        if value and not redirect_allowed(value):
            raise ValueError(f"{value!r}: the webhooks' public URL must be https (http only on loopback)")
        return value.rstrip("/")

    def providers(self) -> dict[Provider, ProviderClient]:
        """The providers this deployment is registered with."""
        offered: dict[Provider, ProviderClient] = {}
        google, microsoft = self.google, self.microsoft
        if google.enabled:
            offered[Provider.GOOGLE] = providers.google(
                google.client_id,
                google.client_secret.get_secret_value(),
                frozenset(google.redirect_uris),
                accounts_url=google.accounts_url,
                oauth2_url=google.oauth2_url,
            )
        if microsoft.enabled:
            offered[Provider.MICROSOFT] = providers.microsoft(
                microsoft.client_id,
                microsoft.client_secret.get_secret_value(),
                frozenset(microsoft.redirect_uris),
                login_url=microsoft.login_url,
                tenant=microsoft.tenant,
            )
        return offered
