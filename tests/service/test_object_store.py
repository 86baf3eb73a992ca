"""One contract for both object stores (`integrations.objects`): the local directory, and S3 against moto's
S3 server on a loopback port (a real HTTP server, the real boto3 client; no request leaves loopback).

Each test gets an empty store: a fresh directory, or a fresh bucket.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import pytest_asyncio
from aws_fixtures import isolate_aws, running_moto

from integrations.objects import (
    LocalObjectStore,
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreSettings,
    S3ObjectStore,
    from_settings,
)
from integrations.settings import IntegrationsSettings

REGION = "eu-west-1"
USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER = "0f8fad5b-d9cb-469f-a165-70867728950e"
UPLOAD = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
MIB = 1024 * 1024


def chunk(user: str, upload: str, index: int) -> str:
    return f"uploads/{user}/{upload}/{index:08d}"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server on a free loopback port, for the module's tests; each makes its own bucket."""
    with running_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_aws(monkeypatch, tmp_path)


def s3_admin(endpoint: str) -> Any:
    """The emulator's S3 as an operator uses it (making buckets, looking inside)."""
    return boto3.client("s3", region_name=REGION, endpoint_url=endpoint)


def new_bucket(endpoint: str) -> str:
    bucket = f"athena-{uuid.uuid4().hex[:12]}"
    s3_admin(endpoint).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return bucket


@pytest_asyncio.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """An empty store of each kind, made from settings as the service makes it."""
    if request.param == "local":
        settings = ObjectStoreSettings(root=tmp_path / "objects")
    else:
        endpoint: str = request.getfixturevalue("s3_endpoint")
        settings = ObjectStoreSettings(
            backend="s3", bucket=new_bucket(endpoint), endpoint_url=endpoint, region=REGION
        )
    yield from_settings(settings)


# --- the contract


async def test_what_is_put_is_what_is_got(store: ObjectStore) -> None:
    key = chunk(USER, UPLOAD, 42)
    await store.put(key, b"sealed bytes \x00\xff")
    assert await store.get(key) == b"sealed bytes \x00\xff"
    await store.put(chunk(USER, UPLOAD, 43), b"")
    assert await store.get(chunk(USER, UPLOAD, 43)) == b""


async def test_five_mebibyte_objects_round_trip(store: ObjectStore) -> None:
    data = os.urandom(5 * MIB + 17)
    await store.put(chunk(USER, UPLOAD, 0), data)
    assert await store.get(chunk(USER, UPLOAD, 0)) == data


async def test_put_replaces(store: ObjectStore) -> None:
    key = chunk(USER, UPLOAD, 1)
    await store.put(key, b"first version, longer than the second")
    await store.put(key, b"second")
    assert await store.get(key) == b"second"


async def test_a_reader_never_sees_half_an_object(store: ObjectStore) -> None:
    key = chunk(USER, UPLOAD, 2)
    old, new = b"a" * MIB, b"b" * (2 * MIB)
    await store.put(key, old)
    seen = await asyncio.gather(store.put(key, new), *(store.get(key) for _ in range(8)))
    assert all(got in (old, new) for got in seen[1:])
    assert await store.get(key) == new


async def test_a_missing_key_is_object_missing(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        await store.get(chunk(USER, UPLOAD, 7))
    await store.put(chunk(USER, UPLOAD, 8), b"x")
    with pytest.raises(ObjectMissing):
        await store.get(chunk(USER, UPLOAD, 7))
    with pytest.raises(ObjectMissing):  # a folder of keys is no key
        await store.get(f"uploads/{USER}/{UPLOAD}")


async def test_delete_prefix_deletes_that_folder_only_and_counts(store: ObjectStore) -> None:
    other_upload = str(uuid.uuid4())
    for index in range(3):
        await store.put(chunk(USER, UPLOAD, index), b"mine")
    await store.put(chunk(USER, other_upload, 0), b"mine too")
    await store.put(chunk(OTHER, UPLOAD, 0), b"someone else's")
    await store.put(f"uploads/{USER}x/{UPLOAD}/00000000", b"a neighbour whose name starts like mine")

    assert await store.delete_prefix(f"uploads/{USER}/{UPLOAD}") == 3
    with pytest.raises(ObjectMissing):
        await store.get(chunk(USER, UPLOAD, 0))
    assert await store.get(chunk(USER, other_upload, 0)) == b"mine too"

    assert await store.delete_prefix(f"uploads/{USER}/") == 1
    assert await store.delete_prefix(f"uploads/{USER}") == 0
    assert await store.get(chunk(OTHER, UPLOAD, 0)) == b"someone else's"
    assert await store.get(f"uploads/{USER}x/{UPLOAD}/00000000") == b"a neighbour whose name starts like mine"
    await store.put(chunk(USER, UPLOAD, 0), b"a new upload after the deletion")
    assert await store.get(chunk(USER, UPLOAD, 0)) == b"a new upload after the deletion"


async def test_delete_prefix_deletes_more_than_one_batch(store: ObjectStore) -> None:
    count = 1_234
    semaphore = asyncio.Semaphore(32)

    async def put(index: int) -> None:
        async with semaphore:
            await store.put(chunk(USER, UPLOAD, index), b"c")

    await asyncio.gather(*(put(index) for index in range(count)))
    await store.put(chunk(OTHER, UPLOAD, 0), b"kept")
    assert await store.delete_prefix(f"uploads/{USER}") == count
    for index in (0, 999, 1_000, count - 1):
        with pytest.raises(ObjectMissing):
            await store.get(chunk(USER, UPLOAD, index))
    assert await store.get(chunk(OTHER, UPLOAD, 0)) == b"kept"


BAD_KEYS = [
    "",
    "/uploads/a/b",
    "uploads/a/b/",
    "uploads//b",
    "uploads/../secrets",
    "..",
    "uploads/./b",
    "uploads/.hidden",
    "uploads/a b",
    "uploads\\a",
    "uploads/ä",
    "uploads/a\x00b",
    "uploads/a\nb",
    "x" * 513,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_are_refused_before_the_store_is_touched(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="not an object key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="not an object key"):
        await store.get(key)
    if key != "uploads/a/b/":  # a folder may be named with a trailing "/"
        with pytest.raises(ValueError, match="not an object key"):
            await store.delete_prefix(key)


async def test_delete_prefix_refuses_an_empty_prefix(store: ObjectStore) -> None:
    await store.put(chunk(USER, UPLOAD, 0), b"x")
    for prefix in ("", "/"):
        with pytest.raises(ValueError, match="not an object key"):
            await store.delete_prefix(prefix)
    assert await store.get(chunk(USER, UPLOAD, 0)) == b"x"


async def test_ping_passes_on_a_usable_store(store: ObjectStore) -> None:
    await store.ping()


# --- local: what the contract leaves to each store


async def test_local_keeps_files_private_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalObjectStore(root)
    await store.put(chunk(USER, UPLOAD, 0), b"first")
    await store.put(chunk(USER, UPLOAD, 0), b"second")
    path = root / chunk(USER, UPLOAD, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (root, *(parent for parent in path.parents if root in parent.parents)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000000"]


async def test_local_delete_prefix_removes_the_emptied_folders(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalObjectStore(root)
    await store.put(chunk(USER, UPLOAD, 0), b"x")
    await store.put(chunk(OTHER, UPLOAD, 0), b"y")
    (root / "uploads" / USER / UPLOAD / ".00000001.abc.tmp").write_bytes(b"an interrupted write")
    assert await store.delete_prefix(f"uploads/{USER}/{UPLOAD}") == 1
    assert not (root / "uploads" / USER).exists()
    assert (root / "uploads" / OTHER / UPLOAD / "00000000").exists()
    assert await store.delete_prefix(f"uploads/{OTHER}") == 1
    assert root.is_dir()
    assert list(root.iterdir()) == []


async def test_local_ping_makes_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data" / "objects"
    await LocalObjectStore(root).ping()
    assert root.is_dir()
    assert list(root.iterdir()) == []
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


async def test_local_ping_and_put_fail_when_the_root_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    store = LocalObjectStore(blocker / "objects")
    with pytest.raises(ObjectStoreError, match="a-file"):
        await store.ping()
    with pytest.raises(ObjectStoreError):
        await store.put(chunk(USER, UPLOAD, 0), b"x")
    if os.geteuid() != 0:  # root writes anywhere
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        with pytest.raises(ObjectStoreError):
            await LocalObjectStore(read_only).ping()


# --- S3: what the contract leaves to each store


async def test_s3_keys_go_under_the_prefix(s3_endpoint: str) -> None:
    bucket = new_bucket(s3_endpoint)
    store = S3ObjectStore(bucket, prefix="athena/prod/", endpoint_url=s3_endpoint, region=REGION)
    await store.put(chunk(USER, UPLOAD, 0), b"x")
    await store.put(chunk(OTHER, UPLOAD, 0), b"y")
    admin = s3_admin(s3_endpoint)
    admin.put_object(Bucket=bucket, Key=f"uploads/{USER}/{UPLOAD}/00000000", Body=b"not ours")
    listed = {item["Key"] for item in admin.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {
        f"athena/prod/{chunk(USER, UPLOAD, 0)}",
        f"athena/prod/{chunk(OTHER, UPLOAD, 0)}",
        f"uploads/{USER}/{UPLOAD}/00000000",
    }
    assert await store.delete_prefix(f"uploads/{USER}") == 1
    assert admin.get_object(Bucket=bucket, Key=f"uploads/{USER}/{UPLOAD}/00000000")["Body"].read() == (
        b"not ours"
    )


async def test_s3_ping_and_calls_fail_on_a_missing_bucket(s3_endpoint: str) -> None:
    store = S3ObjectStore("athena-no-such-bucket", endpoint_url=s3_endpoint, region=REGION)
    with pytest.raises(ObjectStoreError, match="athena-no-such-bucket does not exist"):
        await store.ping()
    with pytest.raises(ObjectStoreError, match="athena-no-such-bucket does not exist"):
        await store.put(chunk(USER, UPLOAD, 0), b"x")
    with pytest.raises(ObjectStoreError, match="athena-no-such-bucket does not exist"):
        await store.get(chunk(USER, UPLOAD, 0))


async def test_s3_ping_fails_when_s3_is_unreachable() -> None:
    from devstack.process import free_port

    store = S3ObjectStore("athena", endpoint_url=f"http://127.0.0.1:{free_port()}", region=REGION)
    with pytest.raises(ObjectStoreError, match="cannot reach S3"):
        await store.ping()


def test_s3_needs_a_bucket_and_a_valid_prefix() -> None:
    with pytest.raises(ValueError, match="bucket"):
        ObjectStoreSettings(backend="s3")
    with pytest.raises(ValueError, match="not an object key"):
        ObjectStoreSettings(backend="s3", bucket="athena", prefix="../athena")
    with pytest.raises(ValueError, match="bucket"):
        S3ObjectStore("")


# --- settings


def test_the_service_keeps_objects_under_its_data_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(("ATHENA_", "INTEGRATIONS_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ATHENA_DATA_DIR", str(tmp_path))
    store = from_settings(IntegrationsSettings().objects)
    assert isinstance(store, LocalObjectStore)
    assert repr(store) == f"LocalObjectStore(root={str(tmp_path / 'objects')!r})"

    monkeypatch.setenv("INTEGRATIONS_OBJECTS__BACKEND", "s3")
    monkeypatch.setenv("INTEGRATIONS_OBJECTS__BUCKET", "athena-uploads")
    monkeypatch.setenv("INTEGRATIONS_OBJECTS__REGION", REGION)
    monkeypatch.setenv("INTEGRATIONS_OBJECTS__PREFIX", "prod/")
    store = from_settings(IntegrationsSettings().objects)
    assert isinstance(store, S3ObjectStore)
    assert repr(store) == (
        f"S3ObjectStore(bucket='athena-uploads', prefix='prod/', endpoint_url=None, region='{REGION}')"
    )
