"""Wiring of the auth service: settings and adapters in, a `MeshServer` out. `serve` is `python -m auth`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import httpx
from aiohttp import web
from athena.auth.v1 import auth_pb2_grpc
from athena.identity.v1 import identity_pb2_grpc

from auth.access import AccessTokenIssuer
from auth.keys import KeyRing, KeyRingError, load_key_ring
from auth.migrate import apply_migrations
from auth.oidc import OidcLogin, OidcProvider
from auth.postgres import PostgresAuthStore, create_pool
from auth.servicer import IDENTITY_SERVICE_NAME, PUBLIC_METHODS, SERVICE_NAME, AuthServicer, IdentityServicer
from auth.sessions import Clock, SessionManager, utc_now
from auth.settings import AuthSettings
from auth.store import AuthStore
from mesh.server import MeshServer, ReadinessCheck, Service, run
from mesh.telemetry import configure_logging, configure_tracing
from mesh.tokens import LEEWAY_SECONDS, StaticKeySource, TokenVerifier

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"


class LiveKeyRing:
    """The key ring as of the last read of the key directory, and the verifier keys derived from it."""

    def __init__(self, settings: AuthSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self.ring = self._load(create_if_empty=settings.env == "dev")
        self.verifier_keys = StaticKeySource(self.ring.public_key_set(clock()))

    def _load(self, *, create_if_empty: bool) -> KeyRing:
        settings = self._settings
        return load_key_ring(
            settings.signing_keys_dir,
            now=self._clock(),
            activation_delay=settings.key_activation_delay,
            retention=key_retention(settings),
            create_if_empty=create_if_empty,
        )

    def __call__(self) -> KeyRing:
        return self.ring

    def reload(self) -> None:
        """Rereads the directory (a rotation, a Secret update); a broken directory keeps the old ring."""
        try:
            self.ring = self._load(create_if_empty=False)
        except KeyRingError:
            log.exception("reloading signing keys failed; keeping the keys loaded before")
        self.verifier_keys.replace(self.ring.public_key_set(self._clock()))

    def jwks_cache_seconds(self) -> int:
        """Caches of the JWKS must learn a new key before it signs: never longer than the activation delay."""
        return max(0, min(300, int(self._settings.key_activation_delay.total_seconds())))


def key_retention(settings: AuthSettings) -> timedelta:
    """How long a superseded key stays published: every token it signed has expired by then."""
    return settings.access_token_ttl + timedelta(seconds=LEEWAY_SECONDS)


@dataclass
class AuthApp:
    """Everything the auth service runs, built from settings and adapters (tests build it too)."""

    settings: AuthSettings
    keys: LiveKeyRing
    sessions: SessionManager
    login: OidcLogin
    servicer: AuthServicer
    verifier: TokenVerifier
    clock: Clock

    def services(self) -> list[Service]:
        return [
            Service(SERVICE_NAME, self.servicer, auth_pb2_grpc.add_AuthServiceServicer_to_server),
            Service(
                IDENTITY_SERVICE_NAME,
                IdentityServicer(self.sessions),
                identity_pb2_grpc.add_IdentityServiceServicer_to_server,
            ),
        ]

    async def _jwks(self, _: web.Request) -> web.Response:
        return web.json_response(
            self.keys().jwks(self.clock()),
            headers={"Cache-Control": f"public, max-age={self.keys.jwks_cache_seconds()}"},
        )

    def http_routes(self) -> list[web.RouteDef]:
        return [web.get(JWKS_PATH, self._jwks)]

    def mesh_server(self, readiness: ReadinessCheck | None = None) -> MeshServer:
        return MeshServer(
            "auth",
            self.settings,
            self.services(),
            verifier=self.verifier,
            public_methods=PUBLIC_METHODS,
            http_routes=self.http_routes(),
            readiness=readiness,
        )

    async def maintain(self) -> None:
        """Forever: reread the keys, forget expired states and tokens."""
        while True:
            await asyncio.sleep(self.settings.key_reload_seconds)
            await asyncio.to_thread(self.keys.reload)
            try:
                await self.sessions.purge_expired()
            except Exception:  # maintenance must outlive a database hiccup
                log.exception("purging expired sessions failed")


def build_app(
    settings: AuthSettings, store: AuthStore, http: httpx.AsyncClient, *, clock: Clock = utc_now
) -> AuthApp:
    keys = LiveKeyRing(settings, clock)
    issuer = AccessTokenIssuer(
        keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl=settings.access_token_ttl
    )
    sessions = SessionManager(
        store,
        issuer,
        refresh_ttl=settings.refresh_token_ttl,
        reuse_grace=settings.refresh_reuse_grace,
        dev_login_enabled=settings.env == "dev",
        clock=clock,
    )
    providers: Mapping[str, OidcProvider] = {
        name: OidcProvider(name, provider, http) for name, provider in settings.providers().items()
    }
    login = OidcLogin(providers, store, sessions, state_ttl=settings.login_state_ttl, clock=clock)
    verifier = TokenVerifier(keys.verifier_keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    servicer = AuthServicer(sessions, login, keys, clock)
    return AuthApp(settings, keys, sessions, login, servicer, verifier, clock)


def provider_http_client(settings: AuthSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=settings.http_timeout_seconds, follow_redirects=False)


async def serve(settings: AuthSettings) -> None:
    configure_logging("auth", settings.log_level)
    configure_tracing("auth", settings.otlp_endpoint)
    await asyncio.to_thread(apply_migrations, settings.database_url)
    pool = await create_pool(settings.database_url, settings.database_pool_size)
    http = provider_http_client(settings)
    store = PostgresAuthStore(pool)
    app = build_app(settings, store, http)
    maintenance: asyncio.Task[None] | None = None

    async def on_start() -> None:
        nonlocal maintenance
        maintenance = asyncio.create_task(app.maintain(), name="auth-maintenance")

    async def on_stop() -> None:
        if maintenance is not None:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance
        await http.aclose()
        await pool.close()

    await run(app.mesh_server(readiness=store.ping), on_start=on_start, on_stop=on_stop)
