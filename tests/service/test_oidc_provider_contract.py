"""The local OpenID provider held to what Google and Microsoft publish and answer, so that sign-in tests
run against it prove something about the real providers.

Three parts, each run for the Google-like provider and the Microsoft-like multi-tenant one:

- its discovery document against the documents the providers publish (tests/fixtures/oidc): the same
  field names and value forms, nothing offered that the provider does not offer, and everything our
  client (auth.oidc) uses offered by both;
- our real client, end to end against it: the authorization request it builds, the token request it
  sends (client_secret_post, PKCE verifier), the ID token it verifies and the identity it takes from it;
- the token endpoint's refusals in the shape of RFC 6749 §5.2 (JSON `error`, 400 `invalid_grant`, 401
  `invalid_client`), and our client surviving each of them as "sign in again".

The login flow's own rules (state, nonce, audience, expiry, replay...) are tests/service/test_auth_oidc.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import pytest_asyncio
from doubles.auth_store import MemoryAuthStore
from doubles.oidc_provider import FakeOidcProvider
from doubles.revocations import RecordingRevocations

from auth.access import AccessTokenIssuer
from auth.keys import KeyRing, generate_key
from auth.oidc import ID_TOKEN_ALGORITHMS, OidcLogin, OidcProvider
from auth.sessions import SessionManager, utc_now
from auth.settings import GoogleSettings, MicrosoftSettings, OidcProviderSettings
from mesh.errors import Unauthenticated

PUBLISHED = Path(__file__).resolve().parents[1] / "fixtures" / "oidc"
REDIRECT = "http://127.0.0.1:8080/"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
"""Microsoft's tenant of personal accounts: the `tid` of a consumer sign-in through `common`."""

CLAIMS_OUR_CLIENT_READS = frozenset(
    [
        "iss",
        "aud",
        "sub",
        "exp",
        "iat",
        "nonce",
        "azp",
        "tid",
        "email",
        "email_verified",
        "name",
        "preferred_username",
    ]
)
"""Claims `OidcProvider.validate_id_token` and `.identity` look at."""
RFC_6749_TOKEN_ERRORS = frozenset(
    [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    ]
)
"""The `error` codes of a token-endpoint refusal (§5.2)."""


@dataclass(frozen=True)
class Flavour:
    """One real provider and how the local one plays it."""

    id: str
    published: str
    """File of the provider's discovery document under tests/fixtures/oidc."""
    tenant: str | None
    settings: type[GoogleSettings] | type[MicrosoftSettings]

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((PUBLISHED / self.published).read_text(encoding="utf-8"))
        return document


GOOGLE = Flavour("google", "google-openid-configuration.json", None, GoogleSettings)
MICROSOFT = Flavour("microsoft", "microsoft-common-v2.0-openid-configuration.json", TENANT, MicrosoftSettings)


@dataclass
class Idp:
    """The local provider playing `flavour`, and what the real one publishes."""

    flavour: Flavour
    fake: FakeOidcProvider
    published: dict[str, Any]
    discovered: dict[str, Any]
    """The local provider's discovery document, as served."""

    def settings(self, **overrides: Any) -> OidcProviderSettings:
        fields: dict[str, Any] = {
            "discovery_url": self.fake.discovery_url,
            "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret,
            "redirect_uris": (REDIRECT,),
        }
        return self.flavour.settings(**(fields | overrides))


@pytest_asyncio.fixture(scope="module", params=[GOOGLE, MICROSOFT], ids=lambda flavour: flavour.id)
async def idp(request: pytest.FixtureRequest) -> AsyncIterator[Idp]:
    flavour: Flavour = request.param
    fake = FakeOidcProvider(
        client_id=f"{flavour.id}-client", client_secret=f"{flavour.id}-secret", tenant=flavour.tenant
    )
    await fake.start()
    try:
        async with httpx.AsyncClient() as http:
            discovered = (await http.get(fake.discovery_url)).raise_for_status().json()
        yield Idp(flavour, fake, flavour.document(), discovered)
    finally:
        await fake.stop()


@dataclass
class Wire:
    """What our client sent over HTTP."""

    requests: list[httpx.Request]

    def token_requests(self, idp: Idp) -> list[httpx.Request]:
        return [r for r in self.requests if str(r.url) == idp.discovered["token_endpoint"]]


@pytest_asyncio.fixture
async def wire() -> AsyncIterator[tuple[httpx.AsyncClient, Wire]]:
    """The HTTP client our OIDC client is given, recording every request."""
    seen = Wire([])

    async def record(request: httpx.Request) -> None:
        seen.requests.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        yield http, seen


def s256(verifier: str) -> str:
    """RFC 7636 §4.2, written out here rather than taken from the client under test."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def sign_in_flow(provider: OidcProvider, store: MemoryAuthStore) -> OidcLogin:
    now = utc_now()
    ring = KeyRing([generate_key(now)], activation_delay=timedelta(0), retention=timedelta(minutes=16))
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
    return OidcLogin({provider.id: provider}, store, sessions, state_ttl=timedelta(minutes=10))


# --- the discovery document ----------------------------------------------------------------------------


async def test_our_client_reads_the_published_document_and_the_fakes_alike(idp: Idp) -> None:
    def publish(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=idp.published)

    async with httpx.AsyncClient(transport=httpx.MockTransport(publish)) as http:
        real = await OidcProvider(idp.flavour.id, idp.flavour.settings(client_id="c"), http).metadata()
    async with httpx.AsyncClient() as http:
        fake = await OidcProvider(idp.flavour.id, idp.settings(), http).metadata()

    assert real.issuer == idp.published["issuer"]
    assert fake.issuer == idp.discovered["issuer"]
    # The issuer has the provider's form: a bare origin for Google, `<origin>/{tenantid}/v2.0` for
    # Microsoft's multi-tenant endpoint (the placeholder stands for the `tid` of each ID token).
    assert urlsplit(fake.issuer).path == urlsplit(real.issuer).path
    assert ("{tenantid}" in fake.issuer) == ("{tenantid}" in real.issuer) == (idp.flavour is MICROSOFT)
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        for document in (idp.published, idp.discovered):
            parts = urlsplit(document[endpoint])
            assert parts.scheme in {"https", "http"}
            assert parts.netloc
            assert not parts.fragment
        assert urlsplit(idp.published[endpoint]).scheme == "https"


async def test_the_fake_publishes_only_what_the_provider_publishes_in_the_same_form(idp: Idp) -> None:
    published, fake = idp.published, idp.discovered
    assert set(fake) <= set(published), "fields the real provider does not publish"
    for field, value in fake.items():
        assert type(value) is type(published[field]), field
        if isinstance(value, list):
            assert set(value) <= set(published[field]), f"{field}: offers what the provider does not"


async def test_what_our_client_uses_is_offered_by_the_provider_and_the_fake(idp: Idp) -> None:
    for document in (idp.published, idp.discovered):
        assert "code" in document["response_types_supported"]
        assert "query" in document["response_modes_supported"]  # the code comes back in the query
        assert set(ID_TOKEN_ALGORITHMS) <= set(document["id_token_signing_alg_values_supported"])
        assert "client_secret_post" in document["token_endpoint_auth_methods_supported"]
        assert set(idp.flavour.settings.model_fields["scopes"].default) <= set(document["scopes_supported"])
    for claim in CLAIMS_OUR_CLIENT_READS:
        published = claim in idp.published["claims_supported"]
        assert (claim in idp.discovered["claims_supported"]) == published, claim
    # PKCE S256 is what we send. Google says so; Microsoft supports it without saying so, and so does the
    # fake playing it: our client must not depend on the field.
    methods = "code_challenge_methods_supported"
    assert (methods in idp.discovered) == (methods in idp.published) == (idp.flavour is GOOGLE)
    if methods in idp.published:
        assert "S256" in idp.published[methods]
        assert "S256" in idp.discovered[methods]


# --- our client, end to end --------------------------------------------------------------------------


async def test_a_sign_in_through_the_authorization_endpoint(
    idp: Idp, wire: tuple[httpx.AsyncClient, Wire]
) -> None:
    http, seen = wire
    store = MemoryAuthStore()
    login = sign_in_flow(OidcProvider(idp.flavour.id, idp.settings(), http), store)

    start = await login.begin(idp.flavour.id, REDIRECT)

    url = urlsplit(start.authorization_url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == idp.discovered["authorization_endpoint"]
    query = {name: values[0] for name, values in parse_qs(url.query, strict_parsing=True).items()}
    [pending] = store.data.states.values()
    assert query == {
        "response_type": "code",
        "client_id": idp.fake.client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid email profile",
        "state": start.state,
        "nonce": pending.nonce,
        "code_challenge": s256(pending.code_verifier),
        "code_challenge_method": "S256",
    }

    # The person signs in at the provider, which sends the browser back with a code.
    email = f"{idp.flavour.id}-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient() as browser:
        back = await browser.get(f"{start.authorization_url}&{urlencode({'login_hint': email})}")
    assert back.status_code == 302
    returned = parse_qs(urlsplit(back.headers["location"]).query)
    assert returned["state"] == [start.state]

    session = await login.complete(returned["state"][0], returned["code"][0])

    assert session.user.email == email
    [exchange] = seen.token_requests(idp)
    assert exchange.method == "POST"
    assert exchange.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in exchange.headers  # client_secret_post, not HTTP Basic
    assert {name: values[0] for name, values in parse_qs(exchange.content.decode()).items()} == {
        "grant_type": "authorization_code",
        "code": returned["code"][0],
        "redirect_uri": REDIRECT,
        "client_id": idp.fake.client_id,
        "client_secret": idp.fake.client_secret,
        "code_verifier": pending.code_verifier,
    }


async def test_the_id_token_has_the_providers_claims_and_our_client_verifies_it(idp: Idp) -> None:
    verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(32)
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    code = idp.fake.mint_code(redirect_uri=REDIRECT, code_challenge=s256(verifier), nonce=nonce, email=email)
    async with httpx.AsyncClient() as http:
        provider = OidcProvider(idp.flavour.id, idp.settings(), http)
        id_token = await provider.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=verifier)
        claims = await provider.validate_id_token(id_token, nonce=nonce, now=utc_now())

    header = json.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert header["kid"]
    # Only claims the provider says it issues (`nonce` is echoed whenever it was sent, OIDC Core §2).
    assert set(claims) <= set(idp.published["claims_supported"]) | {"nonce"}
    assert ("email_verified" in claims) == ("email_verified" in idp.published["claims_supported"])
    issuer = urlsplit(claims["iss"])
    assert f"{issuer.scheme}://{issuer.netloc}" == idp.fake.base_url
    assert issuer.path == urlsplit(idp.published["issuer"].replace("{tenantid}", TENANT)).path
    assert claims["aud"] == idp.fake.client_id
    identity = provider.identity(claims)
    assert identity.email == email
    # Google vouches for addresses; Microsoft's `email` is not verified, so it never links accounts.
    assert identity.email_verified is (idp.flavour is GOOGLE)


async def test_without_the_openid_scope_no_id_token_is_issued(idp: Idp) -> None:
    verifier = secrets.token_urlsafe(48)
    code = idp.fake.mint_code(redirect_uri=REDIRECT, code_challenge=s256(verifier), nonce="n", scope="email")
    async with httpx.AsyncClient() as http:
        provider = OidcProvider(idp.flavour.id, idp.settings(), http)
        with pytest.raises(Unauthenticated, match="no ID token"):
            await provider.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=verifier)


# --- refusals at the token endpoint ------------------------------------------------------------------

REFUSALS: dict[str, tuple[dict[str, str], int, str]] = {
    "unknown-code": ({"code": "not-a-code-we-issued"}, 400, "invalid_grant"),
    "wrong-code-verifier": ({"code_verifier": "another-verifier-" + "x" * 40}, 400, "invalid_grant"),
    "other-redirect-uri": ({"redirect_uri": "http://127.0.0.1:8080/elsewhere"}, 400, "invalid_grant"),
    "wrong-client-secret": ({"client_secret": "guessed"}, 401, "invalid_client"),
    # The client is authenticated before its grant is looked at (RFC 6749 §4.1.3).
    "wrong-secret-and-code": ({"client_secret": "guessed", "code": "not-a-code"}, 401, "invalid_client"),
    "unsupported-grant": ({"grant_type": "password"}, 400, "unsupported_grant_type"),
}


def token_form(idp: Idp, **overrides: str) -> dict[str, str]:
    """A token request as our client sends it, for a fresh code; `overrides` replace its fields."""
    verifier = secrets.token_urlsafe(48)
    code = idp.fake.mint_code(redirect_uri=REDIRECT, code_challenge=s256(verifier), nonce="n")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": idp.fake.client_id,
        "client_secret": idp.fake.client_secret,
        "code_verifier": verifier,
    }
    return form | overrides


def assert_rfc_6749_error(response: httpx.Response, status: int, error: str) -> None:
    """§5.2: the status, a JSON object with `error` (and optionally a string `error_description`), and
    like every token-endpoint answer, not cacheable (§5.1)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert error in RFC_6749_TOKEN_ERRORS
    assert isinstance(body.get("error_description", ""), str)


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_the_token_endpoint_refuses_as_rfc_6749_says(idp: Idp, case: str) -> None:
    overrides, status, error = REFUSALS[case]
    async with httpx.AsyncClient() as http:
        response = await http.post(idp.discovered["token_endpoint"], data=token_form(idp, **overrides))
    assert_rfc_6749_error(response, status, error)


async def test_a_code_is_redeemed_once(idp: Idp) -> None:
    form = token_form(idp)
    async with httpx.AsyncClient() as http:
        first = await http.post(idp.discovered["token_endpoint"], data=form)
        again = await http.post(idp.discovered["token_endpoint"], data=form)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    assert first.json()["token_type"] == "Bearer"
    assert_rfc_6749_error(again, 400, "invalid_grant")


@pytest.mark.parametrize("case", [case for case in REFUSALS if "grant_type" not in REFUSALS[case][0]])
async def test_our_client_turns_a_refusal_into_sign_in_again(idp: Idp, case: str) -> None:
    """A refused code is the person's to retry, never an outage (Unavailable) or a crash."""
    overrides, _, _ = REFUSALS[case]
    form = token_form(idp, **overrides)
    async with httpx.AsyncClient() as http:
        provider = OidcProvider(idp.flavour.id, idp.settings(client_secret=form["client_secret"]), http)
        with pytest.raises(Unauthenticated, match="start again"):
            await provider.exchange_code(
                code=form["code"], redirect_uri=form["redirect_uri"], code_verifier=form["code_verifier"]
            )


async def test_our_client_refuses_a_code_used_twice(idp: Idp) -> None:
    form = token_form(idp)
    async with httpx.AsyncClient() as http:
        provider = OidcProvider(idp.flavour.id, idp.settings(), http)
        exchange = {"code": form["code"], "redirect_uri": REDIRECT, "code_verifier": form["code_verifier"]}
        assert await provider.exchange_code(**exchange)
        with pytest.raises(Unauthenticated, match="start again"):
            await provider.exchange_code(**exchange)
