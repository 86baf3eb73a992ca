"""Helpers for the router tests: the real mesh behind the router, all in-process on free ports.

`RouterMesh` holds the memory service (PostgreSQL + Valkey), the offline model, the auth service, any
number of orchestrators and routers, every one built by its `ServiceApp` as `python -m` builds it, all
on one Valkey (so all follow one revocation list). A `Router`'s `chat` stub calls ChatService as the
edge routes it: Chat to the orchestrators (which serve it), every other method to the router. Every
service verifies both the suite's test tokens (`make_token`) and tokens the auth service issues
(DevLogin), so a test can use cheap users or real sign-ins. Stub orchestrators (replicas that fail on
purpose) run on a bare `MeshServer`.

Imported explicitly by tests/service/test_router_*.py (not a conftest, so other suites are unaffected).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2_grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from conftest import ServiceGroup, auth_metadata, offline_model_settings, service_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from joserfc.jwk import KeySet, RSAKey
from memory_fixtures import MemoryHarness, start_memory  # type: ignore[import-not-found]

from auth.app import AUTH, JWKS_PATH, AuthDeps
from auth.settings import AuthSettings
from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from integrations.app import INTEGRATIONS, IntegrationsDeps
from integrations.settings import IntegrationsSettings
from mesh.app import Deps, RunningService
from mesh.context import time_remaining
from mesh.errors import Unavailable
from mesh.server import MeshServer, Service
from mesh.tokens import KeySource, RemoteJwks, StaticKeySource, TokenVerifier
from offline_model.server import OfflineModelServer
from orchestrator.app import CHAT_SERVICE, ORCHESTRATOR, OrchestratorDeps, model_api, openai_model
from orchestrator.model import ChatModel, ModelEvent, ModelRequest
from orchestrator.service import ChatServicer
from orchestrator.settings import OrchestratorSettings
from router.app import ROUTER
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
            with contextlib.suppress(Unavailable):
                keys.extend((await source.key_set(kid)).keys)
        return KeySet(keys)


class CountingModel(ChatModel):
    """The orchestrator's real model, counting its calls and recording the deadline each one ran under."""

    def __init__(self, inner: ChatModel) -> None:
        self._inner = inner
        self.runs = 0
        self.active = 0
        self.time_remaining: list[float | None] = []

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self.runs += 1
        self.active += 1
        self.time_remaining.append(time_remaining())
        try:
            async for event in self._inner.stream(request):
                yield event
        finally:
            self.active -= 1


@dataclass
class Orchestrator:
    server: MeshServer
    servicer: Any
    """A `CountingModel` for real orchestrators, the stub servicer otherwise."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


class EdgeChat(chat_pb2_grpc.ChatServiceStub):
    """ChatService as the edge routes it: Chat to the orchestrator pool, every other method to the router."""

    def __init__(self, router: grpc.aio.Channel, orchestrators: grpc.aio.Channel) -> None:
        super().__init__(router)
        self.Chat = chat_pb2_grpc.ChatServiceStub(orchestrators).Chat


@dataclass
class Router:
    server: MeshServer
    client: grpc.aio.Channel
    orchestrators: grpc.aio.Channel
    """The orchestrator pool, round robin: where the edge sends Chat."""

    @property
    def chat(self) -> chat_pb2_grpc.ChatServiceAsyncStub:
        return EdgeChat(self.client, self.orchestrators)  # type: ignore[return-value]

    @property
    def account(self) -> account_pb2_grpc.AccountServiceAsyncStub:
        return account_pb2_grpc.AccountServiceStub(self.client)

    async def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.client)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


def started_event(conversation_id: str = "c1") -> chat_pb2.ChatResponse:
    return chat_pb2.ChatResponse(
        conversation_started=chat_pb2.ConversationStarted(conversation_id=conversation_id, agent_id="athena")
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


class StubOrchestrator:
    """A replica serving Chat from a shared `Plan`, recording what happened to each turn."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.outcomes: list[str] = []
        self.deadlines: list[float | None] = []
        """Seconds left of each call's deadline when it arrived."""

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        self.deadlines.append(time_remaining())
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
        yield chat_pb2.ChatResponse(text_delta=chat_pb2.TextDelta(text="fine", agent_id="athena"))


def pool_target(orchestrators: Sequence[Orchestrator]) -> str:
    """One gRPC target resolving to every orchestrator, as a headless Service would."""
    return "ipv4:" + ",".join(orchestrator.address for orchestrator in orchestrators)


@dataclass
class RouterMesh:
    memory: MemoryHarness
    model: OfflineModelServer
    auth_service: RunningService
    integrations: RunningService
    auth_channel: grpc.aio.Channel
    verifier: TokenVerifier
    make_token: Callable[..., str]
    redis_url: str
    base: Path
    services: ServiceGroup
    stubs: list[MeshServer] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

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

    async def start_orchestrator(
        self, deps: OrchestratorDeps | None = None, **overrides: Any
    ) -> Orchestrator:
        """A real orchestrator on the offline model, counting its model calls."""
        settings = OrchestratorSettings(
            **service_settings(
                self.base,
                memory_target=f"127.0.0.1:{self.memory.port}",
                OPENAI_BASE_URL=self.model.base_url,
                OPENAI_API_KEY=None,
                ATHENA_SERVICE_KEY=SERVICE_KEY,
                **{"redis_url": self.redis_url, **overrides},
            )
        )
        deps = deps or OrchestratorDeps()
        deps.verifier = self.verifier
        counting = CountingModel(openai_model(settings, model_api(settings, deps)))
        deps.model = counting
        running = await self.services.start(ORCHESTRATOR, settings, deps)
        return Orchestrator(running.server, counting)

    async def serve_orchestrator(self, servicer: StubOrchestrator) -> Orchestrator:
        """A stub orchestrator: a bare server around `servicer`."""
        settings = OrchestratorSettings(**service_settings(self.base))
        service = Service(CHAT_SERVICE, servicer, ChatServicer.add_to_server)
        server = MeshServer("orchestrator", settings, [service], verifier=self.verifier)
        await server.start()
        self.stubs.append(server)
        return Orchestrator(server, servicer)

    async def start_router(
        self, orchestrators: Sequence[Orchestrator] | str, deps: Deps | None = None, **overrides: Any
    ) -> Router:
        """A router, with the orchestrators where its `chat` stub sends Chat (as the edge would)."""
        target = orchestrators if isinstance(orchestrators, str) else pool_target(orchestrators)
        settings = RouterSettings(
            **service_settings(
                self.base,
                memory_target=f"127.0.0.1:{self.memory.port}",
                auth_target=f"127.0.0.1:{self.auth_service.port}",
                integrations_target=f"127.0.0.1:{self.integrations.port}",
                **{"redis_url": self.redis_url, **overrides},
            )
        )
        deps = deps or Deps()
        deps.verifier = self.verifier
        running = await self.services.start(ROUTER, settings, deps)
        client = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        pool = grpc.aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
        self.channels.extend((client, pool))
        return Router(running.server, client, pool)

    async def close(self) -> None:
        for open_channel in self.channels:
            await open_channel.close(grace=None)
        await self.services.stop()
        for stub in self.stubs:
            await stub.drain()


async def open_router_mesh(
    postgres_url: str,
    redis_url: str,
    make_token: Callable[..., str],
    signing_keys: KeySet,
    base: Path,
    kms_keys_dir: Path,
) -> RouterMesh:
    """Starts auth, memory, integrations and the offline model; the caller closes the mesh."""
    services = ServiceGroup()
    auth_settings = AuthSettings(
        **service_settings(
            base / "auth",
            env="dev",
            database_url=postgres_url,
            kms_keys_dir=kms_keys_dir,
            redis_url=redis_url,
        )
    )
    auth_service = await services.start(AUTH, auth_settings, AuthDeps())
    auth_jwks = RemoteJwks(f"http://127.0.0.1:{auth_service.http_port}{JWKS_PATH}")
    verifier = TokenVerifier(
        MergedKeys(StaticKeySource(signing_keys), auth_jwks), issuer=ISSUER, audience=AUDIENCE
    )
    auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{auth_service.port}")
    memory = await start_memory(
        services.start, verifier, make_token, base, postgres_url, redis_url, ATHENA_SERVICE_KEY=SERVICE_KEY
    )
    integrations_settings = IntegrationsSettings(
        **service_settings(
            base / "integrations", database_url=postgres_url, kms_keys_dir=kms_keys_dir, redis_url=redis_url
        )
    )
    integrations = await services.start(
        INTEGRATIONS, integrations_settings, IntegrationsDeps(verifier=verifier)
    )
    model = OfflineModelServer(offline_model_settings())
    await model.start()
    return RouterMesh(
        memory,
        model,
        auth_service,
        integrations,
        auth_channel,
        verifier,
        make_token,
        redis_url,
        base,
        services,
    )


@pytest_asyncio.fixture(scope="module")
async def mesh(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    make_token: Callable[..., str],
    signing_key: RSAKey,
    kms_keys_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RouterMesh]:
    """Memory, offline model and auth for one test module (a module imports this fixture to use it);
    orchestrators and routers start on demand."""
    base = tmp_path_factory.mktemp("router")
    harness = await open_router_mesh(
        postgres.url, valkey.url, make_token, public_keys(signing_key), base, kms_keys_dir
    )
    try:
        yield harness
    finally:
        await harness.close()
        await harness.auth_channel.close(grace=None)
        await harness.model.stop()


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
