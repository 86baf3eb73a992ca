"""UploadsService and WearableStats end to end: the integrations service on a real PostgreSQL with its
object storage in a directory, taking Apple Health exports in resumable chunks and importing them in the
background — the happy path, resuming, every way an upload must be refused, imports that fail keeping
nothing, re-importing changing nothing, other people seeing nothing, and nothing readable at rest."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from athena.uploads.v1 import uploads_pb2 as pb
from athena.uploads.v1 import uploads_pb2_grpc
from conftest import StartService, auth_metadata, service_settings
from privacy_fixtures import dump_database

from bench.apple_health import write_export
from devstack.postgres import EmbeddedPostgres
from integrations.app import INTEGRATIONS, IntegrationsDeps
from integrations.health import Metric
from integrations.migrate import DATA_KEYS_TABLE, SERVICE
from integrations.objects import LocalObjectStore
from integrations.postgres_uploads import PostgresHealthStore, PostgresUploadStore
from integrations.settings import IntegrationsSettings
from integrations.uploads import Appended, UploadKind, Uploads, UploadState, chunk_key
from mesh.app import RunningService
from mesh.envelope import DataKeys
from mesh.keystore import PostgresDataKeys
from mesh.kms import from_settings as kms_from_settings
from mesh.tokens import TokenVerifier

Metadata = tuple[tuple[str, str], ...]
CHUNK = 64 * 1024
LIMIT = 8 * 1024 * 1024
APPLE = pb.UPLOAD_KIND_APPLE_HEALTH_EXPORT


class Client:
    def __init__(self, channel: grpc.aio.Channel, data_dir: Path, postgres: EmbeddedPostgres) -> None:
        self.uploads = uploads_pb2_grpc.UploadsServiceStub(channel)
        self.integrations = integrations_pb2_grpc.IntegrationsServiceStub(channel)
        self.data_dir = data_dir
        self.database_url = postgres.url
        self.superuser_url = postgres.superuser_url


@pytest_asyncio.fixture
async def client(
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    start_service: StartService,
    tmp_path: Path,
    verifier: TokenVerifier,
) -> AsyncIterator[Client]:
    settings = IntegrationsSettings(
        **service_settings(tmp_path, env="dev", database_url=postgres.url, kms_keys_dir=kms_keys_dir),
        max_upload_bytes=LIMIT,
    )
    running: RunningService = await start_service(INTEGRATIONS, settings, IntegrationsDeps(verifier=verifier))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield Client(channel, tmp_path, postgres)
    await channel.close(None)


@pytest.fixture
def user(make_token: Callable[..., str]) -> Callable[[], tuple[str, Metadata]]:
    def make() -> tuple[str, Metadata]:
        user_id = str(uuid.uuid4())
        return user_id, auth_metadata(make_token(user_id))

    return make


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def create(
    client: Client, who: Metadata, data: bytes, name: str = "export.zip", **overrides: Any
) -> pb.Upload:
    request = pb.CreateUploadRequest(kind=APPLE, file_name=name, size_bytes=len(data), sha256=sha(data))
    for field, value in overrides.items():
        setattr(request, field, value)
    answer = await client.uploads.CreateUpload(request, metadata=who)
    assert answer.max_chunk_bytes == 2 * 1024 * 1024
    return answer.upload


async def send(client: Client, who: Metadata, upload: pb.Upload, data: bytes, start: int = 0) -> pb.Upload:
    for offset in range(start, len(data), CHUNK):
        piece = data[offset : offset + CHUNK]
        request = pb.AppendChunkRequest(upload_id=upload.id, offset=offset, data=piece, sha256=sha(piece))
        upload = (await client.uploads.AppendChunk(request, metadata=who)).upload
    return upload


async def settled(client: Client, who: Metadata, upload_id: str) -> pb.Upload:
    for _ in range(300):
        upload = (
            await client.uploads.GetUpload(pb.GetUploadRequest(upload_id=upload_id), metadata=who)
        ).upload
        if upload.state not in (pb.UPLOAD_STATE_RECEIVING, pb.UPLOAD_STATE_IMPORTING):
            return upload
        await asyncio.sleep(0.05)
    raise AssertionError(f"upload {upload_id} still {pb.UploadState.Name(upload.state)}")


async def steps(
    client: Client, who: Metadata, start: str = "2026-01-01", end: str = "2026-12-31"
) -> dict[str, float]:
    answer = await client.integrations.WearableStats(
        integrations_pb2.WearableStatsRequest(metric="steps", start_date=start, end_date=end), metadata=who
    )
    return {day.date: day.value for day in answer.days}


async def export_bytes(
    tmp_path: Path, *, days: int = 12, as_zip: bool = True, seed: int = 7
) -> tuple[bytes, dict[str, float]]:
    path = tmp_path / f"export-{days}-{seed}.{'zip' if as_zip else 'xml'}"
    expected = write_export(path, days=days, records_per_day=50, as_zip=as_zip, seed=seed)
    return path.read_bytes(), {day.isoformat(): float(count) for day, count in expected.steps.items()}


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_an_export_uploaded_in_chunks_is_imported_and_read_back(
    client: Client, user: Callable[[], tuple[str, Metadata]], tmp_path: Path
) -> None:
    _, who = user()
    data, expected = await export_bytes(tmp_path)
    upload = await create(client, who, data)
    assert (upload.state, upload.received_bytes, upload.file_name) == (
        pb.UPLOAD_STATE_RECEIVING,
        0,
        "export.zip",
    )
    upload = await send(client, who, upload, data)
    assert upload.received_bytes == len(data)
    assert upload.state in (pb.UPLOAD_STATE_IMPORTING, pb.UPLOAD_STATE_IMPORTED)
    done = await settled(client, who, upload.id)
    assert done.state == pb.UPLOAD_STATE_IMPORTED, done.status_message
    assert (done.days_imported, done.progress) == (12, 1.0)
    assert done.records_imported > 12 * 40
    assert await steps(client, who) == expected
    answer = await client.integrations.WearableStats(
        integrations_pb2.WearableStatsRequest(
            metric="sleep_minutes", start_date="2026-01-02", end_date="2026-01-03"
        ),
        metadata=who,
    )
    assert ([d.value for d in answer.days], answer.unit, list(answer.sources)) == (
        [390.0, 390.0],
        "min",
        ["apple_health"],
    )
    listed = await client.uploads.ListUploads(pb.ListUploadsRequest(), metadata=who)
    assert [u.id for u in listed.uploads] == [upload.id]
    # the file's bytes go once imported; its record stays
    assert not any((client.data_dir / "objects").rglob("*-*"))


async def test_an_interrupted_upload_resumes_where_it_stands(
    client: Client, user: Callable[[], tuple[str, Metadata]], tmp_path: Path
) -> None:
    _, who = user()
    data, expected = await export_bytes(tmp_path, as_zip=False, days=8)
    upload = await create(client, who, data, name="export.xml")
    first = data[:CHUNK]
    request = pb.AppendChunkRequest(upload_id=upload.id, offset=0, data=first, sha256=sha(first))
    await client.uploads.AppendChunk(request, metadata=who)
    again = await client.uploads.AppendChunk(request, metadata=who)  # the answer was lost: sent again
    assert again.upload.received_bytes == CHUNK
    code, message = await code_of(
        client.uploads.AppendChunk(
            pb.AppendChunkRequest(upload_id=upload.id, offset=3 * CHUNK, data=first, sha256=sha(first)),
            metadata=who,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"stands at byte {CHUNK:,}" in message
    where = await client.uploads.GetUpload(pb.GetUploadRequest(upload_id=upload.id), metadata=who)
    await send(client, who, upload, data, start=where.upload.received_bytes)
    assert (await settled(client, who, upload.id)).state == pb.UPLOAD_STATE_IMPORTED
    assert await steps(client, who) == expected


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"size_bytes": LIMIT + 1}, "over this deployment's limit"),
        ({"kind": pb.UPLOAD_KIND_UNSPECIFIED}, "kind"),
        ({"sha256": "not-a-digest"}, "sha256"),
        ({"file_name": ""}, "file_name"),
    ],
)
async def test_a_bad_declaration_is_refused_naming_the_field(
    client: Client, user: Callable[[], tuple[str, Metadata]], change: dict[str, Any], problem: str
) -> None:
    _, who = user()
    code, message = await code_of(create(client, who, b"<HealthData/>", **change))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in message


async def test_bad_chunks_are_refused_and_nothing_is_lost(
    client: Client, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, who = user()
    data = b"<HealthData>" + b" " * 100 + b"</HealthData>"
    upload = await create(client, who, data)
    wrong_digest = pb.AppendChunkRequest(upload_id=upload.id, offset=0, data=data, sha256=sha(b"other"))
    code, message = await code_of(client.uploads.AppendChunk(wrong_digest, metadata=who))
    assert (code, "does not match the chunk" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    too_long = data + b"extra"
    past_end = pb.AppendChunkRequest(upload_id=upload.id, offset=0, data=too_long, sha256=sha(too_long))
    code, message = await code_of(client.uploads.AppendChunk(past_end, metadata=who))
    assert (code, "past the declared size" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    huge = b"x" * (2 * 1024 * 1024 + 1)
    oversized = pb.AppendChunkRequest(upload_id=upload.id, offset=0, data=huge, sha256=sha(huge))
    code, _ = await code_of(client.uploads.AppendChunk(oversized, metadata=who))
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    unknown = pb.AppendChunkRequest(upload_id=str(uuid.uuid4()), offset=0, data=data, sha256=sha(data))
    code, _ = await code_of(client.uploads.AppendChunk(unknown, metadata=who))
    assert code == grpc.StatusCode.NOT_FOUND
    # none of that moved the upload: the right chunk still goes in at 0
    assert (await send(client, who, upload, data)).received_bytes == len(data)


async def test_failed_imports_keep_nothing_and_say_why(
    client: Client, user: Callable[[], tuple[str, Metadata]], tmp_path: Path
) -> None:
    _, who = user()
    data, expected = await export_bytes(tmp_path, as_zip=False, days=4)
    imported = await send(client, who, await create(client, who, data, name="export.xml"), data)
    assert (await settled(client, who, imported.id)).state == pb.UPLOAD_STATE_IMPORTED

    newer, _ = await export_bytes(tmp_path, as_zip=False, days=6, seed=8)
    truncated = newer[: len(newer) * 3 // 4]
    cut = await settled(
        client, who, (await send(client, who, await create(client, who, truncated), truncated)).id
    )
    assert cut.state == pb.UPLOAD_STATE_FAILED
    assert "ends in the middle (line" in cut.status_message

    # bytes that are not what was declared: the whole file's SHA-256 is checked before anything is read
    mismatched = await create(client, who, newer, sha256=sha(b"something else"))
    checked = await settled(client, who, (await send(client, who, mismatched, newer)).id)
    assert checked.state == pb.UPLOAD_STATE_FAILED
    assert "does not match the SHA-256" in checked.status_message

    corrupt = b"PK\x03\x04" + b"\x00" * 200
    damaged = await settled(
        client, who, (await send(client, who, await create(client, who, corrupt), corrupt)).id
    )
    assert damaged.state == pb.UPLOAD_STATE_FAILED
    assert "damaged" in damaged.status_message or "no export.xml" in damaged.status_message

    assert await steps(client, who) == expected  # the first import, untouched


async def test_importing_the_same_export_again_changes_nothing(
    client: Client, user: Callable[[], tuple[str, Metadata]], tmp_path: Path
) -> None:
    owner_id, who = user()
    data, expected = await export_bytes(tmp_path, days=5)
    for _ in range(2):
        upload = await send(client, who, await create(client, who, data), data)
        assert (await settled(client, who, upload.id)).state == pb.UPLOAD_STATE_IMPORTED
        assert await steps(client, who) == expected
    async with asyncpg.create_pool(client.database_url, min_size=1, max_size=1) as pool:
        rows = await pool.fetchval(
            "SELECT count(*) FROM integrations.health_days WHERE user_id = $1", uuid.UUID(owner_id)
        )
    assert rows == 5 * 6  # five days of six metrics (no resting heart rate in this export), once


async def test_nobody_else_sees_an_upload_or_its_data_and_nothing_is_readable_at_rest(
    client: Client, user: Callable[[], tuple[str, Metadata]], tmp_path: Path
) -> None:
    _, owner = user()
    _, stranger = user()
    data, expected = await export_bytes(tmp_path, as_zip=False, days=2)
    name = f"ada-lovelace-{uuid.uuid4().hex}.xml"
    upload = await create(client, owner, data, name=name)
    half = data[: len(data) // 2]
    request = pb.AppendChunkRequest(upload_id=upload.id, offset=0, data=half, sha256=sha(half))
    await client.uploads.AppendChunk(request, metadata=owner)
    stored = [path.read_bytes() for path in (client.data_dir / "objects").rglob("*") if path.is_file()]
    assert stored
    assert not any(b"HealthData" in blob or b"StepCount" in blob for blob in stored)

    for call in (
        client.uploads.GetUpload(pb.GetUploadRequest(upload_id=upload.id), metadata=stranger),
        client.uploads.AppendChunk(request, metadata=stranger),
    ):
        assert (await code_of(call))[0] == grpc.StatusCode.NOT_FOUND
    assert not (await client.uploads.ListUploads(pb.ListUploadsRequest(), metadata=stranger)).uploads
    await client.uploads.DeleteUpload(pb.DeleteUploadRequest(upload_id=upload.id), metadata=stranger)
    await send(client, owner, upload, data, start=len(half))
    assert (await settled(client, owner, upload.id)).state == pb.UPLOAD_STATE_IMPORTED
    assert await steps(client, owner) == expected
    assert await steps(client, stranger) == {}

    # nor in a superuser's dump: the file's name sealed, every day's value sealed, the metric a blind token
    dump = await dump_database(client.superuser_url)
    assert upload.id in dump
    assert name not in dump
    assert "health_metric" not in dump


async def test_deleting_and_erasing(
    client: Client, user: Callable[[], tuple[str, Metadata]], tmp_path: Path
) -> None:
    _, who = user()
    data, _ = await export_bytes(tmp_path, days=2)
    waiting = await create(client, who, data)
    half = data[: len(data) // 2]
    await client.uploads.AppendChunk(
        pb.AppendChunkRequest(upload_id=waiting.id, offset=0, data=half, sha256=sha(half)), metadata=who
    )
    await client.uploads.DeleteUpload(pb.DeleteUploadRequest(upload_id=waiting.id), metadata=who)
    await client.uploads.DeleteUpload(
        pb.DeleteUploadRequest(upload_id=waiting.id), metadata=who
    )  # twice: fine
    assert (await code_of(client.uploads.GetUpload(pb.GetUploadRequest(upload_id=waiting.id), metadata=who)))[
        0
    ] == grpc.StatusCode.NOT_FOUND
    assert not [p for p in (client.data_dir / "objects").rglob("*") if p.is_file()]

    imported = await send(client, who, await create(client, who, data), data)
    assert (await settled(client, who, imported.id)).state == pb.UPLOAD_STATE_IMPORTED
    purged = await client.integrations.PurgeUser(integrations_pb2.PurgeUserRequest(), metadata=who)
    assert purged.deleted_rows >= 1 + 2 * 6
    assert not (await client.uploads.ListUploads(pb.ListUploadsRequest(), metadata=who)).uploads
    assert await steps(client, who) == {}


@pytest_asyncio.fixture
async def domain(
    postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path, client: Client
) -> AsyncIterator[tuple[Uploads, PostgresUploadStore, PostgresHealthStore]]:
    """The uploads domain on the service's database (migrated by `client`), as a second replica."""
    settings = IntegrationsSettings(
        **service_settings(tmp_path, env="dev", database_url=postgres.url, kms_keys_dir=kms_keys_dir)
    )
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=4)
    assert pool is not None
    try:
        keys = DataKeys(PostgresDataKeys(pool, DATA_KEYS_TABLE), kms_from_settings(settings), SERVICE)
        store, health = PostgresUploadStore(pool, keys), PostgresHealthStore(pool, keys)
        uploads = Uploads(
            store,
            LocalObjectStore(tmp_path / "objects"),
            keys,
            health,
            clock=lambda: datetime.now(UTC),
            max_bytes=LIMIT,
        )
        yield uploads, store, health
    finally:
        await pool.close()


async def _received(uploads: Uploads, user_id: str, data: bytes) -> str:
    """An upload with all but its last byte in."""
    upload = await uploads.create(user_id, UploadKind.APPLE_HEALTH_EXPORT, "export.xml", len(data), sha(data))
    body = data[:-1]
    await uploads.append(user_id, upload.id, 0, body, sha(body))
    return upload.id


async def test_an_import_whose_replica_stopped_is_taken_over(
    domain: tuple[Uploads, PostgresUploadStore, PostgresHealthStore], tmp_path: Path
) -> None:
    uploads, store, health = domain
    user_id = str(uuid.uuid4())
    data, expected = await export_bytes(tmp_path, as_zip=False, days=3)
    upload_id = await _received(uploads, user_id, data)
    # the last chunk lands, and the replica that claimed the import dies before it starts: its claim
    # (already run out here) stays in the database
    digest = hashlib.sha256(data[-1:]).digest()
    cipher = await uploads._keys.cipher(user_id)
    upload = await uploads.get(user_id, upload_id)
    last = len(upload.chunk_ends)
    key = chunk_key(replace(upload, chunk_digests=(*upload.chunk_digests, digest)), last)
    await uploads._objects.put(key, cipher.seal("uploads", "chunk", f"{upload_id}/{last}", data[-1:]))
    past = datetime.now(UTC) - timedelta(minutes=5)
    taken = await store.append(user_id, upload_id, Appended(len(data) - 1, len(data), digest), past, past)
    assert taken is not None
    assert taken.state is UploadState.IMPORTING
    await uploads.maintain(receiving_ttl=timedelta(hours=24))
    await uploads.idle()
    done = await uploads.get(user_id, upload_id)
    assert (done.state, done.days_imported) == (UploadState.IMPORTED, 3)
    days = await health.days(user_id, Metric.STEPS, date(2026, 1, 1), date(2026, 1, 31))
    assert {d.day.isoformat(): d.value for d in days} == expected


async def test_abandoned_uploads_are_deleted_with_their_bytes(
    domain: tuple[Uploads, PostgresUploadStore, PostgresHealthStore], tmp_path: Path
) -> None:
    uploads, _, _ = domain
    user_id = str(uuid.uuid4())
    data, _ = await export_bytes(tmp_path, as_zip=False, days=2)
    upload_id = await _received(uploads, user_id, data)
    await uploads.maintain(receiving_ttl=timedelta(hours=1))
    assert (await uploads.get(user_id, upload_id)).state is UploadState.RECEIVING
    await uploads.maintain(receiving_ttl=timedelta(seconds=0))
    assert not await uploads.of_user(user_id)
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
