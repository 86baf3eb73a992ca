"""What each provider is asked for: scopes per capability (narrowest read-only, the account's name, offline
access where the provider needs it), which capabilities a grant holds, and a grant as it is stored."""

from __future__ import annotations

import base64
import json

import pytest

from integrations.oauth import Grant, _account
from integrations.providers import GOOGLE_SCOPES, Capability, google, microsoft
from integrations.settings import GoogleSettings, IntegrationsSettings

REDIRECTS = frozenset({"http://127.0.0.1:8080/connections"})
GOOGLE = google("id", "secret", REDIRECTS, accounts_url="https://a.example", oauth2_url="https://o.example/")
MICROSOFT = microsoft("id", "secret", REDIRECTS, login_url="https://l.example", tenant="common")


def test_each_capability_asks_for_its_own_scopes_only() -> None:
    assert GOOGLE.scopes(frozenset({Capability.CALENDAR})) == [
        "openid",
        "email",
        "https://www.googleapis.com/auth/calendar.readonly",
    ]
    files_and_health = GOOGLE.scopes(frozenset({Capability.HEALTH, Capability.FILES}))
    assert files_and_health[:3] == ["openid", "email", "https://www.googleapis.com/auth/drive.readonly"]
    assert all(scope.endswith(".readonly") for scope in files_and_health[2:])
    assert "offline_access" in MICROSOFT.scopes(frozenset({Capability.CALENDAR}))
    assert not MICROSOFT.offers(Capability.HEALTH)


def test_endpoints_follow_the_base_urls() -> None:
    assert GOOGLE.authorize_url == "https://a.example/o/oauth2/v2/auth"
    assert GOOGLE.token_url == "https://o.example/token"
    assert GOOGLE.revocation_url == "https://o.example/revoke"
    assert GOOGLE.authorize_params["access_type"] == "offline"
    assert MICROSOFT.authorize_url == "https://l.example/common/oauth2/v2.0/authorize"
    assert MICROSOFT.revocation_url is None


def test_a_capability_is_held_only_with_every_one_of_its_scopes() -> None:
    health = set(GOOGLE_SCOPES[Capability.HEALTH])
    calendar = set(GOOGLE_SCOPES[Capability.CALENDAR])
    assert GOOGLE.granted(frozenset(calendar | health)) == {Capability.CALENDAR, Capability.HEALTH}
    partly = frozenset(calendar | set(list(health)[:1]))  # granular consent left some health scopes out
    assert GOOGLE.granted(partly) == {Capability.CALENDAR}


def test_a_grant_is_stored_and_read_back_whole() -> None:
    grant = Grant("at", "rt", 1_900_000_000.5, frozenset({"openid", "email"}), "ada@example.com")
    assert Grant.from_json(grant.to_json()) == grant


def id_token(claims: object) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"


@pytest.mark.parametrize(
    ("token", "account"),
    [
        (id_token({"email": "ada@example.com", "sub": "1"}), "ada@example.com"),
        (id_token({"sub": "1"}), ""),
        (id_token(["not", "claims"]), ""),
        ("not-a-jwt", ""),
        (None, ""),
    ],
)
def test_the_account_is_the_id_tokens_email_if_any(token: str | None, account: str) -> None:
    assert _account(token) == account


def test_redirect_uris_must_be_https_or_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        GoogleSettings(client_id="x", redirect_uris=("http://app.example/connections",))
    settings = IntegrationsSettings(
        google=GoogleSettings(client_id="x", redirect_uris=("https://app.example/connections",))
    )
    assert list(settings.providers()) == ["google"]
