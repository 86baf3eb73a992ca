"""The whole mesh on loopback, in dependency order, and stopped in reverse order.

    PostgreSQL+pgvector ─┐
    Valkey ──────────────┼─> auth ─> memory ─> orchestrator ─> router ─> Envoy (the edge: Chat goes
    offline model ───────┘   ├─> integrations           to the orchestrator, ConnectionsService to
                             └─> webhooks               integrations, /webhooks/ to webhooks, every
                                                         other call to the router)

Once every part is ready, a `Supervisor` restarts any that exits unexpectedly, with kubelet-like backoff
(`devstack/supervisor.py`); `stop` tells it first, so a deliberate stop is never undone.

Used by `make run` (`python -m devstack`), the end-to-end tests and the benchmarks (`bench.chaos` kills
parts of it), so all start the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.postgres import EmbeddedPostgres
from devstack.process import ManagedProcess, StartupError, port_open
from devstack.prometheus import EmbeddedPrometheus, ScrapeTarget
from devstack.supervisor import Part, RestartPolicy, Supervisor
from devstack.valkey import EmbeddedValkey
from mesh.server import GRPC_EXPERIMENTS

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


EMULATOR_CLIENT_ID = "athena-dev"
EMULATOR_CLIENT_SECRET = "athena-dev-secret"  # noqa: S105 (the emulators' own, not a secret)


def emulated_providers(
    google: str, microsoft: str, redirect_uris: list[str], webhooks_public_url: str = ""
) -> dict[str, str]:
    """The integrations service's settings (as environment variables) for the Google and Microsoft
    emulators at these base URLs, with their client `EMULATOR_CLIENT_ID` and these redirect URIs; with
    `webhooks_public_url` (the edge's origin), subscriptions to the emulators' change notifications too."""
    client = {
        "CLIENT_ID": EMULATOR_CLIENT_ID,
        "CLIENT_SECRET": EMULATOR_CLIENT_SECRET,
        "REDIRECT_URIS": json.dumps(redirect_uris),
    }
    return {
        **{f"INTEGRATIONS_GOOGLE__{name}": value for name, value in client.items()},
        **{f"INTEGRATIONS_MICROSOFT__{name}": value for name, value in client.items()},
        "INTEGRATIONS_GOOGLE__ACCOUNTS_URL": google,
        "INTEGRATIONS_GOOGLE__OAUTH2_URL": google,
        "INTEGRATIONS_GOOGLE__CALENDAR_URL": f"{google}/calendar/v3",
        "INTEGRATIONS_GOOGLE__DRIVE_URL": f"{google}/drive/v3",
        "INTEGRATIONS_GOOGLE__HEALTH_URL": f"{google}/v4",
        "INTEGRATIONS_MICROSOFT__LOGIN_URL": microsoft,
        "INTEGRATIONS_MICROSOFT__GRAPH_URL": f"{microsoft}/v1.0",
        "INTEGRATIONS_WEBHOOKS_PUBLIC_URL": webhooks_public_url,
    }


@dataclass(frozen=True)
class Ports:
    """Loopback ports of every part (SPEC §9 defaults)."""

    edge: int = 8080
    envoy_admin: int = 9901
    router: int = 50051
    orchestrator: int = 50052
    memory: int = 50053
    auth: int = 50054
    integrations: int = 50055
    webhooks: int = 50056
    offline_model: int = 8090
    postgres: int = 5433
    valkey: int = 6380
    router_http: int = 9101
    orchestrator_http: int = 9102
    memory_http: int = 9103
    auth_http: int = 9104
    integrations_http: int = 9105
    webhooks_http: int = 9106
    google_emulator: int = 8601
    microsoft_emulator: int = 8602
    prometheus: int = 9090


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    """Everything that persists between runs: database files, signing keys, logs."""
    ports: Ports = field(default_factory=Ports)
    database_url: str | None = None
    """An external PostgreSQL (with pgvector) instead of the embedded one."""
    redis_url: str | None = None
    """An external Redis-compatible server instead of the embedded Valkey."""
    openai_api_key: str | None = None
    """A real model provider's key; without one the offline model answers."""
    openai_base_url: str | None = None
    offline_delay_ms: int = 20
    extra_env: dict[str, str] = field(default_factory=dict)
    """Additional variables for every service (tests shorten token lifetimes this way)."""
    provider_emulators: bool = False
    """Start the Google and Microsoft emulators of the tests (tests/emulators) and connect accounts there:
    connections can be tried without real provider credentials."""
    source_dir: Path = ROOT
    """The tree whose Python parts run (a checkout of another revision: `bench.ab` runs two side by side):
    they start there, so its packages are imported first; the generated contracts (gen/python), Envoy's
    configuration and the web app are this tree's."""
    prometheus: bool = False
    """Start Debian's Prometheus too, scraping every part with the SLO rules loaded (`make run PROMETHEUS=1`,
    `devstack/prometheus.py`)."""
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    """How soon a part that exits unexpectedly is restarted."""

    @classmethod
    def from_environment(cls, data_dir: Path) -> StackConfig:
        defaults = Ports()
        ports = Ports(
            **{
                name: int(os.environ.get(f"ATHENA_{name.upper()}_PORT", getattr(defaults, name)))
                for name in defaults.__dataclass_fields__
            }
        )
        return cls(
            data_dir=data_dir,
            ports=ports,
            database_url=os.environ.get("DATABASE_URL") or None,
            redis_url=os.environ.get("REDIS_URL") or None,
            openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
            openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
            offline_delay_ms=int(os.environ.get("ATHENA_OFFLINE_DELAY_MS", "20")),
            provider_emulators=os.environ.get("ATHENA_PROVIDER_EMULATORS", "").lower()
            in {"1", "true", "yes"},
            prometheus=os.environ.get("ATHENA_PROMETHEUS", "").lower() in {"1", "true", "yes"},
        )


def scrape_targets(ports: Ports) -> list[ScrapeTarget]:
    """Every part exporting metrics: the services' side ports (`/metrics`) and Envoy's admin port."""
    services = [
        ScrapeTarget(name, getattr(ports, f"{name}_http"))
        for name in ("router", "orchestrator", "memory", "auth", "integrations", "webhooks")
    ]
    return [*services, ScrapeTarget("envoy", ports.envoy_admin, "/stats/prometheus")]


def grpc_serving(port: int, service: str) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=0.5
                )
            except grpc.RpcError:
                return False
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 (loopback URL we built)
                return bool(response.status == 200)
        except OSError:
            return False

    return check


class Stack:
    """Starts every part, waits until each is healthy, and stops them all (also after a failed start)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self._postgres: EmbeddedPostgres | None = None
        self._valkey: EmbeddedValkey | None = None
        self.prometheus: EmbeddedPrometheus | None = None
        self._processes: list[ManagedProcess] = []
        self._parts: list[Part] = []
        """Every part with its readiness check, in start order (what the supervisor watches)."""
        self.supervisor = Supervisor(config.restart_policy)
        self.database_url = config.database_url or ""
        self.redis_url = config.redis_url or ""

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.edge}"

    @property
    def offline(self) -> bool:
        return self.config.openai_api_key is None

    def _service_key(self) -> str:
        """Credential of service-to-service calls that act for no user (the orchestrator's catalog sync)."""
        path = self.data_dir / "service.key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def _environment(self) -> dict[str, str]:
        p = self.config.ports
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "GRPC_EXPERIMENTS": os.environ.get("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS),
            "ATHENA_ENV": "dev",
            "ATHENA_DATA_DIR": str(self.data_dir),
            "ATHENA_SERVICE_KEY": self._service_key(),
            "ATHENA_JWKS_URL": f"http://127.0.0.1:{p.auth_http}/.well-known/jwks.json",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "ROUTER_PORT": str(p.router),
            "ROUTER_HTTP_PORT": str(p.router_http),
            "ROUTER_MEMORY_TARGET": f"127.0.0.1:{p.memory}",
            "ROUTER_AUTH_TARGET": f"127.0.0.1:{p.auth}",
            "ROUTER_INTEGRATIONS_TARGET": f"127.0.0.1:{p.integrations}",
            "ORCHESTRATOR_PORT": str(p.orchestrator),
            "ORCHESTRATOR_HTTP_PORT": str(p.orchestrator_http),
            "ORCHESTRATOR_MEMORY_TARGET": f"127.0.0.1:{p.memory}",
            "INTEGRATIONS_MEMORY_TARGET": f"127.0.0.1:{p.memory}",
            "ORCHESTRATOR_INTEGRATIONS_TARGET": f"127.0.0.1:{p.integrations}",
            "MEMORY_PORT": str(p.memory),
            "MEMORY_HTTP_PORT": str(p.memory_http),
            "AUTH_PORT": str(p.auth),
            "AUTH_HTTP_PORT": str(p.auth_http),
            "INTEGRATIONS_PORT": str(p.integrations),
            "INTEGRATIONS_HTTP_PORT": str(p.integrations_http),
            "WEBHOOKS_PORT": str(p.webhooks),
            "WEBHOOKS_HTTP_PORT": str(p.webhooks_http),
            **self.config.extra_env,
        }
        if self.config.provider_emulators:
            env.update(self._emulated_providers())
        if self.offline:
            env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{p.offline_model}/v1"
            env.pop("OPENAI_API_KEY", None)
        else:
            env["OPENAI_API_KEY"] = self.config.openai_api_key or ""
            env.setdefault("MEMORY_EMBEDDING_MODEL", "text-embedding-3-small")
            env.setdefault("MEMORY_EXTRACTION_MODEL", "gpt-4o-mini")  # fact extraction (structured output)
            if self.config.openai_base_url:
                env["OPENAI_BASE_URL"] = self.config.openai_base_url
        return env

    def _emulated_providers(self) -> dict[str, str]:
        """The integrations service's settings for the provider emulators (`provider_emulators`)."""
        p = self.config.ports
        return emulated_providers(
            f"http://127.0.0.1:{p.google_emulator}",
            f"http://127.0.0.1:{p.microsoft_emulator}",
            self._connection_redirects(),
            self.edge_url,
        )

    def _connection_redirects(self) -> list[str]:
        edge = self.config.ports.edge
        return [f"http://127.0.0.1:{edge}/connections", f"http://localhost:{edge}/connections"]

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[], bool]
    ) -> ManagedProcess:
        process = ManagedProcess(
            name=name, argv=argv, log_path=self.logs / f"{name}.log", env=env, cwd=self.config.source_dir
        )
        self._processes.append(process)
        self._parts.append(Part(name, process, ready, process.start))
        process.start()
        return process

    def _wait(self, process: ManagedProcess, ready: Callable[[], bool]) -> None:
        process.wait_ready(ready, timeout=90)
        log.info("%s ready", process.name)

    @property
    def part_names(self) -> list[str]:
        """The parts this stack runs, in start order: `postgres`, `valkey` (unless external), `offline-model`
        (without an API key), `provider-emulators` (when asked for), `auth`, `memory`, `orchestrator`,
        `router`, `integrations`, `webhooks`, `envoy`, `prometheus` (when asked for)."""
        return [part.name for part in self._parts]

    def process(self, name: str) -> ManagedProcess:
        """The running process of a part (its pid changes when the supervisor restarts it)."""
        return next(part.process for part in self._parts if part.name == name)

    def stop_part(self, name: str) -> None:
        """Stop one part on purpose, as an operator would: the supervisor leaves it down."""
        self.supervisor.stop_part(name)

    def start_part(self, name: str) -> None:
        """Start a part stopped with `stop_part` again; returns once it is ready (or could not be)."""
        self.supervisor.start_part(name)

    def start(self) -> None:
        self._parts = []
        self.supervisor = Supervisor(self.config.restart_policy)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        p = self.config.ports
        try:
            if not self.database_url:
                self._postgres = EmbeddedPostgres(
                    self.data_dir / "postgres", p.postgres, self.logs / "postgres.log"
                )
                self._postgres.start()
                self._parts.append(
                    Part("postgres", self._postgres.process, self._postgres.accepting, self._postgres.spawn)
                )
                self.database_url = self._postgres.url
            if not self.redis_url:
                self._valkey = EmbeddedValkey(
                    p.valkey, self.logs / "valkey.log", data_dir=self.data_dir / "valkey"
                )
                self._valkey.start()
                self._parts.append(
                    Part("valkey", self._valkey.process, self._valkey.accepting, self._valkey.process.start)
                )
                self.redis_url = self._valkey.url
            env = self._environment()
            python = sys.executable
            # Every service starts at once and waits for what it needs by itself (the orchestrator retries
            # its catalog sync until memory answers; tokens are checked against auth's JWKS only when a
            # call comes), so the mesh is ready as soon as its slowest part is.
            waiting: list[tuple[ManagedProcess, Callable[[], bool]]] = []
            if self.offline:
                model_env = {
                    **env,
                    "OFFLINE_MODEL_PORT": str(p.offline_model),
                    "ATHENA_OFFLINE_DELAY_MS": str(self.config.offline_delay_ms),
                }
                healthy = http_ok(f"http://127.0.0.1:{p.offline_model}/healthz")
                model = self._spawn("offline-model", [python, "-m", "offline_model"], model_env, healthy)
                waiting.append((model, healthy))
            if self.config.provider_emulators:
                emulators = [
                    python,
                    "-m",
                    "tests.emulators",
                    "--port",
                    str(p.google_emulator),
                    "--microsoft-port",
                    str(p.microsoft_emulator),
                    "--client-id",
                    EMULATOR_CLIENT_ID,
                    "--client-secret",
                    EMULATOR_CLIENT_SECRET,
                    *(arg for uri in self._connection_redirects() for arg in ("--redirect-uri", uri)),
                ]

                def both_listening() -> bool:
                    return port_open(p.google_emulator) and port_open(p.microsoft_emulator)

                waiting.append(
                    (self._spawn("provider-emulators", emulators, env, both_listening), both_listening)
                )
            for name, port, service in (
                ("auth", p.auth, "athena.auth.v1.AuthService"),
                ("memory", p.memory, "athena.memory.v1.MemoryService"),
                ("orchestrator", p.orchestrator, "athena.orchestrator.v1.OrchestratorService"),
                ("router", p.router, "athena.chat.v1.ChatService"),
                ("integrations", p.integrations, "athena.connections.v1.ConnectionsService"),
                ("webhooks", p.webhooks, ""),  # no gRPC service of its own: the server's health
            ):
                serving = grpc_serving(port, service)
                waiting.append((self._spawn(name, [python, "-m", name], env, serving), serving))
            for process, ready in waiting:
                self._wait(process, ready)
            self._start_envoy()
            if self.config.prometheus:
                self._start_prometheus()
        except BaseException:
            self.stop()
            raise
        # Supervised once all are up: a part that dies while the stack starts fails the start, with its log.
        for part in self._parts:
            self.supervisor.watch(part)

    def _start_envoy(self) -> None:
        from edge.envoy_config import EdgeConfig, render, trace_sampling_from

        p = self.config.ports
        env = self._environment()
        sampling = trace_sampling_from(env)
        config = EdgeConfig(
            listen_port=p.edge,
            admin_port=p.envoy_admin,
            router_port=p.router,
            orchestrator_port=p.orchestrator,
            auth_port=p.auth,
            auth_http_port=p.auth_http,
            integrations_port=p.integrations,
            webhooks_http_port=p.webhooks_http,
            memory_port=p.memory,
            web_root=ROOT / "edge" / "web" / "dist",
            allowed_origins=(f"http://127.0.0.1:{p.edge}", f"http://localhost:{p.edge}"),
            # The services' OTEL_* variables (ours plus `extra_env`) decide the edge's tracing too.
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            trace_sampling=1.0 if sampling is None else sampling,
        )
        if not (ROOT / "edge" / "web" / "dist" / "index.html").exists():
            log.warning("the web app is not built (make web): the edge serves a placeholder page")
        path = self.data_dir / "envoy.json"
        path.write_text(json.dumps(render(config), indent=2))
        envoy = str(Path(sys.executable).parent / "envoy")
        ready = http_ok(f"http://127.0.0.1:{p.envoy_admin}/ready")
        process = self._spawn(
            "envoy",
            [envoy, "-c", str(path), "--use-dynamic-base-id", "--log-level", "warn", "--drain-time-s", "5"],
            dict(os.environ),
            ready,
        )
        self._wait(process, ready)

    def _start_prometheus(self) -> None:
        prometheus = EmbeddedPrometheus(
            self.config.ports.prometheus,
            self.data_dir / "prometheus",
            self.logs / "prometheus.log",
            scrape_targets(self.config.ports),
        )
        prometheus.start()
        self._processes.append(prometheus.process)
        self._parts.append(Part("prometheus", prometheus.process, prometheus.ready, prometheus.spawn))
        self.prometheus = prometheus
        log.info("prometheus ready")

    def stop(self) -> None:
        """Reverse order: the edge first, so no new calls arrive while services drain. The supervisor is
        told first, so nothing stopped here is restarted."""
        self.supervisor.stop()
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None

    def describe_failure(self, error: StartupError) -> str:
        return f"{error}\n(logs in {self.logs})"
