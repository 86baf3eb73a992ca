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


def text_pdf(*pages: str) -> bytes:
    """A small, valid PDF 1.4 with one line of Helvetica text per page (what a drive holds as a PDF)."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * n} 0 R" for n in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font = 3 + 2 * len(pages)
    for n, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * n} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
