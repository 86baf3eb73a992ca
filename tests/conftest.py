"""Fixtures shared by the whole suite: real PostgreSQL and Valkey, signed test tokens, in-process servers."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from devstack.postgres import EmbeddedPostgres
from devstack.process import free_port
from devstack.valkey import EmbeddedValkey
from mesh.app import Deps, RunningService, ServiceApp, start
from mesh.server import MeshServer, Service
from mesh.settings import ServiceSettings
from mesh.tokens import StaticKeySource, TokenVerifier
from offline_model.settings import OfflineModelSettings

ISSUER = "athenaos"
AUDIENCE = "athenaos-api"
WEB = Path(__file__).resolve().parents[1] / "edge" / "web"


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built web app (edge/web/dist, what `make web` builds), built here when missing or older than its
    sources."""
    dist = WEB / "dist"
    sources = [
        WEB / "build.mjs",
        WEB / "icons.mjs",
        WEB / "build-files.json",
        *(p for p in (WEB / "src").rglob("*") if p.is_file()),
    ]
    bundle = dist / "app.js"
    stale = not bundle.exists() or max(p.stat().st_mtime for p in sources) > bundle.stat().st_mtime
    if stale:
        node = shutil.which("node")
        assert node is not None, "building edge/web needs Node.js (or run `make web` first)"
        subprocess.run([node, "build.mjs"], cwd=WEB, check=True, timeout=120)
    assert (dist / "index.html").is_file()
    return dist


@contextlib.contextmanager
def running_postgres(base: Path) -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL (with pgvector) with its files under `base`, on a free port, stopped at the end."""
    server = EmbeddedPostgres(base / "data", free_port(), base / "postgres.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_valkey(base: Path) -> Iterator[EmbeddedValkey]:
    """A real Valkey logging and keeping its append-only file under `base`, on a free port, stopped at the
    end."""
    server = EmbeddedValkey(free_port(), base / "valkey.log", data_dir=base / "valkey-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One real PostgreSQL (with pgvector) for the session; tests use their own users and never collide.
    Tests that stop their database use one of their own (`running_postgres`)."""
    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="session")
def kms_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local KMS's key directory of the deployment `postgres` serves (empty until a dev start makes a
    key): services sharing a database share its KMS, as auth's replicas share the index key it wraps."""
    return tmp_path_factory.mktemp("kms-keys")


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with running_valkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture(scope="session")
def signing_key() -> RSAKey:
    return RSAKey.generate_key(
        2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"}, private=True
    )


@pytest.fixture(scope="session")
def verifier(signing_key: RSAKey) -> TokenVerifier:
    public = KeySet([RSAKey.import_key(signing_key.as_dict(private=False))])
    return TokenVerifier(StaticKeySource(public), issuer=ISSUER, audience=AUDIENCE)


TokenFactory = Callable[..., str]


@pytest.fixture(scope="session")
def make_token(signing_key: RSAKey) -> TokenFactory:
    """Signs an access token like the auth service does; keyword arguments override claims."""

    def make(user_id: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id or str(uuid.uuid4()),
            "iat": now,
            "exp": now + 900,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode({"alg": "RS256", "kid": "test-key", "typ": "at+jwt"}, payload, signing_key)

    return make


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


NO_REDIS = "redis://127.0.0.1:1/0"
"""A Redis nobody serves (connections are refused at once): a test server's, unless the test names a real
Valkey as `redis_url`. Its revocation list then stays empty, and it never reaches a server it was not
given."""


def service_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments every test server's settings need: free ports, quick drain, a private data dir,
    no Redis unless the test names one."""
    return {
        "port": 0,
        "http_port": 0,
        "drain_seconds": 1.0,
        "data_dir": tmp_path,
        "redis_url": NO_REDIS,
        **overrides,
    }


StartService = Callable[[ServiceApp[Any, Any], ServiceSettings, Deps], Awaitable[RunningService]]


class ServiceGroup:
    """Services started in-process through `mesh.app.start`, exactly as `python -m <service>` builds them,
    and stopped together (drain, background tasks, resources), last started first."""

    def __init__(self) -> None:
        self.running: list[RunningService] = []

    async def start(self, app: ServiceApp[Any, Any], settings: ServiceSettings, deps: Deps) -> RunningService:
        running = await start(app, settings, deps)
        self.running.append(running)
        return running

    async def stop(self) -> None:
        for running in reversed(self.running):
            await running.stop()
        self.running.clear()


@pytest_asyncio.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Starts services for one test (see `ServiceGroup`)."""
    group = ServiceGroup()
    yield group.start
    await group.stop()


@pytest_asyncio.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    """Starts bare MeshServers (tests of the runtime itself) and drains them after the test."""
    started: list[MeshServer] = []

    async def start(
        name: str, settings: ServiceSettings, services: list[Service], verifier: TokenVerifier, **kwargs: Any
    ) -> MeshServer:
        server = MeshServer(name, settings, services, verifier=verifier, **kwargs)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.drain()


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a rendered document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def offline_model_settings(**overrides: Any) -> OfflineModelSettings:
    """The offline model as tests run it: a free port, no pause between words, test directives on."""
    return OfflineModelSettings(
        **{"port": 0, "delay_ms": 0, "embedding_dimensions": 384, "test_directives": True, **overrides}
    )
