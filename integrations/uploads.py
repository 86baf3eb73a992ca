"""A person's uploads: resumable, checked, sealed, and imported in the background.

An upload is declared (kind, name, size, SHA-256), then its bytes arrive in order as chunks, each at the
offset the upload has reached and each with its own SHA-256; a chunk sent again after a lost answer is
answered as the first time. Every chunk is sealed with the person's data key (`mesh.envelope`, bound to
the upload and the chunk's place) and kept in object storage (`integrations.objects`) under a key naming
its digest, so two writers racing for one offset never mix their bytes: only the chunk the database
accepted is ever read.

When the last byte is in, the upload is IMPORTING and this replica claims it (a lease in the database,
extended as the import advances; a replica that dies mid-import leaves a lease that runs out, and another
replica takes the upload over). The import checks the whole file's SHA-256, reads it (`integrations
.apple_health`), and replaces what an earlier export of the person's brought in, in one transaction — so
importing the same export again changes nothing, and a file that fails half-way keeps nothing. The file's
bytes are deleted once it is imported or has failed: what stays is its record and the days read from it.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import io
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from integrations.apple_health import ExportRead, ExportUnreadable, read_export
from integrations.health import APPLE_HEALTH, Day, Metric
from integrations.objects import ObjectMissing, ObjectStore
from mesh.envelope import Cipher, DataKeys
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 2 * 1024 * 1024
"""The largest chunk AppendChunk takes (the contract's limit)."""
LEASE = timedelta(seconds=60)
"""How long an import's claim lasts without progress before another replica may take it over."""
PROGRESS_EVERY_SECONDS = 1.0


class UploadKind(StrEnum):
    APPLE_HEALTH_EXPORT = "apple_health_export"


class UploadState(StrEnum):
    RECEIVING = "receiving"
    IMPORTING = "importing"
    IMPORTED = "imported"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    user_id: str
    kind: UploadKind
    file_name: str
    size_bytes: int
    sha256: str
    """The whole file's SHA-256, as declared (hex)."""
    state: UploadState
    created_at: datetime
    updated_at: datetime
    received_bytes: int = 0
    chunk_ends: tuple[int, ...] = ()
    chunk_digests: tuple[bytes, ...] = ()
    status_message: str = ""
    progress: float = 0.0
    records_imported: int = 0
    days_imported: int = 0


@dataclass(frozen=True, slots=True)
class Appended:
    """A chunk the store accepted."""

    offset: int
    end: int
    digest: bytes


class UploadStore(Protocol):
    async def create(self, upload: Upload) -> None: ...

    async def get(self, user_id: str, upload_id: str) -> Upload | None: ...

    async def of_user(self, user_id: str, *, limit: int = 50) -> list[Upload]: ...

    async def receiving(self, user_id: str) -> int:
        """How many of the user's uploads are RECEIVING."""
        ...

    async def append(
        self, user_id: str, upload_id: str, chunk: Appended, now: datetime, claim_until: datetime | None
    ) -> Upload | None:
        """Records `chunk` if the upload is RECEIVING at `chunk.offset`; with `claim_until` (the last chunk)
        it becomes IMPORTING, claimed until then. None when it was not (the caller reads why)."""
        ...

    async def claim(self, now: datetime, until: datetime) -> Upload | None:
        """An IMPORTING upload whose claim has run out, now claimed until `until`."""
        ...

    async def progressed(self, upload_id: str, progress: float, now: datetime, until: datetime) -> bool:
        """Records progress and extends the claim; False when the upload is gone."""
        ...

    async def finish(
        self, upload_id: str, state: UploadState, message: str, records: int, days: int, now: datetime
    ) -> None: ...

    async def delete(self, user_id: str, upload_id: str) -> bool: ...

    async def stale(self, before: datetime) -> list[Upload]:
        """RECEIVING uploads untouched since `before`."""
        ...

    async def purge_user(self, user_id: str) -> int: ...


class HealthStore(Protocol):
    async def replace(self, user_id: str, source: str, days: Mapping[Metric, list[Day]]) -> int:
        """Replaces every day of `source` the user has with `days`, at once; answers the rows written."""
        ...

    async def days(self, user_id: str, metric: Metric, start: Any, end: Any) -> list[Day]:
        """The user's stored days of `metric` with start <= day <= end, by day."""
        ...

    async def purge_user(self, user_id: str) -> int: ...


def chunk_key(upload: Upload, index: int) -> str:
    return f"uploads/{upload.user_id}/{upload.id}/{index:06d}-{upload.chunk_digests[index].hex()[:16]}"


def _prefix(user_id: str, upload_id: str | None = None) -> str:
    return f"uploads/{user_id}/{upload_id}/" if upload_id else f"uploads/{user_id}/"


class _Cancelled(Exception):
    """The upload was deleted while it was being imported."""


class ChunkFile(io.RawIOBase):
    """An upload's bytes as a seekable file, for a worker thread: each chunk fetched and opened when read
    (one chunk held at a time), through the event loop that owns the object store."""

    def __init__(
        self,
        upload: Upload,
        fetch: Callable[[int], Coroutine[Any, Any, bytes]],
        loop: asyncio.AbstractEventLoop,
    ):
        self._upload = upload
        self._fetch = fetch
        self._loop = loop
        self._position = 0
        self._held: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._upload.size_bytes}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def _chunk(self, index: int) -> bytes:
        if self._held is None or self._held[0] != index:
            data = asyncio.run_coroutine_threadsafe(self._fetch(index), self._loop).result()
            self._held = (index, data)
        return self._held[1]

    def readinto(self, buffer: Any) -> int:
        ends = self._upload.chunk_ends
        if self._position >= self._upload.size_bytes:
            return 0
        index = bisect.bisect_right(ends, self._position)  # the chunk holding the position
        start = ends[index - 1] if index else 0
        data = self._chunk(index)
        piece = data[self._position - start : self._position - start + len(buffer)]
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)


class Uploads:
    def __init__(
        self,
        store: UploadStore,
        objects: ObjectStore,
        keys: DataKeys,
        health: HealthStore,
        *,
        clock: Callable[[], datetime],
        max_bytes: int,
        max_receiving: int = 5,
        import_concurrency: int = 1,
    ) -> None:
        self._store = store
        self._objects = objects
        self._keys = keys
        self._health = health
        self._now = clock
        self._max_bytes = max_bytes
        self._max_receiving = max_receiving
        self._importing = asyncio.Semaphore(import_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- receiving ------------------------------------------------------------------------------------

    async def create(self, user_id: str, kind: UploadKind, file_name: str, size: int, sha256: str) -> Upload:
        if size > self._max_bytes:
            raise InvalidArgument(
                "size_bytes", f"{size:,} bytes is over this deployment's limit of {self._max_bytes:,} bytes"
            )
        if await self._store.receiving(user_id) >= self._max_receiving:
            raise ResourceExhausted(
                f"{self._max_receiving} uploads are already waiting for their bytes: "
                "finish or delete one first"
            )
        now = self._now()
        upload = Upload(
            id=str(uuid.uuid4()),
            user_id=user_id,
            kind=kind,
            file_name=file_name,
            size_bytes=size,
            sha256=sha256,
            state=UploadState.RECEIVING,
            created_at=now,
            updated_at=now,
        )
        await self._keys.create(user_id)
        await self._store.create(upload)
        return upload

    async def append(self, user_id: str, upload_id: str, offset: int, data: bytes, sha256: str) -> Upload:
        digest = hashlib.sha256(data).digest()
        if digest.hex() != sha256:
            raise InvalidArgument("sha256", "does not match the chunk's bytes: send the chunk again")
        upload = await self.get(user_id, upload_id)
        if (
            upload.chunk_ends
            and offset + len(data) == upload.received_bytes
            and digest == upload.chunk_digests[-1]
        ):
            return upload  # the chunk just accepted, sent again after a lost answer
        self._check_place(upload, offset, len(data))
        index = len(upload.chunk_ends)
        accepted = replace(upload, chunk_digests=(*upload.chunk_digests, digest))
        cipher = await self._keys.cipher(user_id)
        sealed = cipher.seal("uploads", "chunk", f"{upload.id}/{index}", data)
        await self._objects.put(chunk_key(accepted, index), sealed)
        end = offset + len(data)
        now = self._now()
        last = end == upload.size_bytes
        stored = await self._store.append(
            user_id, upload_id, Appended(offset, end, digest), now, now + LEASE if last else None
        )
        if stored is None:  # another chunk took this place meanwhile
            self._check_place(await self.get(user_id, upload_id), offset, len(data))
            raise FailedPrecondition(
                "the upload changed meanwhile: ask where it stands (GetUpload) and go on"
            )
        if last:
            self._start(stored)
        return stored

    def _check_place(self, upload: Upload, offset: int, size: int) -> None:
        if upload.state is not UploadState.RECEIVING:
            raise FailedPrecondition(f"the upload has all its bytes already (it is {upload.state.value})")
        if offset != upload.received_bytes:
            raise FailedPrecondition(
                f"the upload stands at byte {upload.received_bytes:,}, not {offset:,}: "
                "send the chunk from there"
            )
        if offset + size > upload.size_bytes:
            raise InvalidArgument(
                "data",
                f"would end at byte {offset + size:,}, past the declared size of {upload.size_bytes:,}",
            )

    async def get(self, user_id: str, upload_id: str) -> Upload:
        upload = await self._store.get(user_id, upload_id)
        if upload is None:
            raise NotFound(f"no upload {upload_id}")
        return upload

    async def of_user(self, user_id: str) -> list[Upload]:
        return await self._store.of_user(user_id)

    async def delete(self, user_id: str, upload_id: str) -> None:
        if await self._store.delete(user_id, upload_id):
            await self._objects.delete_prefix(_prefix(user_id, upload_id))

    async def purge(self, user_id: str) -> int:
        """Deletes every upload of the user's, their bytes and the health data read from them."""
        rows = await self._store.purge_user(user_id)
        await self._objects.delete_prefix(_prefix(user_id))
        return rows + await self._health.purge_user(user_id)

    # -- importing ------------------------------------------------------------------------------------

    def _start(self, upload: Upload) -> None:
        task = asyncio.create_task(self._import(upload), name=f"import {upload.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Waits for the imports under way (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def maintain(self, receiving_ttl: timedelta) -> None:
        """Takes over imports whose replica stopped; deletes uploads left RECEIVING for `receiving_ttl`."""
        now = self._now()
        while (claimed := await self._store.claim(now, now + LEASE)) is not None:
            log.info("taking over an import whose claim ran out", extra={"upload_id": claimed.id})
            self._start(claimed)
        for upload in await self._store.stale(now - receiving_ttl):
            await self.delete(upload.user_id, upload.id)

    async def _chunk(self, cipher: Cipher, upload: Upload, index: int) -> bytes:
        try:
            sealed = await self._objects.get(chunk_key(upload, index))
        except ObjectMissing:
            raise _Cancelled from None
        return cipher.open("uploads", "chunk", f"{upload.id}/{index}", sealed)

    async def _import(self, upload: Upload) -> None:
        async with self._importing:
            try:
                cipher = await self._keys.cipher(upload.user_id)
                await self._verify(cipher, upload)
                read = await self._read(cipher, upload)
                await self._health.replace(upload.user_id, APPLE_HEALTH, read.days)
            except _Cancelled:
                log.info(
                    "an upload was deleted while importing; nothing kept", extra={"upload_id": upload.id}
                )
                return
            except ExportUnreadable as exc:
                await self._finish(upload, UploadState.FAILED, exc.message)
                return
            except Exception:
                log.exception("importing an upload failed", extra={"upload_id": upload.id})
                await self._finish(
                    upload, UploadState.FAILED, "The import failed on our side: upload it again later."
                )
                return
            await self._finish(upload, UploadState.IMPORTED, "", read.records, read.day_count)

    async def _finish(
        self, upload: Upload, state: UploadState, message: str, records: int = 0, days: int = 0
    ) -> None:
        await self._store.finish(upload.id, state, message, records, days, self._now())
        await self._objects.delete_prefix(_prefix(upload.user_id, upload.id))

    async def _verify(self, cipher: Cipher, upload: Upload) -> None:
        digest = hashlib.sha256()
        for index in range(len(upload.chunk_ends)):
            digest.update(await self._chunk(cipher, upload, index))
        if digest.hexdigest() != upload.sha256:
            raise ExportUnreadable(
                "The file that arrived does not match the SHA-256 declared for it: upload it again."
            )

    async def _read(self, cipher: Cipher, upload: Upload) -> ExportRead:
        loop = asyncio.get_running_loop()
        last = [0.0]
        alive = [True]

        async def report(share: float) -> None:
            now = self._now()
            alive[0] = await self._store.progressed(upload.id, share, now, now + LEASE)

        def progress(share: float) -> None:
            moment = time.monotonic()
            if moment - last[0] >= PROGRESS_EVERY_SECONDS:
                last[0] = moment
                asyncio.run_coroutine_threadsafe(report(share), loop).result()
                if not alive[0]:
                    raise _Cancelled

        def read() -> ExportRead:
            with ChunkFile(upload, lambda index: self._chunk(cipher, upload, index), loop) as raw:
                return read_export(io.BufferedReader(raw, 1 << 20), progress)

        return await asyncio.to_thread(read)
