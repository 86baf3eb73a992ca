"""`mesh.postgres`'s pool against a real PostgreSQL: what its connections learn about types, and from whom."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from devstack.postgres import EmbeddedPostgres
from mesh.postgres import PooledConnection, close_pool, open_pool


@pytest.fixture
def introspected(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The type OIDs asyncpg's introspection query is run for, call by call, from a process that has
    learnt no type yet."""
    monkeypatch.setattr(PooledConnection, "_builtin_types", {})
    calls: list[list[int]] = []
    real = asyncpg.Connection._introspect_types  # type: ignore[attr-defined]

    async def counting(self: asyncpg.Connection, typeoids: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        calls.append(sorted(typeoids))
        return await real(self, typeoids, timeout)

    monkeypatch.setattr(asyncpg.Connection, "_introspect_types", counting)
    return calls


async def test_built_in_types_are_introspected_once_per_process(
    postgres: EmbeddedPostgres, introspected: list[list[int]]
) -> None:
    """Arrays of built-in types (uuid[], bytea[], record[]: asyncpg knows none of them by itself) are looked
    up by the first connection that meets them; another connection, of this pool or another, decodes them
    from what it learnt, without the catalog query."""
    first_pool = await open_pool(postgres.url, max_size=1)
    second_pool = await open_pool(postgres.url, max_size=1)
    ids = [uuid.uuid4(), uuid.uuid4()]
    try:
        for pool in (first_pool, second_pool):
            async with pool.acquire() as connection:
                assert await connection.fetchval("SELECT $1::uuid[]", ids) == ids
                row = await connection.fetchrow(
                    "SELECT ARRAY(SELECT (n, '\\xff'::bytea) FROM generate_series(1, 2) AS n) AS pairs,"
                    " $1::bytea[] AS words",
                    [b"a", b"b"],
                )
                assert row is not None
                assert (row["pairs"], row["words"]) == ([(1, b"\xff"), (2, b"\xff")], [b"a", b"b"])
    finally:
        await close_pool(first_pool)
        await close_pool(second_pool)
    assert introspected == [[2951], [1001, 2287]]  # uuid[]; bytea[] and record[]: the first pool's only


async def test_types_of_the_schema_are_introspected_by_every_connection(
    postgres: EmbeddedPostgres, introspected: list[list[int]]
) -> None:
    """A type made by `CREATE TYPE` (or an extension) can be dropped and made again under another OID, so
    what a connection learnt of it is not shared."""
    schema = f"types_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres.superuser_url)
    first_pool = await open_pool(postgres.superuser_url, max_size=1)
    second_pool = await open_pool(postgres.superuser_url, max_size=1)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}; CREATE TYPE {schema}.mood AS ENUM ('calm', 'busy')")
        mood = await admin.fetchval(f"SELECT '{schema}.mood'::regtype::oid")
        for pool in (first_pool, second_pool):
            async with pool.acquire() as connection:
                assert await connection.fetchval(f"SELECT 'busy'::{schema}.mood") == "busy"
    finally:
        await close_pool(first_pool)
        await close_pool(second_pool)
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    assert introspected == [[mood], [mood]]
