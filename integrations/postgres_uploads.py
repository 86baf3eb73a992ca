"""`UploadStore` and `HealthStore` on PostgreSQL (`integrations.uploads`, `integrations.health_days`).

Every query names the person (`WHERE user_id = $1`), except the maintenance that finds imports to take over
and abandoned uploads. An upload's file name and declared SHA-256 are sealed with the person's data key; a
health day's metric is a blind token and its value sealed (bound to table, column and the row's place):
a dump shows neither what was uploaded nor what was measured.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime

import asyncpg

from integrations.health import Day, Metric
from integrations.uploads import Appended, Upload, UploadKind, UploadState
from mesh import postgres
from mesh.envelope import Cipher, DataKeys

_COLUMNS = """id, user_id, kind, name_sealed, sha256_sealed, size_bytes, received_bytes, chunk_ends,
    chunk_digests, state, status_message, progress, records_imported, days_imported, created_at, updated_at"""


def _metric_token(cipher: Cipher, metric: Metric) -> bytes:
    return cipher.key_token(f"health_metric:{metric.value}")


class PostgresUploadStore:
    def __init__(self, pool: postgres.Pool, keys: DataKeys) -> None:
        self._pool = pool
        self._keys = keys

    def _upload(self, cipher: Cipher, row: asyncpg.Record) -> Upload:
        upload_id = row["id"]
        return Upload(
            id=str(upload_id),
            user_id=str(row["user_id"]),
            kind=UploadKind(row["kind"]),
            file_name=cipher.open_text("uploads", "name", upload_id, row["name_sealed"]),
            size_bytes=row["size_bytes"],
            sha256=cipher.open_text("uploads", "sha256", upload_id, row["sha256_sealed"]),
            state=UploadState(row["state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            received_bytes=row["received_bytes"],
            chunk_ends=tuple(row["chunk_ends"]),
            chunk_digests=tuple(bytes(d) for d in row["chunk_digests"]),
            status_message=row["status_message"],
            progress=row["progress"],
            records_imported=row["records_imported"],
            days_imported=row["days_imported"],
        )

    async def _uploads(self, rows: list[asyncpg.Record]) -> list[Upload]:
        found = []
        for row in rows:
            cipher = await self._keys.existing(str(row["user_id"]))
            if cipher is not None:
                found.append(self._upload(cipher, row))
        return found

    async def create(self, upload: Upload) -> None:
        cipher = await self._keys.create(upload.user_id)
        upload_id = uuid.UUID(upload.id)
        async with postgres.translated():
            await self._pool.execute(
                """INSERT INTO integrations.uploads
                       (id, user_id, kind, name_sealed, sha256_sealed, size_bytes, state,
                        created_at, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)""",
                upload_id,
                uuid.UUID(upload.user_id),
                upload.kind.value,
                cipher.seal("uploads", "name", upload_id, upload.file_name),
                cipher.seal("uploads", "sha256", upload_id, upload.sha256),
                upload.size_bytes,
                upload.state.value,
                upload.created_at,
            )

    async def get(self, user_id: str, upload_id: str) -> Upload | None:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM integrations.uploads WHERE user_id = $1 AND id = $2",  # noqa: S608
                uuid.UUID(user_id),
                uuid.UUID(upload_id),
            )
        found = await self._uploads([row] if row is not None else [])
        return found[0] if found else None

    async def of_user(self, user_id: str, *, limit: int = 50) -> list[Upload]:
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM integrations.uploads WHERE user_id = $1
                    ORDER BY created_at DESC, id LIMIT $2""",  # noqa: S608 (a constant column list)
                uuid.UUID(user_id),
                limit,
            )
        return await self._uploads(rows)

    async def receiving(self, user_id: str) -> int:
        async with postgres.translated():
            count = await self._pool.fetchval(
                "SELECT count(*) FROM integrations.uploads WHERE user_id = $1 AND state = 'receiving'",
                uuid.UUID(user_id),
            )
        return int(count)

    async def append(
        self, user_id: str, upload_id: str, chunk: Appended, now: datetime, claim_until: datetime | None
    ) -> Upload | None:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"""UPDATE integrations.uploads
                    SET received_bytes = $4, chunk_ends = chunk_ends || $4::bigint,
                        chunk_digests = chunk_digests || $5::bytea, updated_at = $6,
                        state = CASE WHEN $7::timestamptz IS NULL THEN state ELSE 'importing' END,
                        claimed_until = $7
                    WHERE user_id = $1 AND id = $2 AND state = 'receiving' AND received_bytes = $3
                    RETURNING {_COLUMNS}""",  # noqa: S608 (a constant column list)
                uuid.UUID(user_id),
                uuid.UUID(upload_id),
                chunk.offset,
                chunk.end,
                chunk.digest,
                now,
                claim_until,
            )
        found = await self._uploads([row] if row is not None else [])
        return found[0] if found else None

    async def claim(self, now: datetime, until: datetime) -> Upload | None:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"""UPDATE integrations.uploads SET claimed_until = $2
                    WHERE id = (SELECT id FROM integrations.uploads
                                WHERE state = 'importing' AND claimed_until < $1
                                ORDER BY claimed_until LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING {_COLUMNS}""",  # noqa: S608 (a constant column list)
                now,
                until,
            )
        found = await self._uploads([row] if row is not None else [])
        return found[0] if found else None

    async def progressed(self, upload_id: str, progress: float, now: datetime, until: datetime) -> bool:
        async with postgres.translated():
            updated = await self._pool.fetchval(
                """UPDATE integrations.uploads SET progress = $2, updated_at = $3, claimed_until = $4
                   WHERE id = $1 AND state = 'importing' RETURNING true""",
                uuid.UUID(upload_id),
                progress,
                now,
                until,
            )
        return bool(updated)

    async def finish(
        self, upload_id: str, state: UploadState, message: str, records: int, days: int, now: datetime
    ) -> None:
        async with postgres.translated():
            await self._pool.execute(
                """UPDATE integrations.uploads
                   SET state = $2, status_message = $3, records_imported = $4, days_imported = $5,
                       progress = CASE WHEN $2 = 'imported' THEN 1 ELSE progress END,
                       updated_at = $6, claimed_until = NULL
                   WHERE id = $1 AND state = 'importing'""",
                uuid.UUID(upload_id),
                state.value,
                message,
                records,
                days,
                now,
            )

    async def delete(self, user_id: str, upload_id: str) -> bool:
        async with postgres.translated():
            deleted = await self._pool.fetchval(
                "DELETE FROM integrations.uploads WHERE user_id = $1 AND id = $2 RETURNING true",
                uuid.UUID(user_id),
                uuid.UUID(upload_id),
            )
        return bool(deleted)

    async def stale(self, before: datetime) -> list[Upload]:
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM integrations.uploads
                    WHERE state = 'receiving' AND updated_at < $1 LIMIT 100""",  # noqa: S608
                before,
            )
        return await self._uploads(rows)

    async def purge_user(self, user_id: str) -> int:
        async with postgres.translated():
            status = await self._pool.execute(
                "DELETE FROM integrations.uploads WHERE user_id = $1", uuid.UUID(user_id)
            )
        return int(status.split()[-1])


class PostgresHealthStore:
    def __init__(self, pool: postgres.Pool, keys: DataKeys) -> None:
        self._pool = pool
        self._keys = keys

    async def replace(self, user_id: str, source: str, days: Mapping[Metric, list[Day]]) -> int:
        # Never a new key: an import racing its owner's erasure must not give them one back (NoDataKey).
        cipher = await self._keys.cipher(user_id)
        uid = uuid.UUID(user_id)
        rows = [
            (
                uid,
                _metric_token(cipher, metric),
                day.day,
                source,
                cipher.seal(
                    "health_days",
                    "value",
                    f"{metric.value}/{day.day.isoformat()}/{source}",
                    json.dumps([day.value, day.min, day.max]),
                ),
            )
            for metric, found in days.items()
            for day in found
        ]
        async with postgres.translated(), self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "DELETE FROM integrations.health_days WHERE user_id = $1 AND source = $2", uid, source
            )
            await connection.copy_records_to_table(
                "health_days",
                schema_name="integrations",
                columns=("user_id", "metric_token", "day", "source", "value_sealed"),
                records=rows,
            )
        return len(rows)

    async def days(self, user_id: str, metric: Metric, start: date, end: date) -> list[Day]:
        cipher = await self._keys.existing(user_id)
        if cipher is None:
            return []
        async with postgres.translated():
            rows = await self._pool.fetch(
                """SELECT day, source, value_sealed FROM integrations.health_days
                   WHERE user_id = $1 AND metric_token = $2 AND day BETWEEN $3 AND $4
                   ORDER BY day, source""",
                uuid.UUID(user_id),
                _metric_token(cipher, metric),
                start,
                end,
            )
        found = []
        for row in rows:
            place = f"{metric.value}/{row['day'].isoformat()}/{row['source']}"
            value, low, high = json.loads(
                cipher.open_text("health_days", "value", place, row["value_sealed"])
            )
            found.append(Day(row["day"], value, low, high, row["source"]))
        return found

    async def has_days(self, user_id: str) -> bool:
        async with postgres.translated():
            found = await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM integrations.health_days WHERE user_id = $1)",
                uuid.UUID(user_id),
            )
        return bool(found)

    async def purge_user(self, user_id: str) -> int:
        async with postgres.translated():
            status = await self._pool.execute(
                "DELETE FROM integrations.health_days WHERE user_id = $1", uuid.UUID(user_id)
            )
        return int(status.split()[-1])
