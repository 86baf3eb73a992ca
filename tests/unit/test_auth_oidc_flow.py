"""OIDC pieces that need no provider: PKCE, endpoint checks, login-state expiry, settings of providers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from doubles.auth_store import MemoryAuthStore
from doubles.revocations import RecordingRevocations

from auth.access import AccessTokenIssuer
from auth.keys import KeyRing, generate_key
from auth.oidc import OidcLogin, OidcProvider, _check_endpoint, pkce_challenge
from auth.sessions import SessionManager
from auth.settings import AuthSettings, GoogleSettings, MicrosoftSettings
from mesh.errors import Unauthenticated, Unavailable

REDIRECT = "https://app.example/auth/callback"


def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    assert (
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://accounts.google.com/o/oauth2/v2/auth", True),
        ("http://127.0.0.1:8000/token", True),
        ("http://localhost:8000/token", True),
        ("http://accounts.example/token", False),
        ("ftp://accounts.example/token", False),
        ("https:///nohost", False),
    ],
)
def test_provider_endpoints_must_be_https_except_on_loopback(url: str, allowed: bool) -> None:
    if allowed:
        assert _check_endpoint(url, "endpoint") == url
    else:
        with pytest.raises(Unavailable):
            _check_endpoint(url, "endpoint")


def discovery(request: httpx.Request) -> httpx.Response:
    assert request.url.path == "/.well-known/openid-configuration"
    return httpx.Response(
        200,
        json={
            "issuer": "https://idp.example",
            "authorization_endpoint": "https://idp.example/authorize?prompt=select_account",
            "token_endpoint": "https://idp.example/token",
            "jwks_uri": "https://idp.example/jwks",
        },
    )


async def test_a_login_state_expires_and_is_spent_by_the_late_attempt() -> None:
    now = [datetime(2025, 1, 1, tzinfo=UTC)]
    store = MemoryAuthStore()
    ring = KeyRing([generate_key(now[0])], activation_delay=timedelta(0), retention=timedelta(minutes=16))
    issuer = AccessTokenIssuer(
        lambda: ring, issuer="athenaos", audience="athenaos-api", ttl=timedelta(minutes=15)
    )
    sessions = SessionManager(
        store,
        issuer,
        RecordingRevocations(),
        refresh_ttl=timedelta(days=1),
        reuse_grace=timedelta(0),
        dev_login_enabled=False,
    )
    settings = GoogleSettings(
        discovery_url="https://idp.example/.well-known/openid-configuration",
        client_id="client",
        redirect_uris=(REDIRECT,),
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(discovery)) as http:
        provider = OidcProvider("google", settings, http)
        login = OidcLogin(
            {"google": provider}, store, sessions, state_ttl=timedelta(minutes=10), clock=lambda: now[0]
        )
        start = await login.begin("google", REDIRECT)
        url = httpx.URL(start.authorization_url)
        assert url.params["prompt"] == "select_account"  # the endpoint's own query survives
        assert url.params["state"] == start.state
        assert len(store.data.states) == 1
        assert start.state.encode() not in b"".join(store.data.states)  # keyed by its hash
        now[0] += timedelta(minutes=10, seconds=1)
        with pytest.raises(Unauthenticated, match="too long"):
            await login.complete(start.state, "code")
        assert not store.data.states


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATHENA_ENV", "dev")
    monkeypatch.setenv("ATHENA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://athena@db/athena")
    monkeypatch.setenv("AUTH_ACCESS_TOKEN_TTL", "60")
    monkeypatch.setenv("AUTH_REFRESH_TOKEN_TTL", "P7D")
    monkeypatch.setenv("AUTH_GOOGLE__CLIENT_ID", "google-client")
    monkeypatch.setenv("AUTH_GOOGLE__CLIENT_SECRET", "very-secret")
    monkeypatch.setenv("AUTH_GOOGLE__REDIRECT_URIS", f'["{REDIRECT}"]')
    settings = AuthSettings()
    assert settings.env == "dev"
    assert settings.port == 50054
    assert settings.http_port == 9104
    assert settings.database_url == "postgresql://athena@db/athena"
    assert settings.access_token_ttl == timedelta(seconds=60)
    assert settings.refresh_token_ttl == timedelta(days=7)
    assert settings.signing_keys_dir == tmp_path / "auth-keys"
    assert list(settings.providers()) == ["google"]
    assert settings.google.redirect_uris == (REDIRECT,)
    assert settings.google.client_secret.get_secret_value() == "very-secret"
    assert "very-secret" not in repr(settings)
    monkeypatch.setenv("AUTH_DATABASE_URL", "postgresql://auth@db/athena")
    assert AuthSettings().database_url == "postgresql://auth@db/athena"


def test_settings_by_field_name() -> None:
    settings = AuthSettings(env="dev", data_dir=Path("/tmp/x"), database_url="postgresql://x/y")
    assert (settings.env, settings.data_dir, settings.database_url) == (
        "dev",
        Path("/tmp/x"),
        "postgresql://x/y",
    )


def test_the_public_origin_is_the_redirect_uri_of_providers_without_their_own() -> None:
    settings = AuthSettings(
        public_origin="https://athena.example.com",
        google=GoogleSettings(client_id="google-client"),
        microsoft=MicrosoftSettings(client_id="microsoft-client", redirect_uris=(REDIRECT,)),
    )
    providers = settings.providers()
    assert providers["google"].redirect_uris == ("https://athena.example.com/",)  # the web app's root
    assert providers["microsoft"].redirect_uris == (REDIRECT,)
    assert AuthSettings(google=GoogleSettings(client_id="c")).providers()["google"].redirect_uris == ()


@pytest.mark.parametrize(
    "origin",
    [
        "https://athena.example.com/",
        "https://athena.example.com/app",
        "https://Athena.example.com",
        "https://athena.example.com:443",
        "http://localhost:80",
        "athena.example.com",
        "ftp://athena.example.com",
    ],
)
def test_the_public_origin_is_written_as_browsers_write_it(origin: str) -> None:
    """The web app's redirect URI is `location.origin` + "/": any other spelling would never match."""
    with pytest.raises(ValueError, match="origin"):
        AuthSettings(public_origin=origin)
    assert AuthSettings(public_origin="http://localhost:8080").public_origin == "http://localhost:8080"
