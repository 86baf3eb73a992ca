"""The auth service over real gRPC, a real PostgreSQL and Valkey: DevLogin, refresh rotation, logout,
revocation, erasure with its receipt, JWKS (RPC and HTTP), the browsers' refresh-token cookie, and input
validation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.identity.v1 import identity_pb2, identity_pb2_grpc
from conftest import StartService, auth_metadata, service_settings
from google.protobuf.json_format import MessageToDict
from joserfc.jwk import KeySet

from auth.app import AUTH, AuthDeps
from auth.keys import rotate_keys
from auth.migrate import apply_migrations
from auth.receipts import verify_receipt
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.app import RunningService
from mesh.kms import LocalKeyFile
from mesh.server import MeshServer
from mesh.tokens import StaticKeySource, TokenVerifier

Stub = auth_pb2_grpc.AuthServiceStub
Auth = tuple[RunningService, MeshServer, Stub]
REFRESH_COOKIE = "__Secure-athena-refresh"
COOKIE_PATH = "/athena.auth.v1.AuthService/"
REFRESH_TTL_SECONDS = 30 * 24 * 3600


@pytest.fixture(scope="session")
def auth_database(postgres: EmbeddedPostgres, kms_keys_dir: Path) -> str:
    kms = LocalKeyFile.load(kms_keys_dir, create_if_empty=True)
    apply_migrations(postgres.url, kms)
    assert apply_migrations(postgres.url, kms) == []  # idempotent
    return postgres.url


@pytest_asyncio.fixture
async def pool(auth_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(auth_database, min_size=1, max_size=5)
    yield pool
    await pool.close()


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


async def start_auth(
    start_service: StartService, database_url: str, tmp_path: Path, kms_keys_dir: Path, **overrides: Any
) -> tuple[RunningService, MeshServer, grpc.aio.Channel]:
    settings = AuthSettings(
        **service_settings(
            tmp_path, env="dev", database_url=database_url, kms_keys_dir=kms_keys_dir, **overrides
        )
    )
    running = await start_service(AUTH, settings, AuthDeps())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return running, running.server, channel


@pytest_asyncio.fixture
async def auth(
    start_service: StartService,
    auth_database: str,
    kms_keys_dir: Path,
    valkey: EmbeddedValkey,
    tmp_path: Path,
) -> AsyncIterator[Auth]:
    app, server, channel = await start_auth(
        start_service, auth_database, tmp_path, kms_keys_dir, redis_url=valkey.url
    )
    yield app, server, Stub(channel)
    await channel.close()


async def test_dev_login_refresh_and_logout(auth: Auth, pool: asyncpg.Pool) -> None:
    app, _, stub = auth
    email = unique_email()
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=email.upper(), display_name="Ada"))).session
    assert login.user.email == email
    assert login.user.display_name == "Ada"
    principal = await app.verifier.verify(login.access_token)
    assert principal.user_id == login.user.id
    assert principal.email == email
    lifetime = login.access_token_expires_at.ToSeconds() - login.user.created_at.ToSeconds()
    assert 895 <= lifetime <= 905

    refreshed = (
        await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=login.refresh_token))
    ).session
    assert refreshed.user.id == login.user.id
    assert refreshed.refresh_token != login.refresh_token
    stored = await pool.fetch(
        "SELECT token_hash, used_at FROM auth.refresh_tokens WHERE user_id = $1 ORDER BY created_at",
        uuid.UUID(login.user.id),
    )
    assert len(stored) == 2
    assert stored[0]["used_at"] is not None
    assert stored[1]["used_at"] is None
    assert all(login.refresh_token.encode() not in bytes(row["token_hash"]) for row in stored)
    # No column of any auth table holds either refresh token in plain text (or hex of its bytes).
    for table in ("refresh_tokens", "sessions", "users", "identities"):
        for row in await pool.fetch(f"SELECT row_to_json(t)::text AS r FROM auth.{table} t"):  # noqa: S608
            for token in (login.refresh_token, refreshed.refresh_token):
                assert token not in row["r"]
                assert token.encode().hex() not in row["r"]

    await stub.Logout(auth_pb2.LogoutRequest(refresh_token=refreshed.refresh_token))
    await stub.Logout(auth_pb2.LogoutRequest(refresh_token=refreshed.refresh_token))  # idempotent
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=refreshed.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reuse_of_a_spent_refresh_token_revokes_the_family(
    start_service: StartService, auth_database: str, pool: asyncpg.Pool, kms_keys_dir: Path, tmp_path: Path
) -> None:
    _, _, channel = await start_auth(
        start_service, auth_database, tmp_path, kms_keys_dir, refresh_reuse_grace=timedelta(0)
    )
    stub = Stub(channel)
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    rotated = (
        await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=login.refresh_token))
    ).session
    await asyncio.sleep(0.01)
    for token in (login.refresh_token, rotated.refresh_token):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await channel.close()


async def test_concurrent_refreshes_of_one_token_all_succeed_within_the_grace_window(
    auth: Auth,
) -> None:
    _, _, stub = auth
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    request = auth_pb2.RefreshSessionRequest(refresh_token=login.refresh_token)
    answers = await asyncio.gather(*(stub.RefreshSession(request) for _ in range(5)))
    assert len({answer.session.refresh_token for answer in answers}) == 5


async def test_revoke_all_sessions_needs_an_access_token_and_counts(
    auth: Auth,
) -> None:
    _, _, stub = auth
    email = unique_email()
    sessions = [(await stub.DevLogin(auth_pb2.DevLoginRequest(email=email))).session for _ in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    metadata = auth_metadata(sessions[0].access_token)
    answer = await stub.RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest(), metadata=metadata)
    assert answer.revoked_sessions == 3
    # The sessions' access tokens end with them: the caller's own is refused from now on (at once here, or
    # within a second where the revocation list arrives through Redis), and a new sign-in revokes nothing.
    refusal = None
    for _ in range(100):
        try:
            await stub.RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as refused:
            refusal = (refused.code(), refused.details())
            break
        await asyncio.sleep(0.05)
    assert refusal == (grpc.StatusCode.UNAUTHENTICATED, "access token revoked")
    fresh = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=email))).session
    again = await stub.RevokeAllSessions(
        auth_pb2.RevokeAllSessionsRequest(), metadata=auth_metadata(fresh.access_token)
    )
    assert again.revoked_sessions == 1
    for session in sessions:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_export_identity_opens_the_account_identities_and_sessions_for_their_owner(auth: Auth) -> None:
    _, server, stub = auth
    email = unique_email()
    first = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=email, display_name="Ada L."))).session
    second = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=email))).session
    await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=second.refresh_token))
    await stub.Logout(auth_pb2.LogoutRequest(refresh_token=first.refresh_token))
    stranger_email = unique_email()
    await stub.DevLogin(auth_pb2.DevLoginRequest(email=stranger_email))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        exported = await identity.ExportIdentity(
            identity_pb2.ExportIdentityRequest(), metadata=auth_metadata(second.access_token)
        )
        assert (exported.account.user_id, exported.account.email) == (first.user.id, email)
        assert exported.account.display_name
        assert [(i.provider, i.subject) for i in exported.identities] == [("dev", email)]
        # Newest first: the second sign-in (renewed once), then the first (signed out).
        assert [(s.refresh_tokens, s.revoked_reason) for s in exported.sessions] == [(2, ""), (1, "logout")]
        assert exported.sessions[1].HasField("revoked_at")
        assert not exported.sessions[0].HasField("revoked_at")
        serialized = exported.SerializeToString()
        for secret in (first.refresh_token, second.refresh_token, second.access_token, stranger_email):
            assert secret.encode() not in serialized
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.ExportIdentity(identity_pb2.ExportIdentityRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_erasure_deletes_every_auth_row_of_the_user(auth: Auth, pool: asyncpg.Pool) -> None:
    _, server, stub = auth
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    metadata = auth_metadata(login.access_token)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        erased = await identity.EraseUser(
            identity_pb2.EraseUserRequest(purged={"memory_rows": 7, "memory_cache_keys": 2}),
            metadata=metadata,
        )
        assert erased.erased
        assert dict(erased.erased_counts) == {
            "memory_rows": 7,
            "memory_cache_keys": 2,
            "account": 1,
            "identities": 1,
            "sessions": 1,
            "refresh_tokens": 1,
            "data_keys": 1,
        }
        published = await stub.GetJwks(auth_pb2.GetJwksRequest())
        jwks = {"keys": [MessageToDict(key, preserving_proto_field_name=True) for key in published.keys]}
        receipt = verify_receipt(erased.receipt, jwks, issuer="athenaos")
        assert receipt.user_id == login.user.id
        assert receipt.erased == dict(erased.erased_counts)
        assert int(receipt.erased_at.timestamp()) == erased.erased_at.seconds
        # The token that asked is revoked: auth refuses it too, at once (its own list) or within a second.
        for _ in range(100):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await identity.EraseUser(identity_pb2.EraseUserRequest(), metadata=metadata)
            if refused.value.code() == grpc.StatusCode.UNAUTHENTICATED:
                break
            await asyncio.sleep(0.05)
        assert refused.value.details() == "access token revoked"
    user_id = uuid.UUID(login.user.id)
    for table in ("users", "identities", "sessions", "refresh_tokens"):
        column = "id" if table == "users" else "user_id"
        assert await pool.fetchval(f"SELECT count(*) FROM auth.{table} WHERE {column} = $1", user_id) == 0  # noqa: S608


@pytest.mark.parametrize(
    ("purged", "field"),
    [
        ({"sessions": 1}, "purged"),
        ({"Memory Rows": 1}, "purged"),
        ({"memory_rows": -1}, "purged"),
    ],
)
async def test_erasure_refuses_counts_it_cannot_sign(auth: Auth, purged: dict[str, int], field: str) -> None:
    _, server, stub = auth
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity_pb2_grpc.IdentityServiceStub(channel).EraseUser(
                identity_pb2.EraseUserRequest(purged=purged), metadata=auth_metadata(login.access_token)
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")
    await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=login.refresh_token))


async def test_jwks_over_grpc_and_http_verifies_issued_tokens(
    auth: Auth,
) -> None:
    _, server, stub = auth
    jwks = await stub.GetJwks(auth_pb2.GetJwksRequest())
    assert len(jwks.keys) == 1
    assert jwks.keys[0].alg == "RS256"
    assert jwks.keys[0].kty == "RSA"
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.http.port}/.well-known/jwks.json")
    assert response.status_code == 200
    assert "max-age=" in response.headers["cache-control"]
    document = response.json()
    assert [key["kid"] for key in document["keys"]] == [jwks.keys[0].kid]
    assert not {"d", "p", "q"} & set(document["keys"][0])
    verifier = TokenVerifier(
        StaticKeySource(KeySet.import_key_set(document)), issuer="athenaos", audience="athenaos-api"
    )
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    assert (await verifier.verify(login.access_token)).user_id == login.user.id


async def test_list_providers_in_dev(auth: Auth) -> None:
    _, _, stub = auth
    providers = (await stub.ListProviders(auth_pb2.ListProvidersRequest())).providers
    assert [provider.id for provider in providers] == ["dev"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (auth_pb2.DevLoginRequest(email=""), "email"),
        (auth_pb2.DevLoginRequest(email="not-an-email"), "email"),
        (auth_pb2.DevLoginRequest(email="a@example.com", display_name="x" * 201), "display_name"),
    ],
)
async def test_dev_login_validates_its_input(
    auth: Auth, request_: auth_pb2.DevLoginRequest, field: str
) -> None:
    _, _, stub = auth
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DevLogin(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")


async def test_refresh_and_logout_require_the_token_field(
    auth: Auth,
) -> None:
    _, _, stub = auth
    for call in (
        stub.RefreshSession(auth_pb2.RefreshSessionRequest()),
        stub.Logout(auth_pb2.LogoutRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith("refresh_token:")


async def test_dev_login_outside_dev_is_refused(
    start_service: StartService, auth_database: str, kms_keys_dir: Path, tmp_path: Path
) -> None:
    keys_dir = tmp_path / "keys"
    rotate_keys(keys_dir, now=datetime.now(UTC), activation_delay=timedelta(0), retention=timedelta(hours=1))
    settings = AuthSettings(
        **service_settings(
            tmp_path, env="prod", database_url=auth_database, keys_dir=keys_dir, kms_keys_dir=kms_keys_dir
        )
    )
    server = await start_service(AUTH, settings, AuthDeps())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        providers = (await stub.ListProviders(auth_pb2.ListProvidersRequest())).providers
        assert list(providers) == []


def set_cookies(metadata: Any) -> list[dict[str, str]]:
    """Every `set-cookie` of a response's headers: `name`, `value` and the attributes, lower-case."""
    cookies = []
    for key, header in metadata or ():
        if key != "set-cookie":
            continue
        first, *attributes = (part.strip() for part in str(header).split(";"))
        name, _, value = first.partition("=")
        cookie = {"name": name, "value": value}
        for attribute in attributes:
            attribute_name, _, attribute_value = attribute.partition("=")
            cookie[attribute_name.lower()] = attribute_value
        cookies.append(cookie)
    return cookies


def refresh_cookie(metadata: Any) -> dict[str, str]:
    (cookie,) = set_cookies(metadata)
    assert cookie["name"] == REFRESH_COOKIE, cookie
    return cookie


def browser_cookies(refresh_token: str) -> tuple[tuple[str, str], ...]:
    """The `cookie` header a browser sends with an AuthService call, among cookies of other paths."""
    return (("cookie", f"theme=dark; {REFRESH_COOKIE}={refresh_token}; lang=en"),)


async def test_a_browser_gets_its_refresh_token_only_as_an_http_only_cookie_scoped_to_auth_calls(
    auth: Auth,
) -> None:
    _, _, stub = auth
    call = stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email(), refresh_token_in_cookie=True))
    login = (await call).session
    assert login.access_token
    assert login.refresh_token == ""  # nothing a page script could read
    cookie = refresh_cookie(await call.initial_metadata())
    assert len(cookie["value"]) == 43  # the refresh token itself: 256 bits, base64url
    assert cookie["path"] == COOKIE_PATH
    assert {"httponly", "secure"} <= cookie.keys()
    assert cookie["samesite"] == "Strict"
    assert "domain" not in cookie  # this host only
    assert REFRESH_TTL_SECONDS - 60 <= int(cookie["max-age"]) <= REFRESH_TTL_SECONDS

    # RefreshSession presents the cookie and answers with the next one; the presented token is spent.
    call = stub.RefreshSession(
        auth_pb2.RefreshSessionRequest(refresh_token_in_cookie=True),
        metadata=browser_cookies(cookie["value"]),
    )
    refreshed = (await call).session
    assert refreshed.user.id == login.user.id
    assert refreshed.access_token
    assert refreshed.refresh_token == ""
    rotated = refresh_cookie(await call.initial_metadata())
    assert rotated["value"] != cookie["value"]
    assert (rotated["path"], rotated["samesite"]) == (COOKIE_PATH, "Strict")
    assert {"httponly", "secure"} <= rotated.keys()

    # Logout ends the session the cookie names and clears the cookie.
    call = stub.Logout(
        auth_pb2.LogoutRequest(refresh_token_in_cookie=True), metadata=browser_cookies(rotated["value"])
    )
    await call
    cleared = refresh_cookie(await call.initial_metadata())
    assert (cleared["value"], cleared["max-age"], cleared["path"]) == ("", "0", COOKIE_PATH)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RefreshSession(
            auth_pb2.RefreshSessionRequest(refresh_token_in_cookie=True),
            metadata=browser_cookies(rotated["value"]),
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_two_tabs_refreshing_with_one_cookie_both_get_a_session(auth: Auth) -> None:
    """The tabs of a browser share its cookie: two refreshing at once present the same token, which the
    reuse grace forgives, each getting a cookie of the same session."""
    _, _, stub = auth
    call = stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email(), refresh_token_in_cookie=True))
    await call
    token = refresh_cookie(await call.initial_metadata())["value"]
    request = auth_pb2.RefreshSessionRequest(refresh_token_in_cookie=True)
    calls = [stub.RefreshSession(request, metadata=browser_cookies(token)) for _ in range(2)]
    await asyncio.gather(*calls)
    cookies = [refresh_cookie(await call.initial_metadata())["value"] for call in calls]
    assert len({token, *cookies}) == 3
    for cookie in cookies:
        await stub.RefreshSession(request, metadata=browser_cookies(cookie))


async def test_a_spent_refresh_cookie_presented_again_revokes_the_session(
    start_service: StartService, auth_database: str, kms_keys_dir: Path, tmp_path: Path
) -> None:
    _, _, channel = await start_auth(
        start_service, auth_database, tmp_path, kms_keys_dir, refresh_reuse_grace=timedelta(0)
    )
    stub = Stub(channel)
    call = stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email(), refresh_token_in_cookie=True))
    await call
    spent = refresh_cookie(await call.initial_metadata())["value"]
    request = auth_pb2.RefreshSessionRequest(refresh_token_in_cookie=True)
    call = stub.RefreshSession(request, metadata=browser_cookies(spent))
    await call
    rotated = refresh_cookie(await call.initial_metadata())["value"]
    await asyncio.sleep(0.01)
    for token in (spent, rotated):  # the thief's replay, then the owner's next refresh
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RefreshSession(request, metadata=browser_cookies(token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await channel.close()


async def test_service_clients_keep_the_refresh_token_in_the_messages(auth: Auth) -> None:
    _, _, stub = auth
    call = stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))
    login = (await call).session
    assert login.refresh_token
    assert set_cookies(await call.initial_metadata()) == []
    call = stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=login.refresh_token))
    assert (await call).session.refresh_token
    assert set_cookies(await call.initial_metadata()) == []


async def test_a_cookie_is_read_only_when_the_request_asks_for_it(auth: Auth) -> None:
    """A refresh token in a cookie is never spent or revoked by a call that did not ask for the cookie,
    and a call that asks for it may not name another token in its message."""
    _, _, stub = auth
    call = stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email(), refresh_token_in_cookie=True))
    await call
    token = refresh_cookie(await call.initial_metadata())["value"]
    body_client = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    for request in (
        auth_pb2.RefreshSessionRequest(),
        auth_pb2.LogoutRequest(),
        auth_pb2.RefreshSessionRequest(refresh_token=body_client.refresh_token, refresh_token_in_cookie=True),
        auth_pb2.LogoutRequest(refresh_token=body_client.refresh_token, refresh_token_in_cookie=True),
    ):
        method = stub.RefreshSession if isinstance(request, auth_pb2.RefreshSessionRequest) else stub.Logout
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(request, metadata=browser_cookies(token))  # type: ignore[operator]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith("refresh_token:"), caught.value.details()
    # Neither token was touched.
    await stub.RefreshSession(
        auth_pb2.RefreshSessionRequest(refresh_token_in_cookie=True), metadata=browser_cookies(token)
    )
    await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=body_client.refresh_token))


async def test_without_its_cookie_a_browser_is_signed_out(auth: Auth) -> None:
    _, _, stub = auth
    request = auth_pb2.RefreshSessionRequest(refresh_token_in_cookie=True)
    for metadata in ((), (("cookie", "theme=dark"),), browser_cookies("")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RefreshSession(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Two refresh cookies (one planted by a sibling site, say): neither is trusted.
    call = stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email(), refresh_token_in_cookie=True))
    await call
    token = refresh_cookie(await call.initial_metadata())["value"]
    planted = (("cookie", f"{REFRESH_COOKIE}={'x' * 43}; {REFRESH_COOKIE}={token}"),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RefreshSession(request, metadata=planted)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Logout without a cookie is no error (idempotent) and still clears it.
    call = stub.Logout(auth_pb2.LogoutRequest(refresh_token_in_cookie=True))
    await call
    assert refresh_cookie(await call.initial_metadata())["max-age"] == "0"
