"""A real Envoy, rendered by `edge.envoy_config`, in front of stand-in upstreams.

The stand-in gRPC server plays the router, the orchestrator and auth (health and reflection only); an
aiohttp app serves the JWKS. What is checked is what a client of the edge notices: which calls get through,
which are refused and with which gRPC status, and that browsers can read the errors (CORS headers on every
reply).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from edge_fixtures import ENVOY, running_envoy, wait_for_jwks  # type: ignore[import-not-found]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from joserfc.jwk import RSAKey

from devstack.process import free_port
from edge.envoy_config import (
    AUTH_SERVICE,
    CHAT_SERVICE,
    EDGE_REFLECTION_HEADER,
    UPSTREAM_UNAVAILABLE,
    EdgeConfig,
)
from mesh.interceptors import ServerInterceptor

if TYPE_CHECKING:
    from mesh.interceptors import Continuation, Handler

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")
ORIGIN = "http://app.example.test"

pytestmark = pytest.mark.skipif(ENVOY is None or GRPCURL is None, reason="envoy or grpcurl is not installed")


class _RecordCalls(ServerInterceptor):
    """Keeps the method and metadata of every call the stand-in receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        metadata = {key: str(value) for key, value in handler_call_details.invocation_metadata or ()}
        self.calls.append((handler_call_details.method, metadata))
        return await continuation(handler_call_details)


@dataclass
class Edge:
    """The running edge and what its stand-ins saw."""

    address: str
    url: str
    calls: list[tuple[str, dict[str, str]]]
    health: HealthServicer


@pytest_asyncio.fixture(scope="module")
async def edge(signing_key: RSAKey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    base = tmp_path_factory.mktemp("edge")
    recorder = _RecordCalls()
    server = grpc.aio.server(interceptors=[recorder])
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", CHAT_SERVICE, AUTH_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    jwks = {"keys": [signing_key.as_dict(private=False)]}

    async def serve_jwks(_: web.Request) -> web.Response:
        return web.json_response(jwks)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve_jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    jwks_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", jwks_port).start()

    web_root = base / "dist"
    (web_root / "assets").mkdir(parents=True)
    (web_root / "index.html").write_text("<!doctype html><title>AthenaOS</title>")
    (web_root / "assets" / "app-1234.js").write_text("console.log('athena');")

    port, admin_port = free_port(), free_port()
    config = EdgeConfig(
        listen_port=port,
        admin_port=admin_port,
        router_port=grpc_port,
        orchestrator_port=grpc_port,
        auth_port=grpc_port,
        auth_http_port=jwks_port,
        allowed_origins=(ORIGIN,),
        web_root=web_root,
    )
    try:
        async with running_envoy(config, base):
            await wait_for_jwks(f"http://127.0.0.1:{admin_port}")
            yield Edge(
                address=f"127.0.0.1:{port}",
                url=f"http://127.0.0.1:{port}",
                calls=recorder.calls,
                health=health_servicer,
            )
    finally:
        await runner.cleanup()
        await server.stop(None)


async def grpcurl(
    edge: Edge, *args: str, data: str | None = None, proto: str | None = None
) -> tuple[int, str]:
    """Run grpcurl against the edge; returns its exit code and its stdout and stderr together."""
    assert GRPCURL is not None
    argv = [GRPCURL, "-plaintext", "-max-time", "10"]
    if proto is not None:
        argv += [
            "-import-path",
            str(REPO / "proto"),
            "-import-path",
            str(REPO / "third_party" / "protovalidate"),
        ]
        argv += ["-proto", proto]
    if data is not None:
        argv += ["-format", "json", "-d", data]
    process = await asyncio.create_subprocess_exec(
        *argv,
        *args[:-1],
        edge.address,
        args[-1],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


def grpc_web_frame(message: bytes = b"") -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


async def test_health_is_served_through_the_edge(edge: Edge) -> None:
    code, output = await grpcurl(
        edge, "-d", json.dumps({"service": CHAT_SERVICE}), "grpc.health.v1.Health/Check"
    )
    assert code == 0, output
    assert json.loads(output)["status"] == "SERVING"


async def test_server_streams_pass_through_unbuffered(edge: Edge) -> None:
    watched = "athena.test.Streamed"
    await edge.health.set(watched, health_pb2.HealthCheckResponse.SERVING)
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=watched))
        first = await asyncio.wait_for(stream.read(), 5)
        await edge.health.set(watched, health_pb2.HealthCheckResponse.NOT_SERVING)
        second = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert isinstance(second, health_pb2.HealthCheckResponse)
    assert (first.status, second.status) == (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )


async def test_reflection_reaches_the_router_marked_as_coming_through_the_edge(edge: Edge) -> None:
    code, output = await grpcurl(edge, "list")
    assert code == 0, output
    assert "grpc.health.v1.Health" in output.split()
    reflection_calls = [meta for method, meta in edge.calls if "ServerReflection" in method]
    assert reflection_calls
    assert all(meta.get(EDGE_REFLECTION_HEADER) == "1" for meta in reflection_calls)


@pytest.mark.parametrize(
    ("proto", "method"),
    [
        ("athena/memory/v1/memory.proto", "athena.memory.v1.MemoryService/Recall"),
        ("athena/orchestrator/v1/orchestrator.proto", "athena.orchestrator.v1.OrchestratorService/Run"),
    ],
)
async def test_internal_services_are_not_routed(edge: Edge, proto: str, method: str) -> None:
    before = len(edge.calls)
    code, output = await grpcurl(edge, method, data="{}", proto=proto)
    assert code != 0
    assert "Unimplemented" in output, output
    assert len(edge.calls) == before


async def test_chat_without_a_token_is_unauthenticated_at_the_edge(edge: Edge) -> None:
    before = len(edge.calls)
    code, output = await grpcurl(
        edge, f"{CHAT_SERVICE}/ListAgents", data="{}", proto="athena/chat/v1/chat.proto"
    )
    assert code != 0
    assert "Unauthenticated" in output, output
    assert len(edge.calls) == before


@pytest.mark.parametrize(
    "claims",
    [{"aud": "someone-else"}, {"iss": "https://evil.example"}, {"exp": 1_000_000_000}],
    ids=["audience", "issuer", "expired"],
)
async def test_chat_with_a_bad_token_is_unauthenticated_at_the_edge(
    edge: Edge, make_token: Callable[..., str], claims: dict[str, Any]
) -> None:
    token = make_token(**claims)
    code, output = await grpcurl(
        edge,
        "-H",
        f"authorization: Bearer {token}",
        f"{CHAT_SERVICE}/ListAgents",
        data="{}",
        proto="athena/chat/v1/chat.proto",
    )
    assert code != 0
    assert "Unauthenticated" in output, output


async def test_chat_with_a_valid_token_reaches_the_router_with_the_token(
    edge: Edge, make_token: Callable[..., str]
) -> None:
    token = make_token()
    _, output = await grpcurl(
        edge,
        "-H",
        f"authorization: Bearer {token}",
        f"{CHAT_SERVICE}/ListAgents",
        data="{}",
        proto="athena/chat/v1/chat.proto",
    )
    # The stand-in does not implement ChatService: its own UNIMPLEMENTED proves the call got through.
    assert "Unimplemented" in output, output
    method, metadata = edge.calls[-1]
    assert method == f"/{CHAT_SERVICE}/ListAgents"
    assert metadata["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("path", [f"/{CHAT_SERVICE}/Chat", "/athena.memory.v1.MemoryService/Recall"])
async def test_cors_preflight_is_answered_by_the_edge_for_allowed_origins_only(edge: Edge, path: str) -> None:
    headers = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,authorization",
    }
    before = len(edge.calls)
    async with httpx.AsyncClient() as client:
        allowed = await client.options(edge.url + path, headers={"origin": ORIGIN, **headers})
        foreign = await client.options(edge.url + path, headers={"origin": "http://evil.example", **headers})
    assert allowed.status_code == 200
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    assert "access-control-allow-origin" not in foreign.headers
    assert len(edge.calls) == before


async def test_grpc_web_error_replies_carry_cors_headers_and_grpc_status(edge: Edge) -> None:
    headers = {"origin": ORIGIN, "content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    async with httpx.AsyncClient() as client:
        unauthenticated = await client.post(
            f"{edge.url}/{CHAT_SERVICE}/ListAgents", content=grpc_web_frame(), headers=headers
        )
        internal = await client.post(
            f"{edge.url}/athena.memory.v1.MemoryService/Recall", content=grpc_web_frame(), headers=headers
        )
        foreign = await client.post(
            f"{edge.url}/{CHAT_SERVICE}/ListAgents",
            content=grpc_web_frame(),
            headers={**headers, "origin": "http://evil.example"},
        )
    assert "access-control-allow-origin" not in foreign.headers
    # Trailers-only replies: grpc-status is in the headers, which is all a browser needs to read.
    for reply, status in ((unauthenticated, "16"), (internal, "12")):
        assert reply.headers.get("access-control-allow-origin") == ORIGIN
        assert reply.headers.get("grpc-status") == status, reply.headers
        assert "grpc-status" in reply.headers["access-control-expose-headers"]


async def test_web_app_files_are_served_and_other_paths_are_not_found(edge: Edge) -> None:
    async with httpx.AsyncClient() as client:
        index = await client.get(f"{edge.url}/")
        # Where providers send a person back after connecting an account: the app, whatever the query.
        connections = await client.get(f"{edge.url}/connections", params={"code": "c0de", "state": "s"})
        script = await client.get(f"{edge.url}/assets/app-1234.js")
        missing = await client.get(f"{edge.url}/secret.txt")
        below = await client.get(f"{edge.url}/connections/anything")
    for page in (index, connections):
        assert page.status_code == 200
        assert page.text == "<!doctype html><title>AthenaOS</title>"
        assert page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200
    assert script.text == "console.log('athena');"
    assert script.headers["content-type"].startswith("text/javascript")
    assert "immutable" in script.headers["cache-control"]
    assert missing.status_code == 404
    assert below.status_code == 404


@pytest.mark.parametrize("path", ["/", "/connections", "/index.html", "/assets/app-1234.js"])
async def test_web_app_files_carry_the_browser_security_headers(edge: Edge, path: str) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(edge.url + path)
    assert answer.status_code == 200
    policy = {
        name: sources
        for name, *sources in (part.split() for part in answer.headers["content-security-policy"].split(";"))
    }
    assert policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "camera=()" in answer.headers["permissions-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["cross-origin-opener-policy"] == "same-origin"
    assert answer.headers["x-content-type-options"] == "nosniff"
    # Each header once: a browser combines repeated policies, and a duplicate would hide a stale one.
    for name in ("content-security-policy", "referrer-policy", "permissions-policy", "x-frame-options"):
        assert len(answer.headers.get_list(name)) == 1, name


async def test_grpc_web_replies_keep_cors_and_carry_no_page_policy(edge: Edge) -> None:
    """The page's policy is for documents; API replies stay as browsers' gRPC-web clients need them."""
    headers = {"origin": ORIGIN, "content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{edge.url}/{AUTH_SERVICE}/ListProviders", content=grpc_web_frame(), headers=headers
        )
    assert reply.status_code == 200
    assert reply.headers.get("access-control-allow-origin") == ORIGIN
    assert "content-security-policy" not in reply.headers


async def test_an_upstream_that_is_down_is_told_in_our_words(tmp_path: Path) -> None:
    """Issue 12, finding 4: with the router down, clients read Envoy's internals ("upstream connect error
    or disconnect/reset before headers. reset reason: connection failure, ..."). Native gRPC and gRPC-web
    clients now read a sentence of ours, status UNAVAILABLE unchanged."""
    port = free_port()
    config = EdgeConfig(
        listen_port=port,
        admin_port=free_port(),
        router_port=free_port(),  # nothing listens there
        orchestrator_port=free_port(),
        auth_port=free_port(),
        auth_http_port=free_port(),
        allowed_origins=(ORIGIN,),
        web_root=tmp_path / "no-build",
    )
    async with running_envoy(config, tmp_path):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=CHAT_SERVICE), timeout=10
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == UPSTREAM_UNAVAILABLE

        headers = {"origin": ORIGIN, "content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"http://127.0.0.1:{port}/{AUTH_SERVICE}/ListProviders",
                content=grpc_web_frame(),
                headers=headers,
            )
        assert reply.headers.get("grpc-status") == "14", reply.headers
        assert urllib.parse.unquote(reply.headers["grpc-message"]) == UPSTREAM_UNAVAILABLE
        assert reply.headers.get("access-control-allow-origin") == ORIGIN
