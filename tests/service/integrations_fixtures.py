"""The integrations service as its tests run it: the Google and Microsoft emulators (tests/emulators)
registered with this deployment's OAuth clients, the service started on a real PostgreSQL with its settings
pointed at them, a person with a bearer token, a connection made through the real consent, token and
revocation endpoints, and the `Connections` domain object on the service's own database.

Imported explicitly by tests/service/test_integrations_*.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from athena.connections.v1 import connections_pb2 as pb
from athena.connections.v1 import connections_pb2_grpc
from conftest import StartService, auth_metadata, service_settings
from emulators import GoogleEmulator, MicrosoftEmulator

from devstack.postgres import EmbeddedPostgres
from integrations.app import INTEGRATIONS, IntegrationsDeps
from integrations.connections import Connections
from integrations.migrate import DATA_KEYS_TABLE, SERVICE
from integrations.oauth import OAuth
from integrations.postgres import PostgresConnectionStore
from integrations.settings import GoogleSettings, IntegrationsSettings, MicrosoftSettings
from mesh.app import RunningService
from mesh.envelope import DataKeys
from mesh.keystore import PostgresDataKeys
from mesh.kms import KeyEncryptionKeys, from_settings
from mesh.tokens import TokenVerifier

REDIRECT = "http://127.0.0.1:8080/connections"
Stub = connections_pb2_grpc.ConnectionsServiceStub
Metadata = tuple[tuple[str, str], ...]
CALENDAR = "https://www.googleapis.com/auth/calendar.readonly"
DRIVE = "https://www.googleapis.com/auth/drive.readonly"


@pytest_asyncio.fixture(scope="module")
async def google() -> AsyncIterator[GoogleEmulator]:
    emulator = GoogleEmulator()
    emulator.register_client("google-client", "google-secret", [REDIRECT])
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest_asyncio.fixture(scope="module")
async def microsoft() -> AsyncIterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator()
    emulator.register_client("microsoft-client", "microsoft-secret", [REDIRECT])
    await emulator.start()
    yield emulator
    await emulator.stop()


def settings_for(
    tmp_path: Path,
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> IntegrationsSettings:
    return IntegrationsSettings(
        **service_settings(tmp_path, env="dev", database_url=postgres.url, kms_keys_dir=kms_keys_dir),
        google=GoogleSettings(
            client_id="google-client",
            client_secret="google-secret",
            redirect_uris=(REDIRECT,),
            accounts_url=google.base_url,
            oauth2_url=google.base_url,
            calendar_url=google.calendar_base_url,
            drive_url=google.drive_base_url,
            health_url=google.health_base_url,
        ),
        microsoft=MicrosoftSettings(
            client_id="microsoft-client",
            client_secret="microsoft-secret",
            redirect_uris=(REDIRECT,),
            login_url=microsoft.base_url,
            tenant="common",
            graph_url=microsoft.graph_base_url,
        ),
    )


@pytest_asyncio.fixture
async def service(
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    start_service: StartService,
    tmp_path: Path,
    verifier: TokenVerifier,
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> AsyncIterator[tuple[RunningService, Stub]]:
    settings = settings_for(tmp_path, postgres, kms_keys_dir, google, microsoft)
    running = await start_service(INTEGRATIONS, settings, IntegrationsDeps(verifier=verifier))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, connections_pb2_grpc.ConnectionsServiceStub(channel)
    await channel.close()


@pytest.fixture
def stub(service: tuple[RunningService, Stub]) -> Stub:
    return service[1]


@pytest.fixture
def user(make_token: Callable[..., str]) -> Callable[[], tuple[str, Metadata]]:
    def make() -> tuple[str, Metadata]:
        user_id = str(uuid.uuid4())
        return user_id, auth_metadata(make_token(user_id))

    return make


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def consent(authorization_url: str) -> dict[str, str]:
    """What a browser sent to the consent page comes back with: the redirect's query."""
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        answer = await browser.get(authorization_url)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return query_of(location)


async def connect(stub: Stub, metadata: Metadata, provider: int, *capabilities: int) -> pb.Connection:
    begun = await stub.BeginConnection(
        pb.BeginConnectionRequest(provider=provider, capabilities=capabilities, redirect_uri=REDIRECT),
        metadata=metadata,
    )
    back = await consent(begun.authorization_url)
    assert back["state"] == begun.state
    completed = await stub.CompleteConnection(
        pb.CompleteConnectionRequest(state=back["state"], code=back["code"], redirect_uri=REDIRECT),
        metadata=metadata,
    )
    return completed.connection


@pytest_asyncio.fixture
async def domain(
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    tmp_path: Path,
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    service: tuple[RunningService, Stub],  # migrated the schema
) -> AsyncIterator[Connections]:
    settings = settings_for(tmp_path, postgres, kms_keys_dir, google, microsoft)
    kms: KeyEncryptionKeys = from_settings(settings)
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=4)
    assert pool is not None
    try:
        keys = DataKeys(PostgresDataKeys(pool, DATA_KEYS_TABLE), kms, SERVICE)
        yield Connections(PostgresConnectionStore(pool, keys), OAuth(), settings.providers())
    finally:
        await pool.close()
