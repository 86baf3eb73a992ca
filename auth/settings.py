"""Settings of the auth service, read once by `python -m auth` (env prefix `AUTH_`).

Identity providers are nested settings: `AUTH_GOOGLE__CLIENT_ID`, `AUTH_GOOGLE__CLIENT_SECRET`,
`AUTH_GOOGLE__REDIRECT_URIS='["https://app.example/"]'` (same for `AUTH_MICROSOFT__*`). A provider is
offered only when its client id is set. The web app asks providers to send the browser back to its root,
`<origin>/`; with `AUTH_PUBLIC_ORIGIN=https://app.example` that is the redirect URI of every provider
that names none of its own.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings

GOOGLE_DISCOVERY_URL = "https://accounts.google.com/.well-known/openid-configuration"
MICROSOFT_DISCOVERY_URL = "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"


def _seconds(value: Any) -> Any:
    """Durations from the environment may be plain seconds ("900") as well as ISO 8601 ("PT15M")."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return timedelta(seconds=float(value))
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds)]
"""A duration: seconds ("900") or ISO 8601 ("PT15M")."""

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(value: str) -> str:
    """An origin exactly as browsers write `location.origin`, or empty."""
    if not value:
        return value
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.scheme not in DEFAULT_PORTS or not host:
        raise ValueError(f"{value!r}: not an http(s) origin (scheme://host[:port])")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r}: not an origin ({exc})") from exc
    shown = f"[{host}]" if ":" in host else host
    netloc = shown if port in (None, DEFAULT_PORTS[parts.scheme]) else f"{shown}:{port}"
    expected = f"{parts.scheme}://{netloc}"
    if value != expected:
        raise ValueError(f"{value!r}: write it as browsers write `location.origin`: {expected!r}")
    return value


Origin = Annotated[str, AfterValidator(_origin)]
"""`https://app.example`, `http://localhost:8080`: scheme, lower-case host, port unless the default."""


class OidcProviderSettings(BaseModel):
    """One OpenID Connect identity provider (authorization-code flow, confidential client, PKCE S256)."""

    model_config = ConfigDict(frozen=True)

    display_name: str
    """Name on the sign-in button."""
    discovery_url: str
    """The provider's `/.well-known/openid-configuration`."""
    client_id: str = ""
    """OAuth client id registered with the provider; the provider is disabled while it is empty."""
    client_secret: SecretStr = SecretStr("")
    """OAuth client secret (sent to the token endpoint with `client_secret_post`)."""
    redirect_uris: tuple[str, ...] = ()
    """The only redirect URIs BeginLogin accepts (exact string match, as registered with the provider)."""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    """Scopes requested at the authorization endpoint."""
    issuer_aliases: tuple[str, ...] = ()
    """Other `iss` values the provider documents for its ID tokens besides its discovery issuer."""
    trust_email: bool = False
    """Whether this provider's `email` claim may link to an existing account with the same address when
    the ID token does not say `email_verified: true`. Off: Microsoft's `email` claim is not verified in
    multi-tenant apps (the "nOAuth" account-takeover)."""

    @property
    def enabled(self) -> bool:
        return bool(self.client_id)


class GoogleSettings(OidcProviderSettings):
    display_name: str = "Google"
    discovery_url: str = GOOGLE_DISCOVERY_URL
    issuer_aliases: tuple[str, ...] = ("accounts.google.com",)
    """Google documents `iss` as "https://accounts.google.com" or "accounts.google.com"."""


class MicrosoftSettings(OidcProviderSettings):
    display_name: str = "Microsoft"
    discovery_url: str = MICROSOFT_DISCOVERY_URL
    """The `common` endpoint accepts work, school and personal accounts; its discovery document names the
    issuer as `https://login.microsoftonline.com/{tenantid}/v2.0`, resolved per token from `tid`."""


class AuthSettings(ServiceSettings):
    """What `python -m auth` needs; tests construct it directly."""

    model_config = SettingsConfigDict(
        env_prefix="AUTH_", env_nested_delimiter="__", validate_by_name=True, validate_by_alias=True
    )

    port: int = Field(50054, ge=0, le=65535)
    """gRPC port."""
    http_port: int = Field(9104, ge=0, le=65535)
    """HTTP port: `/.well-known/jwks.json` (for Envoy and the services) and `/metrics`."""
    database_url: str = Field(
        "postgresql://athena:athena@127.0.0.1:5432/athena",
        validation_alias=AliasChoices("AUTH_DATABASE_URL", "DATABASE_URL"),
    )
    """PostgreSQL of the `auth` schema, as a non-superuser role."""
    database_pool_size: int = Field(10, ge=1)
    """Maximum connections of the asyncpg pool."""
    keys_dir: Path | None = None
    """Directory of the signing keys (`<kid>.pem`); `data_dir/auth-keys` when unset. In Kubernetes a
    mounted Secret (read-only): keys are generated only in dev, or by `python -m auth rotate-keys`."""
    key_reload_seconds: float = Field(60.0, gt=0)
    """How often the running service rereads `keys_dir` (a rotated Secret reaches pods without restart)."""
    key_activation_delay: Duration = timedelta(minutes=5)
    """A rotated key is published in the JWKS at once but signs only after this delay, so every cache of
    the JWKS (Envoy's `jwt_authn`, `mesh.tokens.RemoteJwks`) knows it before a token needs it. Keep it
    above the longest JWKS cache duration."""
    access_token_ttl: Duration = timedelta(minutes=15)
    """Lifetime of access tokens."""
    refresh_token_ttl: Duration = timedelta(days=30)
    """A refresh token expires if unused this long (each rotation starts a new period)."""
    refresh_reuse_grace: Duration = timedelta(seconds=10)
    """A spent refresh token presented again within this window of its first use (two tabs refreshing
    at once, a retried call whose answer was lost) gets another token of the same family instead of
    revoking it. After the window, reuse revokes the family."""
    login_state_ttl: Duration = timedelta(minutes=10)
    """How long a BeginLogin state (with its nonce and PKCE verifier) may wait for CompleteLogin."""
    http_timeout_seconds: float = Field(10.0, gt=0)
    """Timeout of calls to identity providers (discovery, token endpoint, JWKS)."""
    public_origin: Origin = ""
    """Where people open the web app (`https://athena.example.com`). Providers send the browser back to
    the app's root, `<public_origin>/` (edge/web/src/signin.ts, `redirectUri()`), which is therefore the
    redirect URI of every provider whose `redirect_uris` are unset. Empty: only `redirect_uris`."""
    google: GoogleSettings = GoogleSettings()
    """Sign in with Google."""
    microsoft: MicrosoftSettings = MicrosoftSettings()
    """Sign in with Microsoft (work, school and personal accounts)."""

    @property
    def signing_keys_dir(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "auth-keys"

    @property
    def web_app_redirect_uri(self) -> str | None:
        """The redirect URI the web app sends for `public_origin`, if set."""
        return f"{self.public_origin}/" if self.public_origin else None

    def providers(self) -> dict[str, OidcProviderSettings]:
        """Enabled OIDC providers by id, in display order; those without redirect URIs of their own
        accept the web app's."""
        configured: dict[str, OidcProviderSettings] = {"google": self.google, "microsoft": self.microsoft}
        app = self.web_app_redirect_uri
        return {
            name: provider.model_copy(update={"redirect_uris": (app,)})
            if app and not provider.redirect_uris
            else provider
            for name, provider in configured.items()
            if provider.enabled
        }
