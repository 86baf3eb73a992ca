"""Forged and misused access tokens, presented to a service (the auth service's RevokeAllSessions, which
needs a token) and to `mesh.tokens.TokenVerifier` directly: every one is UNAUTHENTICATED, none reaches a
URL it names (a canary listener counts connections), and the victim's sessions survive the whole suite."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from conftest import auth_metadata, service_settings
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from auth.fake_provider import generate_signing_key
from auth.migrate import apply_migrations
from auth.postgres import PostgresAuthStore
from auth.server import AuthApp, build_app, provider_http_client
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from mesh.errors import Unauthenticated


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """Built by hand: joserfc (rightly) refuses to use an RSA public key as an HMAC secret."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def rs(header: dict[str, Any], claims: dict[str, Any], key: RSAKey, alg: str = "RS256") -> str:
    if alg != "RS256":  # the same RSA key, not bound to RS256 (joserfc honours a key's `alg`)
        key = RSAKey.import_key({k: v for k, v in key.as_dict(private=True).items() if k != "alg"})
    return jwt.encode({"alg": alg, **header}, claims, key, algorithms=[alg])


@dataclass
class Canary:
    """A TCP listener no verifier may ever connect to."""

    url: str
    connections: list[str]


@pytest_asyncio.fixture(scope="module")
async def canary() -> AsyncIterator[Canary]:
    connections: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield Canary(url=f"http://127.0.0.1:{port}/jwks.json", connections=connections)
    server.close()
    await server.wait_closed()


@dataclass
class Target:
    app: AuthApp
    stub: auth_pb2_grpc.AuthServiceStub
    victim_id: str
    victim_token: str
    signing_key: RSAKey
    kid: str


@pytest_asyncio.fixture(scope="module")
async def target(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    apply_migrations(postgres.url)
    tmp_path: Path = tmp_path_factory.mktemp("auth-attacks")
    settings = AuthSettings(**service_settings(tmp_path, env="dev", database_url=postgres.url))
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=4)
    http = provider_http_client(settings)
    app = build_app(settings, PostgresAuthStore(pool), http)
    server = app.mesh_server()
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    victim = (
        await stub.DevLogin(auth_pb2.DevLoginRequest(email=f"victim-{uuid.uuid4().hex[:8]}@example.com"))
    ).session
    key = app.keys().signing_key(datetime.now(UTC))
    yield Target(app, stub, victim.user.id, victim.access_token, key.private, key.kid)
    await channel.close()
    await server.drain()
    await http.aclose()
    await pool.close()


def claims(target: Target, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "athenaos",
        "aud": "athenaos-api",
        "sub": target.victim_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    return {**base, **overrides}


AT = {"typ": "at+jwt"}
ATTACKER = generate_signing_key("attacker-key")


def public_pem(key: RSAKey) -> bytes:
    return bytes(key.as_pem(private=False))


def attacks(target: Target, canary: Canary) -> Iterator[tuple[str, str]]:
    """(name, token) pairs; each token must be refused."""
    kid = target.kid
    good = {**AT, "kid": kid}
    header, payload, signature = target.victim_token.split(".")
    yield "garbage", "garbage"
    yield "three garbage segments", "a.b.c"
    yield "empty segments", ".."
    yield "oversized", "a" * 9000 + ".b.c"
    yield "alg none", f"{segment({'alg': 'none', **good})}.{segment(claims(target))}."
    yield "alg None", f"{segment({'alg': 'None', **good})}.{segment(claims(target))}."
    jwk_form = json.dumps(target.signing_key.as_dict(private=False)).encode()
    yield (
        "HS256 with the public key (PEM)",
        hs256({"alg": "HS256", **good}, claims(target), public_pem(target.signing_key)),
    )
    yield "HS256 with the public key (JWK)", hs256({"alg": "HS256", **good}, claims(target), jwk_form)
    der = target.signing_key.raw_value.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    yield "HS256 with the public key (DER)", hs256({"alg": "HS256", **good}, claims(target), der)
    forged_payload = segment(
        {**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": str(uuid.uuid4())}
    )
    yield "tampered payload, old signature", f"{header}.{forged_payload}.{signature}"
    yield "stripped signature", f"{header}.{payload}."
    yield "signature of another token", f"{header}.{payload}.{b64(b'x' * 256)}"
    yield "unknown kid", rs({**AT, "kid": "attacker-key"}, claims(target), ATTACKER)
    yield "no kid", rs(AT, claims(target), ATTACKER)
    yield "our kid, attacker's key", rs(good, claims(target), ATTACKER)
    for injected in ("../../etc/passwd", "' OR 1=1 --", "/dev/null", "x" * 500):
        yield f"kid injection {injected[:20]}", rs({**AT, "kid": injected}, claims(target), ATTACKER)
    attacker_jwk = ATTACKER.as_dict(private=False)
    yield (
        "jku to attacker JWKS",
        rs({**AT, "kid": "attacker-key", "jku": canary.url}, claims(target), ATTACKER),
    )
    yield "x5u to attacker", rs({**AT, "kid": "attacker-key", "x5u": canary.url}, claims(target), ATTACKER)
    yield "jku with our kid", rs({**good, "jku": canary.url}, claims(target), ATTACKER)
    yield "embedded jwk", rs({**AT, "kid": "attacker-key", "jwk": attacker_jwk}, claims(target), ATTACKER)
    yield "embedded jwk, our kid", rs({**good, "jwk": attacker_jwk}, claims(target), ATTACKER)
    yield "x5c header", f"{segment({'alg': 'RS256', **good, 'x5c': ['MIIB']})}.{payload}.{signature}"
    yield "jku on a validly signed token", rs({**good, "jku": canary.url}, claims(target), target.signing_key)
    yield "crit header", f"{segment({'alg': 'RS256', **good, 'crit': ['exp']})}.{payload}.{signature}"
    yield "RS512 with our key", rs(good, claims(target), target.signing_key, alg="RS512")
    yield "PS256 with our key", rs(good, claims(target), target.signing_key, alg="PS256")
    now = int(time.time())
    yield "expired", rs(good, claims(target, iat=now - 3600, exp=now - 120), target.signing_key)
    yield "future nbf", rs(good, claims(target, nbf=now + 3600), target.signing_key)
    yield "issued in the future", rs(good, claims(target, iat=now + 3600, exp=now + 7200), target.signing_key)
    yield "no exp", rs(good, {k: v for k, v in claims(target).items() if k != "exp"}, target.signing_key)
    yield "no sub", rs(good, {k: v for k, v in claims(target).items() if k != "sub"}, target.signing_key)
    yield "empty sub", rs(good, claims(target, sub=""), target.signing_key)
    yield "wrong issuer", rs(good, claims(target, iss="https://evil.example"), target.signing_key)
    yield "wrong audience", rs(good, claims(target, aud="another-api"), target.signing_key)
    yield "no typ", rs({"kid": kid}, claims(target), target.signing_key)
    id_token_claims = claims(target, aud="google-client", nonce="n", email="victim@example.com")
    yield (
        "ID token (typ JWT, aud client id)",
        rs({"typ": "JWT", "kid": kid}, id_token_claims, target.signing_key),
    )
    yield "ID token claims with typ at+jwt", rs(good, id_token_claims, target.signing_key)
    yield "typ JWT, otherwise valid", rs({"typ": "JWT", "kid": kid}, claims(target), target.signing_key)


ATTACK_NAMES = [
    name
    for name, _ in attacks(
        Target(None, None, "u", f"{segment({})}.{segment({})}.c2ln", ATTACKER, "k"),  # type: ignore[arg-type]
        Canary("http://127.0.0.1:9/", []),
    )
]


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
    token = rs({**AT, "kid": target.kid}, claims(target), target.signing_key)
    assert (await target.app.verifier.verify(token)).user_id == target.victim_id
