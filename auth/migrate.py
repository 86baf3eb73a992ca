"""Applying the auth schema's SQL migrations (yoyo; ids prefixed `auth_` so services share one database)."""

from __future__ import annotations

import logging
from pathlib import Path

from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def yoyo_url(database_url: str) -> str:
    """`postgresql://...` as yoyo's psycopg 3 backend names it."""
    scheme, separator, rest = database_url.partition("://")
    if not separator or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ValueError("database_url must be a postgresql:// URL")
    return f"postgresql+psycopg://{rest}"


def apply_migrations(database_url: str) -> list[str]:
    """Applies pending migrations under yoyo's lock (replicas starting together apply them once);
    returns the ids applied. Blocking: call it from a thread in async code."""
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        applied = [migration.id for migration in pending]
        if applied:
            log.info("applied migrations", extra={"migrations": applied})
        return applied
    finally:
        backend.connection.close()
