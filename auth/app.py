"""The auth service, assembled: signing keys, sessions, erasure, OIDC sign-in, the JWKS route and maintenance.

`build_app` wires the domain from a store, an HTTP client and the revocation list it writes to; `build`
(what `python -m auth`, `make run` and the tests start through `mesh.app`) adds migrations and the
PostgreSQL store, unless a store is given: the store seals what it keeps about a person with their data
key, wrapped by the KMS (`auth.privacy`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from aiohttp import web
from athena.auth.v1 import auth_pb2_grpc
from athena.identity.v1 import identity_pb2_grpc

from auth.access import AccessTokenIssuer
from auth.erasure import AccountEraser
from auth.keys import KeyRing, KeyRingError, load_key_ring, rotate_keys
from auth.migrate import SERVICE, apply_migrations, migrate
from auth.oidc import OidcLogin, OidcProvider
from auth.postgres import PostgresAuthStore
from auth.privacy import DATA_KEYS_TABLE
from auth.receipts import ReceiptSigner
from auth.servicer import IDENTITY_SERVICE_NAME, PUBLIC_METHODS, SERVICE_NAME, AuthServicer, IdentityServicer
from auth.sessions import Clock, SessionManager, utc_now
from auth.settings import AuthSettings
from auth.store import AuthStore
from mesh.app import Assembly, Command, Deps, ServiceApp
from mesh.envelope import DataKeys
from mesh.keystore import PostgresDataKeys, rewrap_keys
from mesh.kms import KeyEncryptionKeys
from mesh.kms import from_settings as kms_from_settings
from mesh.revocation import RevocationWriter
from mesh.server import Service
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
    eraser: AccountEraser
    login: OidcLogin
    servicer: AuthServicer
    verifier: TokenVerifier
    clock: Clock

    def services(self) -> list[Service]:
        return [
            Service(SERVICE_NAME, self.servicer, auth_pb2_grpc.add_AuthServiceServicer_to_server),
            Service(
                IDENTITY_SERVICE_NAME,
                IdentityServicer(self.eraser, self.sessions),
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
    settings: AuthSettings,
    store: AuthStore,
    http: httpx.AsyncClient,
    revocations: RevocationWriter,
    *,
    clock: Clock = utc_now,
) -> AuthApp:
    keys = LiveKeyRing(settings, clock)
    issuer = AccessTokenIssuer(
        keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl=settings.access_token_ttl
    )
    sessions = SessionManager(
        store,
        issuer,
        revocations,
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
    eraser = AccountEraser(store, issuer, revocations, ReceiptSigner(keys, issuer=settings.jwt_issuer), clock)
    return AuthApp(settings, keys, sessions, eraser, login, servicer, verifier, clock)


DATA_KEY_POOL_SIZE = 2
"""Connections reading and writing data keys, apart from the store's (`PostgresAuthStore`)."""


@dataclass(kw_only=True)
class AuthDeps(Deps):
    store: AuthStore | None = None
    """Users, sessions and login states; None: PostgreSQL at `settings.database_url`, migrated first."""
    kms: KeyEncryptionKeys | None = None
    """Wraps the users' data keys and the index key (PostgreSQL store only); None: the KMS the settings
    name (`mesh.kms.from_settings`)."""


async def build(settings: AuthSettings, deps: AuthDeps) -> Assembly:
    store = deps.store
    readiness = None
    if store is None:
        kms = deps.kms or kms_from_settings(settings)
        await migrate(settings.database_url, kms, wait_seconds=settings.startup_timeout_seconds)
        keys = DataKeys(
            PostgresDataKeys(
                await deps.postgres(settings.database_url, max_size=DATA_KEY_POOL_SIZE), DATA_KEYS_TABLE
            ),
            kms,
            SERVICE,
            cache_seconds=settings.data_key_cache_seconds,
        )
        postgres_store = PostgresAuthStore(
            await deps.postgres(settings.database_url, max_size=settings.database_pool_size), keys
        )
        store, readiness = postgres_store, postgres_store.ping
    app = build_app(
        settings,
        store,
        deps.http_client(settings.http_timeout_seconds),
        deps.revocation_feed(settings),
        clock=deps.clock.now,
    )
    return Assembly(
        services=app.services(),
        readiness=readiness,
        background=[app.maintain],
        http_routes=app.http_routes(),
        public_methods=PUBLIC_METHODS,
        verifier=app.verifier,
    )


def _migrate(settings: AuthSettings) -> int:
    applied = apply_migrations(settings.database_url, kms_from_settings(settings))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def _rewrap_keys(settings: AuthSettings) -> int:
    return rewrap_keys(settings.database_url, kms_from_settings(settings), SERVICE, DATA_KEYS_TABLE)


def _rotate_keys(settings: AuthSettings) -> int:
    directory = settings.signing_keys_dir
    try:
        new, deleted = rotate_keys(
            directory,
            now=datetime.now(UTC),
            activation_delay=settings.key_activation_delay,
            retention=key_retention(settings),
        )
    except (KeyRingError, OSError) as exc:
        print(f"rotating keys failed: {exc}", file=sys.stderr)
        return 1
    print(f"added key {new.kid} in {directory}; deleted {len(deleted)} retired key(s)")
    return 0


AUTH = ServiceApp(
    name="auth",
    description="AthenaOS auth service: sign-in, sessions, access tokens and their keys. Applies its "
    "migrations on start-up.",
    settings=AuthSettings,
    deps=AuthDeps,
    build=build,
    commands={
        "migrate": Command("apply the auth schema's migrations, then exit", _migrate),
        "rotate-keys": Command(
            "add a signing key (published at once, signing after AUTH_KEY_ACTIVATION_DELAY) and delete "
            "keys no unexpired token can name; running services reread AUTH_KEYS_DIR every "
            "AUTH_KEY_RELOAD_SECONDS",
            _rotate_keys,
        ),
        "rewrap-keys": Command(
            "rewrap every data key (the users' and the index key) under the KMS's current "
            "key-encryption key (after a rotation)",
            _rewrap_keys,
        ),
    },
)
