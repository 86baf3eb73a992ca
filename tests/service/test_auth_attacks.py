"""Forged and misused access tokens, presented to a service (the auth service's RevokeAllSessions, which
needs a token) and to `mesh.tokens.TokenVerifier` directly: every one is UNAUTHENTICATED, none reaches a
URL it names (a canary listener counts connections), and the victim's sessions survive the whole suite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from conftest import AUDIENCE, ISSUER, auth_metadata, service_settings
from joserfc.jwk import RSAKey
from jwt_attacks import (
    Canary,
    attack_cases,
    attack_names,
    canary_listener,
    genuine_token,
)

from auth.app import AUTH, AuthDeps
from auth.keys import load_key_ring
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from mesh.app import RunningService, start
from mesh.errors import Unauthenticated


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    with canary_listener() as listener:
        yield listener


@dataclass
class Target:
    app: RunningService
    stub: auth_pb2_grpc.AuthServiceStub
    victim_id: str
    victim_token: str
    signing_key: RSAKey
    public_key: RSAKey
    kid: str


@pytest_asyncio.fixture(scope="module")
async def target(
    postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    tmp_path: Path = tmp_path_factory.mktemp("auth-attacks")
    settings = AuthSettings(
        **service_settings(tmp_path, env="dev", database_url=postgres.url, kms_keys_dir=kms_keys_dir)
    )
    app = await start(AUTH, settings, AuthDeps())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    victim = (
        await stub.DevLogin(auth_pb2.DevLoginRequest(email=f"victim-{uuid.uuid4().hex[:8]}@example.com"))
    ).session
    # The key the service signs with, read where it keeps it (what a thief of the key directory has).
    now = datetime.now(UTC)
    ring = load_key_ring(
        settings.signing_keys_dir,
        now=now,
        activation_delay=settings.key_activation_delay,
        retention=timedelta(hours=1),
        create_if_empty=False,
    )
    key = ring.signing_key(now)
    public = RSAKey.import_key(key.public_jwk())  # as the JWKS publishes it: what an attacker knows
    yield Target(app, stub, victim.user.id, victim.access_token, key.private, public, key.kid)
    await channel.close()
    await app.stop()


def attacks(target: Target, canary: Canary) -> list[tuple[str, str]]:
    """(name, token) pairs; each token must be refused."""
    return attack_cases(
        target.signing_key,
        target.public_key,
        issuer=ISSUER,
        audience=AUDIENCE,
        canary_url=canary.url,
        genuine=target.victim_token,
        subject=target.victim_id,
        kid=target.kid,
    )


ATTACK_NAMES = attack_names()


@pytest.fixture(scope="module")
def forged(target: Target, canary: Canary) -> dict[str, str]:
    return dict(attacks(target, canary))


@pytest.mark.parametrize("name", ATTACK_NAMES)
async def test_the_verifier_refuses(target: Target, forged: dict[str, str], name: str) -> None:
    with pytest.raises(Unauthenticated):
        await target.app.verifier.verify(forged[name])


@pytest.mark.parametrize("name", ATTACK_NAMES)
async def test_the_service_refuses(target: Target, forged: dict[str, str], name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await target.stub.RevokeAllSessions(
            auth_pb2.RevokeAllSessionsRequest(), metadata=auth_metadata(forged[name])
        )
    # gRPC itself may refuse metadata over its 8 KiB soft limit first: RESOURCE_EXHAUSTED is right too.
    allowed = {grpc.StatusCode.UNAUTHENTICATED}
    if name == "oversized":
        allowed.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert caught.value.code() in allowed
    assert "Traceback" not in (caught.value.details() or "")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
    ],
    ids=["none", "empty", "bearer-only", "basic"],
)
async def test_missing_or_malformed_authorization(
    target: Target, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await target.stub.RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_attack_reached_the_canary_and_the_victim_is_untouched(
    target: Target, canary: Canary
) -> None:
    """Runs last in this module: after every forged token above."""
    await asyncio.sleep(0.05)
    assert canary.connections == []
    answer = await target.stub.RevokeAllSessions(
        auth_pb2.RevokeAllSessionsRequest(), metadata=auth_metadata(target.victim_token)
    )
    assert answer.revoked_sessions == 1


async def test_control_the_same_builders_make_an_acceptable_token(target: Target) -> None:
    """Without this, every refusal above could come from a broken builder rather than the verifier."""
    token = genuine_token(
        target.signing_key, issuer=ISSUER, audience=AUDIENCE, subject=target.victim_id, kid=target.kid
    )
    assert (await target.app.verifier.verify(token)).user_id == target.victim_id
