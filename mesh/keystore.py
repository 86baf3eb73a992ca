"""`mesh.envelope.DataKeyStore` in a PostgreSQL table of the service's own schema.

    CREATE TABLE <schema>.data_keys (
        owner      text PRIMARY KEY,       -- a user id, or a service-wide purpose ("service:lookup-index")
        kek_id     text NOT NULL,          -- the key-encryption key that wrapped it
        wrapped    bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        rotated_at timestamptz
    );

The table holds no readable key: each row opens only through the KMS, with the service and owner as the
wrap's context. Deleting a row is crypto-shredding: the owner's data in every copy of the database is lost.
"""

# ruff: noqa: S608 (queries interpolate only the table name the service gives; values are bound)
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from asyncpg import Pool

from mesh import postgres
from mesh.envelope import Cipher, DataKeys, wrap_context
from mesh.errors import Unavailable
from mesh.kms import DATA_KEY_BYTES, KeyEncryptionKeys, WrappedKey

DATA_KEYS_DDL = """CREATE TABLE {table} (
    owner      text PRIMARY KEY,
    kek_id     text NOT NULL,
    wrapped    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
)"""
"""The table, for a service's migration (`{table}`: schema-qualified name)."""


class PostgresDataKeys:
    def __init__(self, pool: Pool, table: str = "data_keys") -> None:
        self._pool = pool
        self._table = table

    async def get(self, owner: str) -> WrappedKey | None:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"SELECT kek_id, wrapped FROM {self._table} WHERE owner = $1", owner
            )
        return None if row is None else WrappedKey(row["kek_id"], bytes(row["wrapped"]))

    async def get_many(self, owners: Sequence[str]) -> dict[str, WrappedKey]:
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"SELECT owner, kek_id, wrapped FROM {self._table} WHERE owner = ANY($1::text[])",
                list(owners),
            )
        return {row["owner"]: WrappedKey(row["kek_id"], bytes(row["wrapped"])) for row in rows}

    async def add(self, owner: str, wrapped: WrappedKey) -> WrappedKey:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"""INSERT INTO {self._table} (owner, kek_id, wrapped) VALUES ($1, $2, $3)
                    ON CONFLICT (owner) DO NOTHING RETURNING kek_id, wrapped""",
                owner,
                wrapped.kek_id,
                wrapped.blob,
            )
            if row is None:  # added by a concurrent first write: read it in a snapshot that sees it
                row = await self._pool.fetchrow(
                    f"SELECT kek_id, wrapped FROM {self._table} WHERE owner = $1", owner
                )
        if row is None:
            raise Unavailable("a data key was added and deleted at once; try again")
        return WrappedKey(row["kek_id"], bytes(row["wrapped"]))

    async def delete(self, owner: str) -> bool:
        async with postgres.translated():
            deleted = await self._pool.fetchval(
                f"DELETE FROM {self._table} WHERE owner = $1 RETURNING true", owner
            )
        return bool(deleted)

    async def owners(self) -> AsyncIterator[tuple[str, WrappedKey]]:
        after = ""
        while True:
            async with postgres.translated():
                rows = await self._pool.fetch(
                    f"""SELECT owner, kek_id, wrapped FROM {self._table}
                        WHERE owner > $1 ORDER BY owner LIMIT 500""",
                    after,
                )
            for row in rows:
                yield row["owner"], WrappedKey(row["kek_id"], bytes(row["wrapped"]))
            if len(rows) < 500:
                return
            after = rows[-1]["owner"]

    async def replace(self, owner: str, old: WrappedKey, new: WrappedKey) -> bool:
        async with postgres.translated():
            replaced = await self._pool.fetchval(
                f"""UPDATE {self._table} SET kek_id = $3, wrapped = $4, rotated_at = now()
                    WHERE owner = $1 AND wrapped = $2 RETURNING true""",
                owner,
                old.blob,
                new.kek_id,
                new.blob,
            )
        return bool(replaced)


def rewrap_keys(database_url: str, kms: KeyEncryptionKeys, service: str, table: str = "data_keys") -> int:
    """The `rewrap-keys` command of a service storing data keys: every key not wrapped by the KMS's current
    key-encryption key is rewrapped under it, online (the data those keys encrypt is not touched)."""

    async def run() -> tuple[int, int]:
        pool = await postgres.open_pool(database_url, min_size=1, max_size=2)
        try:
            return await DataKeys(PostgresDataKeys(pool, table), kms, service).rewrap_all()
        finally:
            await postgres.close_pool(pool)

    rewrapped, current = asyncio.run(run())
    print(f"rewrapped {rewrapped} data key(s) under {kms.current_kek_id}; {current} already were")
    return 0


def add_key_in_migration(cursor: Any, table: str, kms: KeyEncryptionKeys, service: str, owner: str) -> Cipher:
    """A new data key for `owner`, stored wrapped as `DataKeys` stores it, from a migration encrypting rows
    in place (synchronous: yoyo runs migrations on a DB-API cursor, in a thread of their own)."""
    data_key = os.urandom(DATA_KEY_BYTES)
    wrapped = asyncio.run(kms.wrap(data_key, wrap_context(service, owner)))
    cursor.execute(
        f"INSERT INTO {table} (owner, kek_id, wrapped) VALUES (%s, %s, %s)",
        (owner, wrapped.kek_id, wrapped.blob),
    )
    return Cipher(owner, data_key)
