"""Versioned schema migrations (yoyo-migrations, files in memory/migrations/, ids prefixed `memory_`).

They run on start-up, before the connection pool opens, and by `python -m memory migrate`. yoyo takes a
lock in the database, so replicas starting together apply each migration once.

The embedding column's dimension follows the configured embedding model: the first migration creates
`vector(N)` with the dimension configured when it runs. A database created for another dimension is not
altered behind anyone's back (existing vectors would be meaningless); start-up stops with a clear error
instead (`check_embedding_dimension`), and changing models means a new migration that re-embeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_dimension: ContextVar[int | None] = ContextVar("memory_migration_dimension", default=None)


class SchemaMismatch(RuntimeError):
    """The database was migrated for another embedding dimension than the one configured."""


def render_schema() -> str:
    """memory/schema.sql with the dimension of the migration run in progress."""
    dimension = _dimension.get()
    if dimension is None:
        raise RuntimeError("memory migrations run through memory.migrate.apply_migrations only")
    sql = resources.files("memory").joinpath("schema.sql").read_text(encoding="utf-8")
    return sql.replace("{dimension}", str(int(dimension)))


def _yoyo_url(database_url: str) -> str:
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"unsupported database URL scheme {parts.scheme!r} (expected postgresql://)")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


@contextlib.contextmanager
def _rendering(dimension: int) -> Iterator[None]:
    token = _dimension.set(dimension)
    try:
        yield
    finally:
        _dimension.reset(token)


def apply_migrations(database_url: str, dimension: int) -> list[str]:
    """Applies the pending migrations and checks the embedding dimension; returns the ids applied."""
    backend = get_backend(_yoyo_url(database_url))
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with _rendering(dimension), backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        applied = [migration.id for migration in pending]
    finally:
        backend.connection.close()
    check_embedding_dimension(database_url, dimension)
    if applied:
        log.info("migrations applied", extra={"migrations": applied})
    return applied


def check_embedding_dimension(database_url: str, dimension: int) -> None:
    """Raises SchemaMismatch when `vector_memory.embedding` is not `vector(dimension)`."""
    with psycopg.connect(database_url, connect_timeout=5) as connection:
        row = connection.execute(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'vector_memory'::regclass AND attname = 'embedding'"
        ).fetchone()
    actual = int(row[0]) if row is not None else None
    if actual != dimension:
        raise SchemaMismatch(
            f"vector_memory.embedding has {actual} dimensions but MEMORY_EMBEDDING_DIMENSION is {dimension}: "
            "configure the dimension the database was created with, or add a migration that re-embeds"
        )


async def migrate(database_url: str, dimension: int, *, wait_seconds: float = 0.0) -> list[str]:
    """`apply_migrations` off the event loop, retrying for up to `wait_seconds` while PostgreSQL is not
    reachable yet (it may be starting next to us)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await asyncio.to_thread(apply_migrations, database_url, dimension)
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database not reachable yet, retrying migrations: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
