"""Object storage for what people upload: opaque bytes under a key, in a directory or an S3 bucket.

The store keeps bytes and knows nothing of what they are: the caller encrypts before `put` and decrypts
after `get`, so neither the disk nor the bucket ever holds a person's data in the clear.

- `LocalObjectStore`, the embedded default (`make run`, single-node installs, the dev overlay): one file
  per key under a root directory (by default `<ATHENA_DATA_DIR>/objects`).
- `S3ObjectStore`: an S3 bucket (AWS S3, or any S3-compatible server) through boto3, the official client.

A key is a path of segments joined by "/", such as `uploads/<user uuid>/<upload uuid>/00000042`: each
segment starts with a letter or digit and holds only letters, digits, ".", "_" and "-" (so no "..", no
hidden names, no leading, trailing or doubled "/"). A key is never also the folder of other keys (a file
cannot be both). Anything else is refused with `ValueError` before the store is touched.

    ObjectMissing       `get` of a key that is not there
    ObjectStoreError    the store is unusable: unreachable, credentials refused, bucket missing, root not
                        writable; its message names the store and the cause, never the data
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import boto3
from botocore import exceptions as aws
from botocore.config import Config
from pydantic import BaseModel, ConfigDict, model_validator

from mesh.kms_aws import client_config

_T = TypeVar("_T")

MAX_KEY_LENGTH = 512
"""Longest key (S3 allows 1,024 bytes, with the store's prefix in front)."""
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_DELETE_BATCH = 1000
"""Most keys one DeleteObjects may name."""


class ObjectMissing(Exception):
    """`get` of a key that is not there."""


class ObjectStoreError(Exception):
    """The store cannot be used (its message says which store and why)."""


def check_key(key: str) -> str:
    """`key` itself when it is a valid key (see the module's docstring); raises `ValueError` otherwise."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise ValueError(
            f"{key!r} is not an object key: segments of letters, digits, '.', '_' and '-' joined by '/', "
            f"each starting with a letter or digit, at most {MAX_KEY_LENGTH} characters"
        )
    return key


def _check_prefix(prefix: str) -> str:
    """A folder of keys ("uploads/<user>", a trailing "/" allowed) without its trailing "/"."""
    return check_key(prefix[:-1] if prefix.endswith("/") else prefix)


class ObjectStore(Protocol):
    """Bytes under keys. Keys are validated first (`ValueError`)."""

    async def put(self, key: str, data: bytes) -> None:
        """Stores `data` under `key`, replacing what was there; atomic: a reader sees the old bytes or the
        new ones, never part of them."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under `key`; raises `ObjectMissing` when there are none."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every key in the folder `prefix` ("uploads/<user>" deletes "uploads/<user>/…", never
        "uploads/<user>x/…"); returns how many were deleted."""
        ...

    async def ping(self) -> None:
        """Readiness: returns when the store can be read and written, raises `ObjectStoreError` otherwise."""
        ...


class LocalObjectStore:
    """One file per key under `root`: directories 0700, files 0600, written whole to a temporary file in the
    same directory, flushed to disk and renamed over the key (so a crash leaves the old bytes or the new).
    Filesystem calls run in worker threads (`asyncio.to_thread`)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self._root)!r})"

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        await asyncio.to_thread(self._guarded, "write", key, lambda: self._write(path, data))

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        return await asyncio.to_thread(self._guarded, "read", key, lambda: self._read(path, key))

    async def delete_prefix(self, prefix: str) -> int:
        folder = self._root / _check_prefix(prefix)
        return await asyncio.to_thread(self._guarded, "delete", prefix, lambda: self._delete(folder))

    async def ping(self) -> None:
        await asyncio.to_thread(self._guarded, "write", "a probe", self._probe)

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

    def _guarded(self, action: str, what: str, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except OSError as exc:
            raise ObjectStoreError(
                f"cannot {action} {what} in the object store at {self._root}: {exc.strerror or exc}"
            ) from exc

    def _make_dirs(self, directory: Path) -> None:
        """`directory` and every missing folder up to it (the root included), each 0700."""
        missing = []
        for folder in (directory, *directory.parents):
            if folder.is_dir():
                break
            missing.append(folder)
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)

    def _write(self, path: Path, data: bytes) -> None:
        # A concurrent delete_prefix may remove an emptied folder between making it and writing there:
        # make it again once.
        for attempt in (1, 2):
            self._make_dirs(path.parent)
            try:
                self._replace(path, data)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        # mkstemp makes the file 0600; a leading "." keeps it apart from keys, which cannot start with one.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)

    @staticmethod
    def _read(path: Path, key: str) -> bytes:
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(key) from None

    def _delete(self, folder: Path) -> int:
        if not folder.is_dir() or folder.is_symlink():
            return 0
        deleted = 0
        for directory, subdirectories, files in os.walk(folder, topdown=False):
            for name in files:
                os.unlink(os.path.join(directory, name))
                deleted += not name.startswith(".")  # an interrupted write's temporary file is no key
            for name in subdirectories:
                with contextlib.suppress(OSError):  # not empty: a write made it again
                    os.rmdir(os.path.join(directory, name))
        # The folder itself, then its parents as long as they are empty, down to (not including) the root.
        for emptied in (folder, *folder.parents):
            if emptied == self._root or self._root not in emptied.parents:
                break
            try:
                emptied.rmdir()
            except OSError:  # not empty (a key elsewhere in it, or a write just made it again)
                break
        return deleted

    def _probe(self) -> None:
        self._make_dirs(self._root)
        if not self._root.is_dir():
            raise NotADirectoryError(20, "not a directory", str(self._root))
        descriptor, probe = tempfile.mkstemp(dir=self._root, prefix=".ping.", suffix=".tmp")
        try:
            os.write(descriptor, b"ping")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            os.unlink(probe)


def _fsync_directory(directory: Path) -> None:
    """Makes a rename in `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_CODES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"NoSuchBucket"}), "the bucket {bucket} does not exist"),
    (
        frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}),
        "S3 denied {operation} on {bucket}: the service's role must allow s3:PutObject, s3:GetObject, "
        "s3:DeleteObject and s3:ListBucket on it",
    ),
    (
        frozenset(
            {
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "ExpiredToken",
                "InvalidToken",
                "TokenRefreshRequired",
            }
        ),
        "S3 does not accept this service's AWS credentials",
    ),
    (frozenset({"404", "NotFound"}), "the bucket {bucket} does not exist"),
    (frozenset({"SlowDown", "503", "ServiceUnavailable"}), "S3 is throttling {operation} on {bucket}"),
    (frozenset({"InternalError", "500"}), "S3 failed {operation} on {bucket}"),
)
"""S3 error code → message ({operation}, {bucket}), most specific first. `NoSuchKey` is `ObjectMissing`,
handled where it can happen (GetObject). HeadBucket has no body: its codes are the HTTP statuses."""


class S3ObjectStore:
    """Objects in an S3 bucket (under `prefix`, a folder such as "athena/"), through boto3.

    boto3 is synchronous: every call runs in a worker thread (`asyncio.to_thread`), and so does making the
    client on first use (finding credentials may itself be a request). Credentials come from boto3's default
    chain (environment, web identity token — IRSA on EKS —, shared config, container or instance metadata);
    `endpoint_url` names an S3-compatible server or a VPC endpoint (path-style addressing then). `client`
    replaces the one built from these (it must be safe to share between threads, as boto3's clients are).
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("no S3 bucket")
        self._bucket = bucket
        self._prefix = f"{_check_prefix(prefix)}/" if prefix else ""
        self._endpoint_url = endpoint_url
        self._region = region
        self._client: Any = client
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"S3ObjectStore(bucket={self._bucket!r}, prefix={self._prefix!r}, "
            f"endpoint_url={self._endpoint_url!r}, region={self._region!r})"
        )

    async def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        await self._call("PutObject", lambda s3: s3.put_object(Bucket=self._bucket, Key=name, Body=data))

    async def get(self, key: str) -> bytes:
        name = self._name(key)

        def read(s3: Any) -> bytes:
            try:
                response = s3.get_object(Bucket=self._bucket, Key=name)
            except aws.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                    raise ObjectMissing(key) from None
                raise
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        return await self._call("GetObject", read)

    async def delete_prefix(self, prefix: str) -> int:
        folder = f"{self._prefix}{_check_prefix(prefix)}/"
        return await self._call("DeleteObjects", lambda s3: self._delete(s3, folder))

    async def ping(self) -> None:
        await self._call("HeadBucket", lambda s3: s3.head_bucket(Bucket=self._bucket))

    def _name(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _delete(self, s3: Any, folder: str) -> int:
        deleted = 0
        for batch in _batches(self._listed(s3, folder), _DELETE_BATCH):
            response = s3.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise ObjectStoreError(
                    f"S3 did not delete {len(errors)} of {len(batch)} objects in {self._bucket} "
                    f"(first: {first.get('Code')}: {first.get('Message')})"
                )
            deleted += len(batch)
        return deleted

    def _listed(self, s3: Any, folder: str) -> Iterator[str]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=folder):
            for item in page.get("Contents", []):
                yield item["Key"]

    async def _call(self, operation: str, request: Callable[[Any], _T]) -> _T:
        return await asyncio.to_thread(self._call_sync, operation, request)

    def _call_sync(self, operation: str, request: Callable[[Any], _T]) -> _T:
        try:
            return request(self._s3())
        except aws.ClientError as exc:
            raise self._translate(exc, operation) from exc
        except aws.ParamValidationError as exc:
            raise ObjectStoreError(f"S3 {operation}: the client refused the request ({exc})") from exc
        except (aws.NoCredentialsError, aws.PartialCredentialsError, aws.CredentialRetrievalError) as exc:
            raise ObjectStoreError(
                f"no usable AWS credentials for S3 ({exc}): boto3's default chain looks in the environment, "
                "a web identity token (IRSA), the shared config, and container or instance metadata"
            ) from exc
        except (aws.ConnectionError, aws.HTTPClientError) as exc:
            raise ObjectStoreError(f"cannot reach S3 for {operation} on {self._bucket}: {exc}") from exc
        except aws.BotoCoreError as exc:
            raise ObjectStoreError(
                f"the S3 client failed in {operation} on {self._bucket} ({type(exc).__name__})"
            ) from exc

    def _translate(self, exc: aws.ClientError, operation: str) -> ObjectStoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = f" ({code}: {error['Message']})" if error.get("Message") else f" ({code})"
        for codes, message in _CODES:
            if code in codes:
                return ObjectStoreError(message.format(operation=operation, bucket=self._bucket) + detail)
        return ObjectStoreError(f"S3 refused {operation} on {self._bucket}{detail}")

    def _s3(self) -> Any:
        with self._client_lock:
            if self._client is None:
                config = client_config()
                if self._endpoint_url is not None:
                    config = config.merge(Config(s3={"addressing_style": "path"}))
                # A session of our own: boto3's default session is not safe to share between threads.
                self._client = boto3.session.Session().client(
                    "s3", region_name=self._region, endpoint_url=self._endpoint_url, config=config
                )
            return self._client


def _batches(names: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for name in names:
        batch.append(name)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ObjectStoreSettings(BaseModel):
    """Where the integrations service keeps uploads (`INTEGRATIONS_OBJECTS__BACKEND`, `…__ROOT`, …)."""

    model_config = ConfigDict(frozen=True)

    backend: Literal["local", "s3"] = "local"
    """"local": files under `root`; "s3": the bucket `bucket` (credentials from boto3's default chain)."""
    root: Path = Path("var") / "objects"
    """The local backend's directory. The integrations service puts it at `<ATHENA_DATA_DIR>/objects` when no
    `INTEGRATIONS_OBJECTS__*` variable is set; set it whenever the others are (this default is relative to
    the working directory, as the data directory's own default `var` is)."""
    bucket: str = ""
    """The S3 bucket (required with "s3")."""
    prefix: str = ""
    """A folder of the bucket the keys go under ("athena/"); empty for the bucket's root."""
    endpoint_url: str | None = None
    """Another S3 endpoint: an S3-compatible server, a VPC endpoint without private DNS, an emulator."""
    region: str | None = None
    """The bucket's AWS region (else boto3's: `AWS_REGION`, the shared config)."""

    @model_validator(mode="after")
    def _complete(self) -> ObjectStoreSettings:
        if self.backend == "s3" and not self.bucket:
            raise ValueError("the s3 object store needs a bucket (INTEGRATIONS_OBJECTS__BUCKET)")
        if self.prefix:
            _check_prefix(self.prefix)
        return self


def from_settings(settings: ObjectStoreSettings) -> ObjectStore:
    """The store `settings` describe (nothing is contacted before the first call)."""
    if settings.backend == "s3":
        return S3ObjectStore(
            settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
        )
    return LocalObjectStore(settings.root)
