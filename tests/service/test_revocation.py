"""Revocation that takes effect now, across real services: after DeleteAccount, or a refresh-token reuse
that revokes a session, the tokens it names are refused (UNAUTHENTICATED, "access token revoked") by the
router, the orchestrator, memory and auth, each checking its own copy of the list; nobody else's tokens
are; and what happens while Redis is down.

Refusal is polled for (a revocation reaches every process in milliseconds; the bound asserted is a
generous `BOUND_SECONDS`, so a slow machine cannot make the tests flake)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2
from athena.identity.v1 import identity_pb2, identity_pb2_grpc
from athena.memory.v1 import memory_pb2
from conftest import auth_metadata, running_valkey, service_settings
from google.protobuf.json_format import MessageToDict
from joserfc.jwk import RSAKey
from router_fixtures import (  # type: ignore[import-not-found]
    Metadata,
    Router,
    RouterMesh,
    chat,
    mesh,
    public_keys,
)

from auth.app import AUTH, JWKS_PATH, AuthDeps
from auth.receipts import verify_receipt
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.app import Deps, RunningService
from mesh.redis import connect
from mesh.revocation import Revocation, RevocationKind
from mesh.revocation_feed import RedisRevocationFeed
from mesh.tokens import StaticKeySource, TokenVerifier
from router.app import ROUTER
from router.settings import RouterSettings

__all__ = ["mesh"]

BOUND_SECONDS = 5.0
"""How long a test waits for a refusal before failing: far above the second the design promises."""
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
Call = Callable[[Metadata], Awaitable[Any]]


async def refused_within_bound(call: Call, metadata: Metadata) -> float:
    """Calls until the call is refused as revoked; returns how long that took. Any other failure, or no
    refusal within `BOUND_SECONDS`, fails the test."""
    started = time.monotonic()
    while True:
        error: grpc.aio.AioRpcError | None = None
        try:
            await call(metadata)
        except grpc.aio.AioRpcError as failed:
            error = failed
        if error is not None:
            assert (error.code(), error.details()) == (UNAUTHENTICATED, "access token revoked")
            return time.monotonic() - started
        assert time.monotonic() - started < BOUND_SECONDS, "the revoked token is still accepted"
        await asyncio.sleep(0.02)


def list_agents(router: Router) -> Call:
    async def call(metadata: Metadata) -> Any:
        return await router.chat.ListAgents(chat_pb2.ListAgentsRequest(), metadata=metadata, timeout=10)

    return call


async def start_router_of_its_own(mesh: RouterMesh, auth: RunningService) -> Router:
    """A router wired as in production: its own verifier over `auth`'s JWKS (`Deps()`), its own copy of
    the mesh's revocation list."""
    settings = RouterSettings(
        **service_settings(
            mesh.base,
            memory_target=f"127.0.0.1:{mesh.memory.port}",
            auth_target=f"127.0.0.1:{auth.port}",
            integrations_target=f"127.0.0.1:{mesh.integrations.port}",
            jwks_url=f"http://127.0.0.1:{auth.http_port}{JWKS_PATH}",
            redis_url=mesh.redis_url,
        )
    )
    running = await mesh.services.start(ROUTER, settings, Deps())
    client = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    mesh.channels.append(client)
    return Router(running.server, client, client)


@pytest_asyncio.fixture(scope="module")
async def router(mesh: RouterMesh) -> Router:
    return await mesh.start_router([await mesh.start_orchestrator()])


def every_service(mesh: RouterMesh, routers: list[Router], auth_channel: grpc.aio.Channel) -> list[Call]:
    """One call per service that checks the caller's token: each router, the orchestrator (Chat), memory,
    and auth (ExportIdentity, which changes nothing)."""

    async def orchestrator_chat(metadata: Metadata) -> Any:
        return await chat(routers[0].chat, metadata, "hello")

    async def memory_list(metadata: Metadata) -> Any:
        return await mesh.memory.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=metadata)

    async def auth_export(metadata: Metadata) -> Any:
        identity = identity_pb2_grpc.IdentityServiceStub(auth_channel)
        return await identity.ExportIdentity(identity_pb2.ExportIdentityRequest(), metadata=metadata)

    return [*(list_agents(router) for router in routers), orchestrator_chat, memory_list, auth_export]


async def test_delete_account_revokes_every_token_of_the_caller_in_every_service(
    mesh: RouterMesh, router: Router
) -> None:
    email = f"revoke-{uuid.uuid4().hex[:10]}@example.com"
    session = await mesh.sign_in(email)
    refreshed = (
        await mesh.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token))
    ).session
    laptop = await mesh.sign_in(email)  # another session of the same person
    bystander = await mesh.sign_in()
    own = await start_router_of_its_own(mesh, mesh.auth_service)
    calls = every_service(mesh, [router, own], mesh.auth_channel)
    tokens = [auth_metadata(s.access_token) for s in (session, refreshed, laptop)]
    for metadata in tokens:  # each token is now in each verifier's cache of verified tokens
        for call in calls:
            await call(metadata)

    deleted = await router.account.DeleteAccount(account_pb2.DeleteAccountRequest(), metadata=tokens[0])

    for metadata in tokens:
        for call in calls:
            await refused_within_bound(call, metadata)
    for call in calls:
        await call(auth_metadata(bystander.access_token))

    # The receipt, checked as anyone would: against the JWKS the auth service publishes.
    published = await mesh.auth.GetJwks(auth_pb2.GetJwksRequest())
    jwks = {"keys": [MessageToDict(key, preserving_proto_field_name=True) for key in published.keys]}
    receipt = verify_receipt(deleted.receipt, jwks, issuer="athenaos")
    assert receipt.user_id == session.user.id
    assert receipt.erased == dict(deleted.erased)
    assert receipt.erased["account"] == 1
    assert receipt.erased["sessions"] == 2
    assert receipt.erased["refresh_tokens"] == 3
    assert receipt.erased["memory_rows"] >= 1  # the user's row in memory, made by the calls above
    assert "memory_cache_keys" in receipt.erased
    assert int(receipt.erased_at.timestamp()) == deleted.erased_at.seconds


async def test_a_reused_refresh_token_revokes_its_sessions_access_tokens_and_nothing_else(
    mesh: RouterMesh, router: Router, postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path
) -> None:
    """Reuse after the grace window (none here) is theft: the session's access tokens die with it."""
    settings = AuthSettings(
        **service_settings(
            tmp_path,
            env="dev",
            database_url=postgres.url,
            keys_dir=mesh.base / "auth" / "auth-keys",  # the mesh's auth keys: every service trusts them
            kms_keys_dir=kms_keys_dir,  # and its KMS: the same database's data keys
            refresh_reuse_grace=0,
            redis_url=mesh.redis_url,
        )
    )
    strict = await mesh.services.start(AUTH, settings, AuthDeps())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{strict.port}") as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        email = f"reuse-{uuid.uuid4().hex[:10]}@example.com"
        stolen = (await auth.DevLogin(auth_pb2.DevLoginRequest(email=email))).session
        rotated = (
            await auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=stolen.refresh_token))
        ).session
        other_session = (await auth.DevLogin(auth_pb2.DevLoginRequest(email=email))).session
        other_person = (await auth.DevLogin(auth_pb2.DevLoginRequest(email=f"x{email}"))).session
        calls = every_service(mesh, [router], channel)
        for session in (stolen, rotated, other_session, other_person):
            for call in calls:
                await call(auth_metadata(session.access_token))
        await asyncio.sleep(0.01)  # past the (zero) grace window

        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=stolen.refresh_token))
        assert reused.value.code() == UNAUTHENTICATED

        for session in (stolen, rotated):
            for call in calls:
                await refused_within_bound(call, auth_metadata(session.access_token))
        for session in (other_session, other_person):
            for call in calls:
                await call(auth_metadata(session.access_token))


async def test_signing_out_ends_the_sessions_access_tokens_everywhere(
    mesh: RouterMesh, router: Router
) -> None:
    """Logout ends its session's access tokens, RevokeAllSessions every session's; a sign-in right after
    is not affected, nor another person."""
    email = f"logout-{uuid.uuid4().hex[:10]}@example.com"
    phone, laptop, tablet = [await mesh.sign_in(email) for _ in range(3)]
    bystander = await mesh.sign_in()
    calls = every_service(mesh, [router], mesh.auth_channel)
    for session in (phone, laptop, tablet, bystander):
        for call in calls:
            await call(auth_metadata(session.access_token))

    await mesh.auth.Logout(auth_pb2.LogoutRequest(refresh_token=phone.refresh_token))
    for call in calls:
        await refused_within_bound(call, auth_metadata(phone.access_token))
        await call(auth_metadata(laptop.access_token))

    revoked = await mesh.auth.RevokeAllSessions(
        auth_pb2.RevokeAllSessionsRequest(), metadata=auth_metadata(laptop.access_token)
    )
    assert revoked.revoked_sessions == 2
    again = await mesh.sign_in(email)
    for call in calls:
        for session in (laptop, tablet):
            await refused_within_bound(call, auth_metadata(session.access_token))
        await call(auth_metadata(again.access_token))
        await call(auth_metadata(bystander.access_token))


@pytest_asyncio.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    """A Valkey of this test's own, which it may stop and start again."""
    with running_valkey(tmp_path) as server:
        yield server


async def test_while_redis_is_down_the_last_known_list_keeps_applying(
    mesh: RouterMesh, own_valkey: EmbeddedValkey, signing_key: RSAKey, tmp_path: Path
) -> None:
    """Redis down: every process keeps refusing what it knew; one started meanwhile knows nothing yet;
    once Redis is back (empty, as a Redis that lost its data restarts), new revocations reach all."""
    keys = StaticKeySource(public_keys(signing_key))  # the suite's test tokens (`mesh.user()`)

    async def router_with_own_verifier() -> Router:
        settings = RouterSettings(
            **service_settings(
                mesh.base,
                memory_target=f"127.0.0.1:{mesh.memory.port}",
                auth_target=f"127.0.0.1:{mesh.auth_service.port}",
                integrations_target=f"127.0.0.1:{mesh.integrations.port}",
                redis_url=own_valkey.url,
            )
        )
        verifier = TokenVerifier(keys, issuer="athenaos", audience="athenaos-api")
        running = await mesh.services.start(ROUTER, settings, Deps(verifier=verifier))
        client = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        mesh.channels.append(client)
        return Router(running.server, client, client)

    def revocation(user_id: str) -> Revocation:
        now = int(time.time())
        return Revocation(RevocationKind.USER, user_id, revoked_at=now, expires_at=now + 1020)

    before = await router_with_own_verifier()
    client = connect(own_valkey.url, 1.0)
    writer = RedisRevocationFeed(client)
    revoked_id, revoked = mesh.user()
    _, bystander = mesh.user()
    await writer.revoke(revocation(revoked_id))
    await refused_within_bound(list_agents(before), revoked)

    own_valkey.stop()
    during = await router_with_own_verifier()  # starts and serves without its revocation list
    for router in (before, during):
        await list_agents(router)(bystander)
    await refused_within_bound(list_agents(before), revoked)
    await list_agents(during)(revoked)  # documented: a process started during the outage knew nothing

    restarted = EmbeddedValkey(  # without the data it had
        own_valkey.port, tmp_path / "valkey-again.log", data_dir=tmp_path / "valkey-again"
    )
    await asyncio.to_thread(restarted.start)
    try:
        later_id, later = mesh.user()
        await writer.revoke(revocation(later_id))
        for router in (before, during):
            await refused_within_bound(list_agents(router), later)
        await refused_within_bound(list_agents(before), revoked)  # what it knew still applies
        await list_agents(before)(bystander)
    finally:
        await client.aclose()
        await asyncio.to_thread(restarted.stop)


async def test_delete_account_is_unavailable_while_its_tokens_cannot_be_revoked(
    mesh: RouterMesh, postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path
) -> None:
    """An auth service whose Redis is down erases nothing (the caller's token keeps working, so trying
    again later finishes the erasure) and says so: UNAVAILABLE."""
    settings = AuthSettings(
        **service_settings(
            tmp_path,
            env="dev",
            database_url=postgres.url,
            keys_dir=mesh.base / "auth" / "auth-keys",
            kms_keys_dir=kms_keys_dir,
        )
    )  # and no Redis
    cut_off = await mesh.services.start(AUTH, settings, AuthDeps())
    router = await start_router_of_its_own(mesh, cut_off)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cut_off.port}") as channel:
        session = (
            await auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
                auth_pb2.DevLoginRequest(email=f"cut-{uuid.uuid4().hex[:10]}@example.com")
            )
        ).session
        metadata = auth_metadata(session.access_token)
        account = account_pb2_grpc.AccountServiceStub(router.client)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await account.DeleteAccount(account_pb2.DeleteAccountRequest(), metadata=metadata, timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == "the account cannot be deleted right now; try again in a moment"
        # Nothing was erased in auth: the session still refreshes, and the token still works.
        await auth_pb2_grpc.AuthServiceStub(channel).RefreshSession(
            auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token)
        )
        await list_agents(router)(metadata)
