"""How every service is assembled and run: one way for `python -m <service>`, `make run` and the tests.

A service declares a `ServiceApp`: its settings class, its `Deps` class and an async `build(settings,
deps)` that returns an `Assembly` (gRPC services, readiness check, background tasks, HTTP routes, which
methods need no token). The runtime does the rest, the same way everywhere:

    main(app)            `python -m <service> [command]`: settings from the environment, JSON logs,
                         tracing, then `serve` (or one of the app's operator commands)
    serve(app, settings) start, wait for SIGTERM/SIGINT, stop
    start(app, settings, deps) → RunningService    build + MeshServer + background tasks (tests use this)
    RunningService.stop()  health NOT_SERVING, calls drain, background tasks end, resources close

`Deps` carries what a service is built from besides its settings: the token verifier, the clock, and the
resources it opens (`channel`, `postgres`, `redis`, `model_api`, `http_client`, `revocation_feed`), each
closed when the service stops, in reverse order of opening. A service subclasses it to let tests replace an
adapter (a limit store, a model, a memory gateway); a field left unset means "the production one, built
from settings".

Every service follows the access-token revocation list (`mesh.revocation_feed`, at the deployment's
`REDIS_URL`): `start` loads it before the server takes its first call (unless Redis cannot be reached) and
a background task keeps the verifier's copy current, so a revoked token is refused everywhere within a
second while no call waits on Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import httpx
import uvloop
from aiohttp import web

from mesh import postgres, redis
from mesh.clients import channel as open_channel
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.collection import collect_as_a_server, freeze_startup
from mesh.model_api import ModelApi, client_session, wait_closed
from mesh.quiet import Quiet
from mesh.revocation_feed import RedisRevocationFeed
from mesh.server import MeshServer, ReadinessCheck, Service
from mesh.settings import ServiceSettings
from mesh.telemetry import configure_logging, configure_tracing
from mesh.tokens import RemoteJwks, TokenVerifier

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)
D = TypeVar("D", bound="Deps")

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]
"""Work that runs for as long as the service serves (maintenance loops); cancelled when it stops."""

REVOCATION_REDIS_TIMEOUT_SECONDS = 2.0
"""Connects and commands of the revocation feed's client give up after this long: longer than one
blocking read of the stream (`RedisRevocationFeed`, half a second), short enough to notice a lost server."""


@dataclass(frozen=True)
class Assembly:
    """What a service's `build` returns: everything the runtime serves for it."""

    services: Sequence[Service]
    """The gRPC services, each registered with health (per service name) and reflection."""
    readiness: ReadinessCheck | None = None
    """Polled while serving; False flips health to NOT_SERVING until it is True again."""
    background: Sequence[BackgroundTask] = ()
    """Started once the server serves, cancelled when it stops."""
    http_routes: Sequence[web.RouteDef] = ()
    """Routes of the HTTP side port besides `/metrics` (auth's JWKS)."""
    public_methods: Sequence[str] = ()
    """Full method names callable without an access token (login RPCs)."""
    service_methods: Sequence[str] = ()
    """Full method names called for no user, with the deployment's service key instead of a token."""
    edge_reflection_services: Sequence[str] = ()
    """What reflection lists when asked through the edge (the router: the public API)."""
    verifier: TokenVerifier | None = None
    """The service's own verifier (auth verifies with its own keys); None: the one of `Deps`."""


@dataclass(kw_only=True)
class Deps:
    """What a service is built from besides its settings, and the resources it opened."""

    verifier: TokenVerifier | None = None
    """Verifies access tokens; None: the auth service's JWKS at `settings.jwks_url`."""
    clock: Clock = SYSTEM_CLOCK
    """Wall-clock time for everything that decides by it (rate-limit windows, token expiry)."""
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    """Closes what was opened through these helpers when the service stops, last opened first."""
    quiet: Quiet = field(default_factory=Quiet)
    """Whether the server is serving a call: background work waits for the gaps (`mesh.quiet`)."""
    _revocation_feed: RedisRevocationFeed | None = field(default=None, init=False, repr=False)

    def channel(self, target: str) -> grpc.aio.Channel:
        """A channel to a peer service (`mesh.clients.channel`), closed on stop."""
        peer = open_channel(target)
        self.on_close(lambda: peer.close(grace=None))
        return peer

    async def postgres(self, database_url: str, **options: Any) -> postgres.Pool:
        """An asyncpg pool (`mesh.postgres.open_pool` options), closed on stop."""
        pool = await postgres.open_pool(database_url, **options)
        self.on_close(lambda: postgres.close_pool(pool))
        return pool

    def redis(self, url: str, timeout: float) -> redis.Redis:
        """A fail-fast client of the Redis-compatible server (`mesh.redis.connect`), closed on stop."""
        client = redis.connect(url, timeout)
        self.on_close(client.aclose)
        return client

    def revocation_feed(self, settings: ServiceSettings) -> RedisRevocationFeed:
        """The revocation list at `settings.redis_url`: the runtime follows it, auth writes to it. One per
        service, opened on first use, closed on stop."""
        if self._revocation_feed is None:
            client = self.redis(settings.redis_url, REVOCATION_REDIS_TIMEOUT_SECONDS)
            self._revocation_feed = RedisRevocationFeed(client)
        return self._revocation_feed

    def model_api(self, base_url: str, api_key: str) -> ModelApi:
        """An OpenAI-compatible API (`mesh.model_api`) whose connections close when the service stops.
        No retries of its own: callers retry where it is safe, within their deadline."""
        session = client_session()
        self.on_close(lambda: wait_closed(session))
        return ModelApi(base_url, api_key, session)

    def http_client(self, timeout: float) -> httpx.AsyncClient:
        """An HTTP client for third-party APIs (no redirects followed), closed on stop."""
        client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self.on_close(client.aclose)
        return client

    def on_close(self, close: Callable[[], Awaitable[Any]]) -> None:
        """Runs `close` when the service stops (before what was registered earlier)."""
        self.resources.push_async_callback(close)


@dataclass(frozen=True)
class Command(Generic[S]):
    """An operator command of `python -m <service>` besides `serve` (`memory migrate`)."""

    help: str
    run: Callable[[S], int]
    """Runs with the settings; returns the exit status."""


@dataclass(frozen=True)
class ServiceApp(Generic[S, D]):
    """A service, as the runtime knows it."""

    name: str
    """Short name: logs, metrics and tracing say it ("router", "memory")."""
    description: str
    """One paragraph for `--help`."""
    settings: Callable[[], S]
    """Reads the settings from the environment (the settings class)."""
    deps: Callable[[], D]
    """Production dependencies (the deps class, every field at its default)."""
    build: Callable[[S, D], Awaitable[Assembly]]
    commands: Mapping[str, Command[S]] = field(default_factory=dict)


@dataclass
class RunningService:
    """A started service: its server, its background tasks, and what stopping it closes."""

    server: MeshServer
    deps: Deps
    tasks: list[asyncio.Task[None]]
    _stopped: bool = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int:
        return self.server.http.port

    @property
    def verifier(self) -> TokenVerifier:
        """The verifier the server checks tokens with."""
        return self.server.verifier

    async def stop(self) -> None:
        """Drain (NOT_SERVING first, then in-flight calls finish), end background work, close resources.
        Stopping twice is stopping once."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await self.server.drain()
        finally:
            for task in self.tasks:
                task.cancel()
            await _stopped(self.tasks)
            await self.deps.resources.aclose()


def default_verifier(settings: ServiceSettings) -> TokenVerifier:
    """Access tokens checked against the auth service's JWKS."""
    return TokenVerifier(
        RemoteJwks(settings.jwks_url), issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )


async def start(app: ServiceApp[S, D], settings: S, deps: D | None = None) -> RunningService:
    """Builds and starts `app` in this event loop; the caller stops it. Nothing leaks if it fails."""
    deps = deps if deps is not None else app.deps()
    try:
        assembly = await app.build(settings, deps)
        verifier = assembly.verifier or deps.verifier or default_verifier(settings)
        revocations = deps.revocation_feed(settings)
        loaded = await revocations.load_once(verifier.revocations)
        server = MeshServer(
            app.name,
            settings,
            assembly.services,
            verifier=verifier,
            public_methods=assembly.public_methods,
            service_methods=assembly.service_methods,
            http_routes=assembly.http_routes,
            edge_reflection_services=assembly.edge_reflection_services,
            readiness=assembly.readiness,
            quiet=deps.quiet,
        )
        await server.start()
    except BaseException:
        await deps.resources.aclose()
        raise

    async def follow_revocations() -> None:
        await revocations.follow(verifier.revocations, reachable=loaded)

    tasks = [
        asyncio.create_task(_supervised(work), name=f"{app.name}-{getattr(work, '__name__', 'task')}")
        for work in (*assembly.background, follow_revocations)
    ]
    log.info("serving", extra={"port": server.port, "http_port": server.http.port})
    return RunningService(server, deps, tasks)


TASK_STOP_SECONDS = 10.0
"""How long stopping waits for a cancelled background task (a blocking Redis read ends within its block)."""


async def _stopped(tasks: Sequence[asyncio.Task[None]], within: float = TASK_STOP_SECONDS) -> None:
    """Waits for cancelled `tasks` to end, at most `within` seconds: one that swallowed its cancellation
    (redis-py may, in a blocked read: `mesh.redis.cancelling`) is logged with where it waits, and left, so
    that stopping goes on to close the connections it holds."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within)
    for task in pending:
        where = "".join(f"{frame.f_code.co_filename}:{frame.f_lineno} " for frame in task.get_stack(limit=8))
        log.error(
            "a background task did not stop when cancelled", extra={"task": task.get_name(), "at": where}
        )


async def _supervised(work: BackgroundTask) -> None:
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except Exception:  # a background loop must never die silently
        log.exception("background task stopped", extra={"task": getattr(work, "__name__", "")})


async def serve(app: ServiceApp[S, D], settings: S) -> None:
    """Runs `app` until SIGTERM or SIGINT, then stops it (see `RunningService.stop`)."""
    collect_as_a_server()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        running = await start(app, settings)
        freeze_startup()
        try:
            await stopping.wait()
        finally:
            await running.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def main(app: ServiceApp[S, D], argv: Sequence[str] | None = None) -> None:
    """`python -m <service> [serve | <command>]`: settings from the environment, then run. Exits."""
    parser = _parser(app)
    arguments = parser.parse_args(argv)
    settings = app.settings()
    configure_logging(app.name, settings.log_level)
    command = arguments.command or "serve"
    if command == "serve":
        configure_tracing(
            app.name, settings.otlp_endpoint, capture_message_content=settings.genai_capture_message_content
        )
        uvloop.run(serve(app, settings))
        sys.exit(0)
    sys.exit(app.commands[command].run(settings))


def _parser(app: ServiceApp[Any, Any]) -> argparse.ArgumentParser:
    settings_type = app.settings if isinstance(app.settings, type) else None
    parser = argparse.ArgumentParser(
        prog=f"python -m {app.name}",
        description=app.description,
        epilog=_environment_help(settings_type) if settings_type is not None else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve gRPC until SIGTERM (the default)")
    for name, command in app.commands.items():
        commands.add_parser(name, help=command.help)
    return parser


def _environment_help(settings_type: type[ServiceSettings]) -> str:
    """The environment variables the settings read, with the first line of each field's docstring."""
    prefix = str(settings_type.model_config.get("env_prefix", "")).upper()
    lines = []
    for name, spec in settings_type.model_fields.items():
        choices = getattr(spec.validation_alias, "choices", None)
        variables = " / ".join(str(choice) for choice in choices) if choices else f"{prefix}{name.upper()}"
        summary = (spec.description or "").strip().splitlines()
        lines.append(f"  {variables}: {summary[0] if summary else ''}")
    return "environment:\n" + "\n".join(lines)
