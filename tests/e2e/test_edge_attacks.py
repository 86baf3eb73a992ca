"""Every forged or misused access token of `tests/jwt_attacks.py`, presented at the edge of the whole mesh
(SPEC §11, issue 5: "the attack suite passes at the edge and in the router").

One mesh for the module (`devstack.stack.Stack` on free ports, started in-process). A dev login through the
edge gives the victim's genuine token; the auth service's real signing key is read from its key directory
(`<data_dir>/auth-keys/<kid>.pem`, PKCS#8) to build the tampered and misused-but-validly-signed variants,
and its public key is taken from the JWKS it serves (what an attacker sees). Each token is sent to
ChatService/ListAgents through Envoy over native gRPC and over gRPC-web: the end result is always
UNAUTHENTICATED (gRPC-web: grpc-status 16, in the headers of Envoy's own HTTP 401 replies, or in the
HTTP 200 trailers-only replies of the router), and no URL a token names is ever contacted. The real
router is also called directly, without the edge: it refuses every case by itself too.

Which layer refuses which case (asserted, from the message of the refusal: Envoy's `jwt_authn` says
"Jwt ...", the services' `TokenVerifier` says "invalid access token"):

- the edge (Envoy `jwt_authn`) refuses everything that is not a well-formed RS256 token validly signed by
  a key of the auth service's JWKS (under the `kid` it names) with the right `iss` and `aud` and an
  `exp`/`nbf` that holds: garbage, alg none, HS256 with the public key, tampered or stripped signatures,
  unknown/injected `kid`s, the attacker's key under any header (`jku`, `x5u`, `jwk`), headers changed
  under the genuine signature (`x5c`, `crit`), expired, future `nbf`, no `exp`, wrong issuer, wrong
  audience (Envoy's 403, mapped to 401 by the edge config) and ID tokens for another audience;
- Envoy does not look at `typ`, `sub`, `iat` or the `jku` header of a validly signed token: those cases
  (`ROUTER_REFUSES`) pass the edge and the router refuses them (defence in depth, SPEC §5: every service
  verifies again).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import cast

import grpc
import httpx
import pytest
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from grpcweb import call as grpc_web_call
from joserfc.jwk import RSAKey
from jwt_attacks import Canary, attack_cases, attack_names, canary_listener
from rawgrpc import frame as raw_frame
from rawgrpc import raw_call

from auth.keys import KeyDirectory
from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

pytestmark = [pytest.mark.e2e]

ISSUER = "athenaos"
AUDIENCE = "athenaos-api"
LIST_AGENTS = "/athena.chat.v1.ChatService/ListAgents"
ROUTER_MESSAGES = {"invalid access token", "access token expired"}
ROUTER_REFUSES = {
    "jku on a validly signed token",  # Envoy ignores `jku` and checks the signature with its own JWKS
    "issued in the future",  # Envoy checks `exp` and `nbf`, not `iat`
    "no sub",
    "empty sub",
    "no typ",  # Envoy does not check `typ` (the services require "at+jwt")
    "typ JWT, otherwise valid",
}
"""Cases Envoy lets through (validly signed by the auth service's key, right issuer and audience, in date)
and the router refuses; the edge refuses every other case itself."""


@dataclass
class Mesh:
    stack: Stack
    edge: str
    victim_token: str
    victim_id: str
    signing_key: RSAKey
    public_key: RSAKey


def _wait_for_edge_jwks(admin_port: int) -> None:
    """Envoy fetches the JWKS in the background once its listener is up; wait for the first success."""
    stat = "http.edge.jwt_authn.jwks_fetch_success"
    stats = ""
    for _ in range(200):
        stats = httpx.get(f"http://127.0.0.1:{admin_port}/stats", params={"filter": f"^{stat}$"}).text
        if stats.strip() and stats.strip() != f"{stat}: 0":
            return
        time.sleep(0.05)
    raise AssertionError(f"Envoy never fetched the JWKS: {stats}")


def _header(token: str) -> dict[str, str]:
    value = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert isinstance(value, dict)
    return value


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    stack = Stack(
        StackConfig(
            data_dir=tmp_path_factory.mktemp("edge-attacks"),
            ports=ports,
            offline_delay_ms=5,
            # A request whose body never ends is refused after this long (10 s by default).
            extra_env={"AUTH_REQUEST_READ_TIMEOUT_SECONDS": "1", "ROUTER_REQUEST_READ_TIMEOUT_SECONDS": "1"},
        )
    )
    stack.start()
    try:
        _wait_for_edge_jwks(ports.envoy_admin)
        edge = f"127.0.0.1:{ports.edge}"
        with grpc.insecure_channel(edge) as channel:
            session = (
                auth_pb2_grpc.AuthServiceStub(channel)
                .DevLogin(auth_pb2.DevLoginRequest(email="edge-attack-victim@example.com"), timeout=10)
                .session
            )
        kid = _header(session.access_token)["kid"]
        keys = {key.kid: key for key in KeyDirectory(stack.data_dir / "auth-keys").load()}
        jwks = httpx.get(f"http://127.0.0.1:{ports.auth_http}/.well-known/jwks.json").json()
        public = next(RSAKey.import_key(jwk) for jwk in jwks["keys"] if jwk["kid"] == kid)
        yield Mesh(stack, edge, session.access_token, session.user.id, keys[kid].private, public)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    with canary_listener() as listener:
        yield listener


@pytest.fixture(scope="module")
def forged(mesh: Mesh, canary: Canary) -> dict[str, str]:
    return dict(
        attack_cases(
            mesh.signing_key,
            mesh.public_key,
            issuer=ISSUER,
            audience=AUDIENCE,
            canary_url=canary.url,
            genuine=mesh.victim_token,
            subject=mesh.victim_id,
        )
    )


def list_agents(address: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    """ChatService/ListAgents over native gRPC: the status code and message."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(address) as channel:
        try:
            chat_pb2_grpc.ChatServiceStub(channel).ListAgents(
                chat_pb2.ListAgentsRequest(), metadata=metadata, timeout=10
            )
        except grpc.RpcError as error:
            call = cast(grpc.Call, error)
            return call.code(), call.details() or ""
    return grpc.StatusCode.OK, ""


def layer(message: str) -> str:
    """Which layer wrote a refusal: the router's `TokenVerifier` or Envoy's `jwt_authn` ("Jwt ...")."""
    return "router" if message in ROUTER_MESSAGES else "edge"


def test_the_documented_router_cases_exist() -> None:
    assert ROUTER_REFUSES.issubset(attack_names())


def test_control_the_genuine_token_works_through_the_edge(mesh: Mesh) -> None:
    """Without this, every refusal below could come from a mesh that refuses everything."""
    with grpc.insecure_channel(mesh.edge) as channel:
        response = chat_pb2_grpc.ChatServiceStub(channel).ListAgents(
            chat_pb2.ListAgentsRequest(),
            metadata=(("authorization", f"Bearer {mesh.victim_token}"),),
            timeout=10,
        )
    assert response.agents


async def test_control_the_genuine_token_works_over_grpc_web(mesh: Mesh) -> None:
    async with httpx.AsyncClient() as client:
        result = await grpc_web_call(
            client, f"http://{mesh.edge}", LIST_AGENTS, chat_pb2.ListAgentsRequest(), token=mesh.victim_token
        )
    assert (result.http_status, result.grpc_status) == (200, 0), result.grpc_message
    assert result.decode(chat_pb2.ListAgentsResponse)[0].agents


@pytest.mark.parametrize("name", attack_names())
def test_the_edge_refuses_over_native_grpc(mesh: Mesh, forged: dict[str, str], name: str) -> None:
    code, message = list_agents(mesh.edge, forged[name])
    assert code == grpc.StatusCode.UNAUTHENTICATED, (code, message)
    expected = "router" if name in ROUTER_REFUSES else "edge"
    assert layer(message) == expected, f"{name!r} refused by the {layer(message)}: {message!r}"


@pytest.mark.parametrize("name", attack_names())
async def test_the_edge_refuses_over_grpc_web(mesh: Mesh, forged: dict[str, str], name: str) -> None:
    async with httpx.AsyncClient() as client:
        result = await grpc_web_call(
            client, f"http://{mesh.edge}", LIST_AGENTS, chat_pb2.ListAgentsRequest(), token=forged[name]
        )
    assert result.grpc_status == 16, (result.http_status, result.headers, result.trailers)
    assert not result.messages
    if name in ROUTER_REFUSES:
        # The router's reply: HTTP 200, grpc-status in the trailers (or headers of a trailers-only reply).
        assert result.http_status == 200
        assert result.grpc_message in ROUTER_MESSAGES
    else:
        # Envoy's own reply: HTTP 401 (403 for a wrong audience, mapped to 401), grpc-status in the headers.
        assert result.http_status == 401
        assert result.headers.get("grpc-status") == "16"


@pytest.mark.parametrize("name", attack_names())
def test_the_mesh_router_refuses_without_the_edge(mesh: Mesh, forged: dict[str, str], name: str) -> None:
    """Defence in depth: the real router (verifying against the auth service's JWKS over HTTP) refuses
    every case by itself too, including those the edge already stops."""
    code, message = list_agents(f"127.0.0.1:{mesh.stack.config.ports.router}", forged[name])
    # gRPC itself may refuse metadata over its 8 KiB soft limit first: RESOURCE_EXHAUSTED is right too.
    allowed = {grpc.StatusCode.UNAUTHENTICATED}
    if name == "oversized":
        allowed.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert code in allowed, (code, message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        assert message in ROUTER_MESSAGES, message


def test_no_attack_reached_the_canary_and_the_victim_still_gets_in(mesh: Mesh, canary: Canary) -> None:
    """Runs last: after every forged token above, at the edge and at the router."""
    assert canary.settle() == []
    assert list_agents(mesh.edge, mesh.victim_token) == (grpc.StatusCode.OK, "")


MALFORMED = [
    pytest.param(b"", True, "request: the call carried no request message", id="empty-body"),
    pytest.param(b"\x00\x00\x00", True, "request: the call carried no request message", id="cut-prefix"),
    pytest.param(b"\x00\x00\x00\x00\x10ab", True, "request: the call carried no request message", id="short"),
    pytest.param(
        raw_frame(b"\xff\xff\xff"),
        True,
        "request: is not a valid athena.auth.v1.ListProvidersRequest message",
        id="not-the-message",
    ),
]
LIST_PROVIDERS = "/athena.auth.v1.AuthService/ListProviders"


@pytest.mark.parametrize(("body", "end_stream", "message"), MALFORMED)
async def test_malformed_grpc_web_requests_get_a_status_through_the_edge(
    mesh: Mesh, body: bytes, end_stream: bool, message: str
) -> None:
    async with httpx.AsyncClient() as client:
        result = await grpc_web_call(client, f"http://{mesh.edge}", LIST_PROVIDERS, body, http_timeout=15)
    assert (result.grpc_status, result.grpc_message) == (3, message)


@pytest.mark.parametrize(
    ("body", "end_stream", "message"),
    [
        *MALFORMED,
        pytest.param(
            b"\x00\x00\x00\x00\x10ab",
            False,
            "request: the request message did not arrive whole within 1 seconds",
            id="body-never-ends",
        ),
    ],
)
async def test_malformed_grpc_requests_get_a_status_through_the_edge(
    mesh: Mesh, body: bytes, end_stream: bool, message: str
) -> None:
    port = int(mesh.edge.rsplit(":", 1)[1])
    answer = await raw_call(port, LIST_PROVIDERS, body, end_stream=end_stream, within=15)
    assert (answer.grpc_status, answer.grpc_message) == ("3", message)
