"""Every forged or misused access token of `tests/jwt_attacks.py`, presented to the router itself (the
public Chat and Account API, behind the edge in production): each is UNAUTHENTICATED, refused by the auth
interceptor before any peer is called, and no URL a token names is ever contacted.

The router runs in-process (built by `router.app.ROUTER`) with a real `TokenVerifier` over the test key.
Its peers (memory, auth) all point at a listener that only counts connections: a refused call
never reaches it, and the control (a genuine token) does, then fails UNAVAILABLE because no peer answers,
which proves the token itself was accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from conftest import AUDIENCE, ISSUER, auth_metadata, service_settings
from joserfc.jwk import RSAKey
from jwt_attacks import Canary, attack_cases, attack_names, canary_listener, genuine_token

from mesh.app import Deps, start
from mesh.tokens import TokenVerifier
from router.app import ROUTER
from router.settings import RouterSettings

METHODS = ["ChatService/ListAgents", "AccountService/ListMemories"]
VICTIM = "victim-router-attacks"


@dataclass
class Router:
    chat: chat_pb2_grpc.ChatServiceAsyncStub
    account: account_pb2_grpc.AccountServiceAsyncStub
    peer_listener: Canary

    async def call(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        if method == "ChatService/ListAgents":
            await self.chat.ListAgents(chat_pb2.ListAgentsRequest(), metadata=metadata, timeout=10)
        else:
            await self.account.ListMemories(account_pb2.ListMemoriesRequest(), metadata=metadata, timeout=10)


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    with canary_listener() as listener:
        yield listener


@pytest_asyncio.fixture(scope="module")
async def router(verifier: TokenVerifier, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Router]:
    tmp_path: Path = tmp_path_factory.mktemp("router-attacks")
    with canary_listener() as peer_listener:
        target = peer_listener.url.removeprefix("http://").split("/")[0]
        settings = RouterSettings(
            **service_settings(tmp_path),
            memory_target=target,
            auth_target=target,
            integrations_target=target,
            peer_timeout_seconds=5.0,
        )
        router = await start(ROUTER, settings, Deps(verifier=verifier))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
        try:
            yield Router(
                chat_pb2_grpc.ChatServiceStub(channel),
                account_pb2_grpc.AccountServiceStub(channel),
                peer_listener,
            )
        finally:
            await channel.close(grace=None)
            await router.stop()


@pytest.fixture(scope="module")
def forged(signing_key: RSAKey, canary: Canary) -> dict[str, str]:
    public = RSAKey.import_key(signing_key.as_dict(private=False))  # what the JWKS publishes
    return dict(
        attack_cases(
            signing_key, public, issuer=ISSUER, audience=AUDIENCE, canary_url=canary.url, subject=VICTIM
        )
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", attack_names())
async def test_the_router_refuses(router: Router, forged: dict[str, str], name: str, method: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.call(method, auth_metadata(forged[name]))
    # gRPC itself may refuse metadata over its 8 KiB soft limit first: RESOURCE_EXHAUSTED is right too.
    allowed = {grpc.StatusCode.UNAUTHENTICATED}
    if name == "oversized":
        allowed.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert caught.value.code() in allowed, (caught.value.code(), caught.value.details())
    details = caught.value.details() or ""
    assert "Traceback" not in details
    if caught.value.code() == grpc.StatusCode.UNAUTHENTICATED:
        assert details in {"invalid access token", "access token expired"}, details


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer"),), (("authorization", "Basic dXNlcjpwYXNz"),)],
    ids=["none", "bearer-only", "basic"],
)
async def test_missing_or_malformed_authorization(
    router: Router, method: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.call(method, metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_attack_reached_the_canary_or_a_peer(router: Router, canary: Canary) -> None:
    """Runs after every refused call above: nothing followed a URL in a token, and the auth interceptor
    refused each call before the handler could call a peer (peer channels connect only on a first call)."""
    await asyncio.sleep(0.1)
    assert canary.connections == []
    assert router.peer_listener.connections == []


@pytest.mark.parametrize("method", METHODS)
async def test_control_a_genuine_token_passes_authentication(
    router: Router, signing_key: RSAKey, method: str
) -> None:
    """Without this, every refusal above could come from a broken router or builder: a genuine token of the
    same builders gets past authentication and fails only because no peer answers."""
    token = genuine_token(signing_key, issuer=ISSUER, audience=AUDIENCE, subject=VICTIM)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.call(method, auth_metadata(token))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (caught.value.code(), caught.value.details())
    await asyncio.sleep(0.1)
    assert router.peer_listener.connections, "the handler never called its peer"
