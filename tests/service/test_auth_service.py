"""The auth service over real gRPC and a real PostgreSQL: DevLogin, refresh rotation, logout, revocation,
JWKS (RPC and HTTP), and input validation."""

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
from joserfc.jwk import KeySet

from auth.app import AUTH, MIGRATIONS_DIR, AuthDeps
from auth.keys import rotate_keys
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from mesh.app import RunningService
from mesh.migrations import apply_migrations
from mesh.server import MeshServer
from mesh.tokens import StaticKeySource, TokenVerifier

Stub = auth_pb2_grpc.AuthServiceStub
Auth = tuple[RunningService, MeshServer, Stub]


@pytest.fixture(scope="session")
def auth_database(postgres: EmbeddedPostgres) -> str:
    apply_migrations(postgres.url, MIGRATIONS_DIR)
    assert apply_migrations(postgres.url, MIGRATIONS_DIR) == []  # idempotent
    return postgres.url


@pytest_asyncio.fixture
async def pool(auth_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(auth_database, min_size=1, max_size=5)
    yield pool
    await pool.close()


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


async def start_auth(
    start_service: StartService, database_url: str, tmp_path: Path, **overrides: Any
) -> tuple[RunningService, MeshServer, grpc.aio.Channel]:
    settings = AuthSettings(**service_settings(tmp_path, env="dev", database_url=database_url, **overrides))
    running = await start_service(AUTH, settings, AuthDeps())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return running, running.server, channel


@pytest_asyncio.fixture
async def auth(start_service: StartService, auth_database: str, tmp_path: Path) -> AsyncIterator[Auth]:
    app, server, channel = await start_auth(start_service, auth_database, tmp_path)
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
    start_service: StartService, auth_database: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    _, _, channel = await start_auth(start_service, auth_database, tmp_path, refresh_reuse_grace=timedelta(0))
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
    assert (
        await stub.RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest(), metadata=metadata)
    ).revoked_sessions == 0
    for session in sessions:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_erasure_deletes_every_auth_row_of_the_user(auth: Auth, pool: asyncpg.Pool) -> None:
    _, server, stub = auth
    login = (await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))).session
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        erased = await identity_pb2_grpc.IdentityServiceStub(channel).EraseUser(
            identity_pb2.EraseUserRequest(), metadata=auth_metadata(login.access_token)
        )
    assert erased.erased
    user_id = uuid.UUID(login.user.id)
    for table in ("users", "identities", "sessions", "refresh_tokens"):
        column = "id" if table == "users" else "user_id"
        assert await pool.fetchval(f"SELECT count(*) FROM auth.{table} WHERE {column} = $1", user_id) == 0  # noqa: S608


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
    start_service: StartService, auth_database: str, tmp_path: Path
) -> None:
    keys_dir = tmp_path / "keys"
    rotate_keys(keys_dir, now=datetime.now(UTC), activation_delay=timedelta(0), retention=timedelta(hours=1))
    settings = AuthSettings(
        **service_settings(tmp_path, env="prod", database_url=auth_database, keys_dir=keys_dir)
    )
    server = await start_service(AUTH, settings, AuthDeps())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DevLogin(auth_pb2.DevLoginRequest(email=unique_email()))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        providers = (await stub.ListProviders(auth_pb2.ListProvidersRequest())).providers
        assert list(providers) == []
