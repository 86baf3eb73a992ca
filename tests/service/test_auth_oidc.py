"""BeginLogin/CompleteLogin end to end against local OpenID providers (Google-like and Microsoft-like
multi-tenant), over real gRPC and a real PostgreSQL: the happy path and every way the flow must fail."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from conftest import StartService, service_settings
from doubles.oidc_provider import DELETE, FakeOidcProvider, generate_signing_key

from auth.app import AUTH, AuthDeps
from auth.oidc import pkce_challenge
from auth.settings import AuthSettings, GoogleSettings, MicrosoftSettings
from devstack.postgres import EmbeddedPostgres
from mesh.app import RunningService

REDIRECT = "http://127.0.0.1:8080/auth/callback"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
Stub = auth_pb2_grpc.AuthServiceStub


@pytest_asyncio.fixture(scope="module")
async def google_idp() -> AsyncIterator[FakeOidcProvider]:
    idp = FakeOidcProvider(client_id="google-client", client_secret="google-secret")
    await idp.start()
    yield idp
    await idp.stop()


@pytest_asyncio.fixture(scope="module")
async def microsoft_idp() -> AsyncIterator[FakeOidcProvider]:
    idp = FakeOidcProvider(client_id="microsoft-client", client_secret="microsoft-secret", tenant=TENANT)
    await idp.start()
    yield idp
    await idp.stop()


@pytest_asyncio.fixture
async def app_and_stub(
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    start_service: StartService,
    tmp_path: Path,
    google_idp: FakeOidcProvider,
    microsoft_idp: FakeOidcProvider,
) -> AsyncIterator[tuple[RunningService, Stub]]:
    settings = AuthSettings(
        **service_settings(tmp_path, env="dev", database_url=postgres.url, kms_keys_dir=kms_keys_dir),
        google=GoogleSettings(
            discovery_url=google_idp.discovery_url,
            client_id=google_idp.client_id,
            client_secret=google_idp.client_secret,
            redirect_uris=(REDIRECT,),
        ),
        microsoft=MicrosoftSettings(
            discovery_url=microsoft_idp.discovery_url,
            client_id=microsoft_idp.client_id,
            client_secret=microsoft_idp.client_secret,
            redirect_uris=(REDIRECT,),
        ),
    )
    app = await start_service(AUTH, settings, AuthDeps())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    yield app, Stub(channel)
    await channel.close()


@pytest.fixture
def stub(app_and_stub: tuple[RunningService, Stub]) -> Stub:
    return app_and_stub[1]


async def begin(stub: Stub, provider: str = "google") -> tuple[str, dict[str, str]]:
    answer = await stub.BeginLogin(auth_pb2.BeginLoginRequest(provider=provider, redirect_uri=REDIRECT))
    query = {name: values[0] for name, values in parse_qs(urlsplit(answer.authorization_url).query).items()}
    return answer.state, query


def code_for(idp: FakeOidcProvider, query: dict[str, str], **kwargs: Any) -> str:
    return idp.mint_code(
        redirect_uri=query["redirect_uri"],
        code_challenge=kwargs.pop("code_challenge", query["code_challenge"]),
        nonce=kwargs.pop("nonce", query["nonce"]),
        **kwargs,
    )


async def complete_fails(stub: Stub, state: str, code: str, status: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))
    assert caught.value.code() == status, caught.value.details()
    return caught.value.details() or ""


def unique_subject() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:12]
    return f"sub-{tag}", f"oidc-{tag}@example.com"


async def test_list_providers(stub: Stub) -> None:
    providers = (await stub.ListProviders(auth_pb2.ListProvidersRequest())).providers
    assert [(p.id, p.display_name) for p in providers] == [
        ("google", "Google"),
        ("microsoft", "Microsoft"),
        ("dev", "Developer sign-in"),
    ]


async def test_authorization_url_carries_pkce_state_and_nonce(
    stub: Stub, google_idp: FakeOidcProvider
) -> None:
    state, query = await begin(stub)
    assert urlsplit(google_idp.base_url).netloc in google_idp.base_url
    assert query["response_type"] == "code"
    assert query["client_id"] == "google-client"
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "openid email profile"
    assert query["state"] == state
    assert len(state) >= 43
    assert len(query["nonce"]) >= 43
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    other_state, other = await begin(stub)
    assert other_state != state
    assert other["nonce"] != query["nonce"]
    assert other["code_challenge"] != query["code_challenge"]


async def test_google_login_creates_then_updates_the_account(
    app_and_stub: tuple[RunningService, Stub], google_idp: FakeOidcProvider
) -> None:
    app, stub = app_and_stub
    subject, email = unique_subject()
    state, query = await begin(stub)
    code = code_for(google_idp, query, subject=subject, email=email.upper(), claims={"name": "Grace Hopper"})
    session = (await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))).session
    assert session.user.email == email
    assert session.user.display_name == "Grace Hopper"
    assert (await app.verifier.verify(session.access_token)).user_id == session.user.id
    assert session.refresh_token

    state, query = await begin(stub)
    code = code_for(google_idp, query, subject=subject, email=email, claims={"name": "Rear Admiral Hopper"})
    again = (await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))).session
    assert again.user.id == session.user.id
    assert again.user.display_name == "Rear Admiral Hopper"


async def test_an_address_changed_at_the_provider_follows_unless_another_account_holds_it(
    stub: Stub, google_idp: FakeOidcProvider
) -> None:
    """Accounts are found by their identity's subject, addresses by their blind index (both keyed
    HMACs, auth.privacy): a new address at Google moves to the account, one another account holds
    stays with that account."""
    subject, email = unique_subject()
    _, changed = unique_subject()
    _, taken = unique_subject()
    other = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=taken))).session
    sessions = []
    for address in (email, changed, taken):
        state, query = await begin(stub)
        code = code_for(google_idp, query, subject=subject, email=address)
        sessions.append(
            (await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))).session
        )
    assert {session.user.id for session in sessions} == {sessions[0].user.id} != {other.user.id}
    assert [session.user.email for session in sessions] == [email, changed, changed]
    again = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=taken))).session
    assert again.user.id == other.user.id


async def test_a_browser_completing_a_login_gets_the_refresh_token_as_a_cookie(
    stub: Stub, google_idp: FakeOidcProvider
) -> None:
    subject, email = unique_subject()
    state, query = await begin(stub)
    code = code_for(google_idp, query, subject=subject, email=email)
    call = stub.CompleteLogin(
        auth_pb2.CompleteLoginRequest(state=state, code=code, refresh_token_in_cookie=True)
    )
    session = (await call).session
    assert session.user.email == email
    assert session.access_token
    assert session.refresh_token == ""
    (cookie,) = [value for key, value in await call.initial_metadata() or () if key == "set-cookie"]
    assert re.fullmatch(
        r"__Secure-athena-refresh=[\w-]{43}; Path=/athena\.auth\.v1\.AuthService/; Max-Age=\d+; HttpOnly; "
        r"Secure; SameSite=Strict",
        str(cookie),
    ), cookie


async def test_google_id_tokens_may_name_the_issuer_without_its_scheme(
    stub: Stub, google_idp: FakeOidcProvider
) -> None:
    """Google documents `iss` as "https://accounts.google.com" or "accounts.google.com": both sign in."""
    subject, email = unique_subject()
    state, query = await begin(stub)
    code = code_for(google_idp, query, subject=subject, email=email, claims={"iss": "accounts.google.com"})
    session = (await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))).session
    assert session.user.email == email


async def test_login_through_the_authorize_redirect(stub: Stub) -> None:
    answer = await stub.BeginLogin(auth_pb2.BeginLoginRequest(provider="google", redirect_uri=REDIRECT))
    _, email = unique_subject()
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{answer.authorization_url}&login_hint={email}")
    assert response.status_code == 302
    back = parse_qs(urlsplit(response.headers["location"]).query)
    assert back["state"] == [answer.state]
    request = auth_pb2.CompleteLoginRequest(state=back["state"][0], code=back["code"][0])
    assert (await stub.CompleteLogin(request)).session.user.email == email


async def test_microsoft_multi_tenant_issuer_is_resolved_from_tid(
    stub: Stub, microsoft_idp: FakeOidcProvider
) -> None:
    subject, email = unique_subject()
    state, query = await begin(stub, "microsoft")
    code = code_for(microsoft_idp, query, subject=subject, email=email, claims={"email_verified": DELETE})
    session = (await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))).session
    assert session.user.email == email
    # A token whose `tid` does not match its `iss` (another tenant's issuer) is refused.
    state, query = await begin(stub, "microsoft")
    code = code_for(microsoft_idp, query, claims={"tid": "00000000-0000-0000-0000-000000000000"})
    assert "(iss)" in await complete_fails(stub, state, code, grpc.StatusCode.UNAUTHENTICATED)


async def test_an_unverified_email_cannot_take_over_an_existing_account(
    stub: Stub, google_idp: FakeOidcProvider, microsoft_idp: FakeOidcProvider
) -> None:
    subject, email = unique_subject()
    state, query = await begin(stub)
    await stub.CompleteLogin(
        auth_pb2.CompleteLoginRequest(
            state=state, code=code_for(google_idp, query, subject=subject, email=email)
        )
    )
    state, query = await begin(stub, "microsoft")
    code = code_for(microsoft_idp, query, email=email, claims={"email_verified": DELETE})
    await complete_fails(stub, state, code, grpc.StatusCode.ALREADY_EXISTS)


async def test_unknown_state(stub: Stub, google_idp: FakeOidcProvider) -> None:
    _, query = await begin(stub)
    await complete_fails(stub, "made-up-state", code_for(google_idp, query), grpc.StatusCode.UNAUTHENTICATED)


async def test_state_of_another_login(stub: Stub, google_idp: FakeOidcProvider) -> None:
    """A code obtained in login A presented with the state of login B (login CSRF / code injection)."""
    _, query_a = await begin(stub)
    state_b, _ = await begin(stub)
    await complete_fails(stub, state_b, code_for(google_idp, query_a), grpc.StatusCode.UNAUTHENTICATED)


async def test_nonce_mismatch(stub: Stub, google_idp: FakeOidcProvider) -> None:
    state, query = await begin(stub)
    details = await complete_fails(
        stub, state, code_for(google_idp, query, nonce="another-nonce"), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "nonce" in details


async def test_wrong_code_verifier(stub: Stub, google_idp: FakeOidcProvider) -> None:
    """The code was issued for someone else's PKCE challenge: our verifier does not match it."""
    state, query = await begin(stub)
    code = code_for(google_idp, query, code_challenge=pkce_challenge("attacker-verifier-" + "x" * 40))
    await complete_fails(stub, state, code, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param({"aud": "someone-elses-client"}, "(aud)", id="wrong-audience"),
        pytest.param({"aud": ["google-client", "other"], "azp": "other"}, "(azp)", id="foreign-azp"),
        pytest.param({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "(exp)", id="expired"),
        pytest.param({"iat": int(time.time()) + 3600}, "(iat)", id="issued-in-the-future"),
        pytest.param({"iss": "https://accounts.evil.example"}, "(iss)", id="wrong-issuer"),
        pytest.param({"nonce": DELETE}, "(nonce)", id="no-nonce"),
        pytest.param({"sub": DELETE}, "(sub)", id="no-subject"),
    ],
)
async def test_invalid_id_tokens_are_refused(
    stub: Stub, google_idp: FakeOidcProvider, claims: dict[str, Any], reason: str
) -> None:
    state, query = await begin(stub)
    code = code_for(google_idp, query, claims=claims)
    assert reason in await complete_fails(stub, state, code, grpc.StatusCode.UNAUTHENTICATED)


async def test_id_token_signed_by_a_foreign_key_with_the_providers_kid(
    stub: Stub, google_idp: FakeOidcProvider
) -> None:
    state, query = await begin(stub)
    attacker = generate_signing_key(google_idp.key.kid or "idp-key-1")
    code = code_for(google_idp, query, signing_key=attacker)
    await complete_fails(stub, state, code, grpc.StatusCode.UNAUTHENTICATED)


async def test_replayed_code(stub: Stub, google_idp: FakeOidcProvider) -> None:
    state, query = await begin(stub)
    code = code_for(google_idp, query)
    await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code))
    state_again, _ = await begin(stub)
    await complete_fails(stub, state_again, code, grpc.StatusCode.UNAUTHENTICATED)


async def test_replayed_state(stub: Stub, google_idp: FakeOidcProvider) -> None:
    state, query = await begin(stub)
    await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=state, code=code_for(google_idp, query)))
    await complete_fails(stub, state, code_for(google_idp, query), grpc.StatusCode.UNAUTHENTICATED)


async def test_a_failed_completion_spends_the_state(stub: Stub, google_idp: FakeOidcProvider) -> None:
    state, query = await begin(stub)
    await complete_fails(stub, state, "not-a-code", grpc.StatusCode.UNAUTHENTICATED)
    await complete_fails(stub, state, code_for(google_idp, query), grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize(
    ("provider", "redirect_uri", "field"),
    [
        ("", REDIRECT, "provider"),
        ("github", REDIRECT, "provider"),
        ("dev", REDIRECT, "provider"),
        ("google", "", "redirect_uri"),
        ("google", "https://evil.example/callback", "redirect_uri"),
        ("google", REDIRECT + "/", "redirect_uri"),
    ],
)
async def test_begin_login_validates_its_input(
    stub: Stub, provider: str, redirect_uri: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BeginLogin(auth_pb2.BeginLoginRequest(provider=provider, redirect_uri=redirect_uri))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")


async def test_complete_login_validates_its_input(stub: Stub) -> None:
    for request, field in (
        (auth_pb2.CompleteLoginRequest(code="c"), "state"),
        (auth_pb2.CompleteLoginRequest(state="s"), "code"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CompleteLogin(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(f"{field}:")
