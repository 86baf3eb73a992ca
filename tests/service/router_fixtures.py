"""Helpers for the router tests: the real mesh behind the router, all in-process on free ports.

`RouterMesh` holds the memory service (PostgreSQL + Valkey), the offline model, the auth service, any
number of orchestrators and routers. Every server verifies both the suite's test tokens (`make_token`) and
tokens the auth service issues (DevLogin), so a test can use cheap users or real sign-ins.

Imported explicitly by tests/service/test_router_*.py (not a conftest, so other suites are unaffected).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from athena.account.v1 import account_pb2_grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from conftest import auth_metadata, service_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from joserfc.jwk import KeySet, RSAKey
from memory_fixtures import MemoryHarness, start_memory, stop_memory  # type: ignore[import-not-found]

from auth.migrate import apply_migrations as apply_auth_migrations
from auth.postgres import PostgresAuthStore
from auth.server import AuthApp, build_app, provider_http_client
from auth.servicer import PUBLIC_METHODS
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.clients import channel
from mesh.errors import Unavailable
from mesh.interceptors import SERVICE_KEY_HEADER
from mesh.server import MeshServer, Service
from mesh.tokens import KeySource, StaticKeySource, TokenVerifier
from orchestrator.app import build_runner
from orchestrator.catalog import Catalog, CatalogSync
from orchestrator.memory_client import GrpcMemoryGateway
from offline_model.server import OfflineModelServer
from offline_model.settings import OfflineModelSettings
from orchestrator.service import SERVICE_NAME as ORCHESTRATOR_SERVICE
from orchestrator.service import OrchestratorServicer
from orchestrator.settings import OrchestratorSettings
from orchestrator.turn import TurnRunner
from router.__main__ import build_server
from router.peers import Peers
from router.settings import RouterSettings

SERVICE_KEY = "router-tests-service-key"
ISSUER = "athenaos"
AUDIENCE = "athenaos-api"

Metadata = tuple[tuple[str, str], ...]


class MergedKeys:
    """Keys of several sources: the suite's test key and the auth service's keys."""

    def __init__(self, *sources: KeySource) -> None:
        self._sources = sources

    async def key_set(self, kid: str) -> KeySet:
        keys = []
        for source in self._sources:
            keys.extend((await source.key_set(kid)).keys)
        return KeySet(keys)


class CountingOrchestrator(OrchestratorServicer):
    """The real servicer, counting its Run calls and recording the deadline each one arrived with."""

    def __init__(self, runner: TurnRunner) -> None:
        super().__init__(runner)
        self.runs = 0
        self.active = 0
        self.time_remaining: list[float | None] = []

    async def Run(
        self, request: orchestrator_pb2.RunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[orchestrator_pb2.RunResponse]:
        self.runs += 1
        self.active += 1
        self.time_remaining.append(context.time_remaining())
        try:
            async for response in super().Run(request, context):
                yield response
        finally:
            self.active -= 1


@dataclass
class Orchestrator:
    server: MeshServer
    servicer: Any
    """A `CountingOrchestrator` for real orchestrators, the stub itself otherwise."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@dataclass
class Router:
    server: MeshServer
    peers: Peers
    client: grpc.aio.Channel

    @property
    def chat(self) -> chat_pb2_grpc.ChatServiceAsyncStub:
        return chat_pb2_grpc.ChatServiceStub(self.client)

    @property
    def account(self) -> account_pb2_grpc.AccountServiceAsyncStub:
        return account_pb2_grpc.AccountServiceStub(self.client)

    async def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.client)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


def started_event(conversation_id: str = "c1") -> orchestrator_pb2.RunResponse:
    return orchestrator_pb2.RunResponse(
        event=chat_pb2.ChatResponse(
            conversation_started=chat_pb2.ConversationStarted(
                conversation_id=conversation_id, agent_id="athena"
            )
        )
    )


@dataclass
class Plan:
    """What the stub replicas do next, shared by all of them."""

    fail_before_first: int = 0
    """How many of the next runs fail UNAVAILABLE before their first event."""
    fail_after_first: int = 0
    """How many of the next runs fail UNAVAILABLE after their first event."""
    cancel_after_first: int = 0
    """How many of the next runs end CANCELLED (the replica's own doing) after their first event."""
    hold: bool = False
    """Whether runs wait after their first event until cancelled."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class StubOrchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """A replica answering from a shared `Plan`, recording what happened to each run."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.outcomes: list[str] = []

    async def Run(
        self, request: orchestrator_pb2.RunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[orchestrator_pb2.RunResponse]:
        plan = self.plan
        if plan.fail_before_first:
            plan.fail_before_first -= 1
            self.outcomes.append("failed before first event")
            raise Unavailable("replica overloaded")
        yield started_event()
        if plan.fail_after_first:
            plan.fail_after_first -= 1
            self.outcomes.append("failed after first event")
            raise Unavailable("replica lost its model")
        if plan.cancel_after_first:
            plan.cancel_after_first -= 1
            self.outcomes.append("cancelled by the replica")
            await context.abort(grpc.StatusCode.CANCELLED, "a call of the replica was cancelled")
        if plan.hold:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.outcomes.append("cancelled")
                plan.cancelled.set()
                raise
        self.outcomes.append("completed")
        yield orchestrator_pb2.RunResponse(
            event=chat_pb2.ChatResponse(text_delta=chat_pb2.TextDelta(text="fine", agent_id="athena"))
        )


def pool_target(orchestrators: Sequence[Orchestrator]) -> str:
    """One gRPC target resolving to every orchestrator, as a headless Service would."""
    return "ipv4:" + ",".join(orchestrator.address for orchestrator in orchestrators)


@dataclass
class RouterMesh:
    memory: MemoryHarness
    model: OfflineModelServer
    auth_app: AuthApp
    auth_server: MeshServer
    auth_channel: grpc.aio.Channel
    verifier: TokenVerifier
    make_token: Callable[..., str]
    redis_url: str
    base: Path
    servers: list[MeshServer] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    runners: list[TurnRunner] = field(default_factory=list)
    peers: list[Peers] = field(default_factory=list)

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        return auth_pb2_grpc.AuthServiceStub(self.auth_channel)

    def user(self) -> tuple[str, Metadata]:
        """A fresh user (a test token, no sign-in) and the metadata carrying its token."""
        user_id = str(uuid.uuid4())
        return user_id, auth_metadata(self.make_token(user_id))

    async def sign_in(self, email: str | None = None) -> auth_pb2.Session:
        """A real DevLogin session of the auth service."""
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        response = await self.auth.DevLogin(auth_pb2.DevLoginRequest(email=email, display_name="Test"))
        session: auth_pb2.Session = response.session
        return session

    async def start_server(
        self, name: str, settings: Any, services: list[Service], **kwargs: Any
    ) -> MeshServer:
        server = MeshServer(name, settings, services, verifier=self.verifier, **kwargs)
        await server.start()
        self.servers.append(server)
        return server

    async def start_orchestrator(self, **overrides: Any) -> Orchestrator:
        """A real orchestrator on the offline model, counting its runs."""
        settings = OrchestratorSettings(
            **service_settings(
                self.base,
                memory_target=f"127.0.0.1:{self.memory.server.port}",
                OPENAI_BASE_URL=self.model.base_url,
                OPENAI_API_KEY=None,
                **overrides,
            )
        )
        gateway_channel = channel(settings.memory_target)
        self.channels.append(gateway_channel)
        runner = build_runner(settings, GrpcMemoryGateway(gateway_channel))
        self.runners.append(runner)
        servicer = CountingOrchestrator(runner)
        return await self.serve_orchestrator(servicer, settings)

    async def serve_orchestrator(
        self, servicer: orchestrator_pb2_grpc.OrchestratorServiceServicer, settings: Any = None
    ) -> Orchestrator:
        """An orchestrator server around any servicer (stubs included)."""
        settings = settings or OrchestratorSettings(**service_settings(self.base))
        service = Service(
            ORCHESTRATOR_SERVICE, servicer, orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server
        )
        server = await self.start_server("orchestrator", settings, [service])
        return Orchestrator(server, servicer)

    async def start_router(self, orchestrators: Sequence[Orchestrator] | str, **overrides: Any) -> Router:
        target = orchestrators if isinstance(orchestrators, str) else pool_target(orchestrators)
        overrides.setdefault("redis_url", self.redis_url)
        settings = RouterSettings(
            **service_settings(
                self.base,
                orchestrator_target=target,
                memory_target=f"127.0.0.1:{self.memory.server.port}",
                auth_target=f"127.0.0.1:{self.auth_server.port}",
                **overrides,
            )
        )
        peers = Peers.connect(settings)
        self.peers.append(peers)
        server = build_server(settings, peers, self.verifier)
        await server.start()
        self.servers.append(server)
        client = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        self.channels.append(client)
        return Router(server, peers, client)

    async def close(self) -> None:
        for server in reversed(self.servers):
            await server.drain()
        for runner in self.runners:
            await runner.wait_background()
        for peers in self.peers:
            await peers.close()
        for open_channel in self.channels:
            await open_channel.close(grace=None)


async def open_router_mesh(
    postgres_url: str, redis_url: str, make_token: Callable[..., str], signing_keys: KeySet, base: Path
) -> tuple[RouterMesh, Callable[[], Any]]:
    """Starts memory, the offline model and auth; returns the mesh and what closes them."""
    await asyncio.to_thread(apply_auth_migrations, postgres_url)
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=5)
    auth_settings = AuthSettings(**service_settings(base / "auth", env="dev", database_url="unused"))
    http = provider_http_client(auth_settings)
    auth_app = build_app(auth_settings, PostgresAuthStore(pool), http)
    verifier = TokenVerifier(
        MergedKeys(StaticKeySource(signing_keys), auth_app.keys.verifier_keys),
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    auth_server = MeshServer(
        "auth",
        auth_settings,
        auth_app.services(),
        verifier=verifier,
        public_methods=PUBLIC_METHODS,
        http_routes=auth_app.http_routes(),
    )
    await auth_server.start()
    auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}")

    started: list[MeshServer] = []

    async def start_server(
        name: str, settings: Any, services: Any, verifier: Any, **kwargs: Any
    ) -> MeshServer:
        server = MeshServer(name, settings, services, verifier=verifier, **kwargs)
        await server.start()
        started.append(server)
        return server

    memory = await start_memory(
        start_server, verifier, make_token, base, postgres_url, redis_url, ATHENA_SERVICE_KEY=SERVICE_KEY
    )
    model = OfflineModelServer(OfflineModelSettings(port=0, delay_ms=0, embedding_dimensions=384))
    await model.start()
    sync_channel = channel(f"127.0.0.1:{memory.server.port}")
    credentials = (*auth_metadata(make_token()), (SERVICE_KEY_HEADER, SERVICE_KEY))
    await CatalogSync(GrpcMemoryGateway(sync_channel), Catalog.load(), metadata=credentials, attempts=3).run()
    await sync_channel.close(grace=None)
    mesh = RouterMesh(
        memory, model, auth_app, auth_server, auth_channel, verifier, make_token, redis_url, base
    )

    async def close() -> None:
        await mesh.close()
        await model.stop()
        await stop_memory(memory)
        await auth_channel.close(grace=None)
        await auth_server.drain()
        await http.aclose()
        await pool.close()

    return mesh, close


@contextlib.asynccontextmanager
async def router_mesh(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    make_token: Callable[..., str],
    signing_key: RSAKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RouterMesh]:
    """Memory, offline model and auth (for one test module); orchestrators and routers start on demand."""
    base = tmp_path_factory.mktemp("router")
    keys = public_keys(signing_key)
    harness, close = await open_router_mesh(postgres.url, valkey.url, make_token, keys, base)
    try:
        yield harness
    finally:
        await close()


def public_keys(signing_key: RSAKey) -> KeySet:
    return KeySet([RSAKey.import_key(signing_key.as_dict(private=False))])


async def chat(
    stub: chat_pb2_grpc.ChatServiceAsyncStub,
    metadata: Metadata,
    text: str,
    *,
    agent_id: str = "athena",
    conversation_id: str = "",
    client_request_id: str = "",
    deadline: float = 20.0,
) -> list[chat_pb2.ChatResponse]:
    request = chat_pb2.ChatRequest(
        agent_id=agent_id, conversation_id=conversation_id, text=text, client_request_id=client_request_id
    )
    return [event async for event in stub.Chat(request, metadata=metadata, timeout=deadline)]


def answer(events: Sequence[chat_pb2.ChatResponse]) -> str:
    return "".join(event.text_delta.text for event in events if event.HasField("text_delta"))


async def expect_status(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits `call` (a unary call or a coroutine); returns its error, failing unless it ended with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value


async def expect_stream_status(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Reads the streaming `call` to its end and returns its error, failing unless it ended with `code`."""

    async def drain() -> None:
        async for _ in call:
            pass

    return await expect_status(drain(), code)
