"""Versioned schema migrations with yoyo: one runner for every service sharing the database.

Each service keeps its migrations in its own directory with ids prefixed by the service (`auth_0001...`,
`memory_0001...`), so they share one yoyo history table. They run on start-up, before the service opens
its pool, and by `python -m <service> migrate`; yoyo takes a lock in the database, so replicas starting
together apply each migration once.

A migration that needs deployment values (memory's embedding dimension) reads them with
`migration_variable(name)`, set for the duration of one `apply_migrations` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit, urlunsplit

import psycopg
from yoyo import get_backend, read_migrations

from mesh.retry import until_reachable

log = logging.getLogger(__name__)

_variables: ContextVar[Mapping[str, str] | None] = ContextVar("migration_variables", default=None)
_objects: ContextVar[Mapping[str, object] | None] = ContextVar("migration_objects", default=None)


def migration_variable(name: str) -> str:
    """A value passed to the `apply_migrations` call running the current migration."""
    variables = _variables.get()
    if variables is None or name not in variables:
        raise RuntimeError(f"migration variable {name!r} is not set: run migrations through mesh.migrations")
    return variables[name]


def migration_object(name: str) -> object:
    """An object (a KMS, say) passed to the `apply_migrations` call running the current migration."""
    objects = _objects.get()
    if objects is None or name not in objects:
        raise RuntimeError(f"migration object {name!r} is not set: run migrations through mesh.migrations")
    return objects[name]


def yoyo_url(database_url: str) -> str:
    """`postgresql://...` as yoyo's psycopg 3 backend names it."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ValueError(f"unsupported database URL scheme {parts.scheme!r} (expected postgresql://)")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


@contextlib.contextmanager
def _setting(variables: Mapping[str, str], objects: Mapping[str, object]) -> Iterator[None]:
    token = _variables.set(MappingProxyType(dict(variables)))
    objects_token = _objects.set(MappingProxyType(dict(objects)))
    try:
        yield
    finally:
        _objects.reset(objects_token)
        _variables.reset(token)


def apply_migrations(
    database_url: str,
    directory: Path,
    *,
    variables: Mapping[str, str] | None = None,
    objects: Mapping[str, object] | None = None,
) -> list[str]:
    """Applies the pending migrations of `directory` under yoyo's lock; returns the ids applied.
    Blocking: async code calls `migrate`."""
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(directory))
        with _setting(variables or {}, objects or {}), backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        applied = [migration.id for migration in pending]
    finally:
        backend.connection.close()
    if applied:
        log.info("migrations applied", extra={"migrations": applied})
    return applied


async def migrate(
    database_url: str,
    directory: Path,
    *,
    variables: Mapping[str, str] | None = None,
    objects: Mapping[str, object] | None = None,
    wait_seconds: float = 0.0,
) -> list[str]:
    """`apply_migrations` off the event loop, retrying for up to `wait_seconds` while PostgreSQL is not
    reachable yet (it may be starting next to us)."""
    async for attempt in until_reachable(
        "migrating the database", (psycopg.OperationalError,), within=wait_seconds
    ):
        with attempt:
            return await asyncio.to_thread(
                apply_migrations, database_url, directory, variables=variables, objects=objects
            )
    raise AssertionError("unreachable: the retry policy re-raises its last error")
