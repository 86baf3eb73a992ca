"""The memory schema's migrations (memory/migrations/, ids prefixed `memory_`), run by `mesh.migrations`.

The embedding column's dimension follows the configured embedding model: the first migration creates
`vector(N)` with the dimension configured when it runs (the migration variable `embedding_dimension`).
A database created for another dimension is not altered behind anyone's back (existing vectors would be
meaningless); start-up stops with a clear error instead (`check_embedding_dimension`), and changing models
means a new migration that re-embeds.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

import psycopg

from mesh import migrations
from mesh.kms import KeyEncryptionKeys

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DIMENSION_VARIABLE = "embedding_dimension"
KMS_OBJECT = "kms"
SERVICE = "memory"
"""The service named in the context of memory's wrapped data keys."""


class SchemaMismatch(RuntimeError):
    """The database was migrated for another embedding dimension than the one configured."""


def render_schema(dimension: int) -> str:
    """memory/schema.sql with embeddings of `dimension` components."""
    sql = resources.files("memory").joinpath("schema.sql").read_text(encoding="utf-8")
    return sql.replace("{dimension}", str(dimension))


def migration_dimension() -> int:
    """The embedding dimension of the migration run in progress."""
    return int(migrations.migration_variable(DIMENSION_VARIABLE))


def migration_kms() -> KeyEncryptionKeys:
    """The KMS of the migration run in progress (a migration encrypting rows makes data keys)."""
    return migrations.migration_object(KMS_OBJECT)  # type: ignore[return-value]


def apply_migrations(database_url: str, dimension: int, kms: KeyEncryptionKeys) -> list[str]:
    """Applies the pending migrations and checks the embedding dimension; returns the ids applied."""
    applied = migrations.apply_migrations(
        database_url,
        MIGRATIONS_DIR,
        variables={DIMENSION_VARIABLE: str(dimension)},
        objects={KMS_OBJECT: kms},
    )
    check_embedding_dimension(database_url, dimension)
    return applied


async def migrate(
    database_url: str, dimension: int, kms: KeyEncryptionKeys, *, wait_seconds: float = 0.0
) -> list[str]:
    """`apply_migrations` off the event loop, waiting up to `wait_seconds` for PostgreSQL to come up."""
    applied = await migrations.migrate(
        database_url,
        MIGRATIONS_DIR,
        variables={DIMENSION_VARIABLE: str(dimension)},
        objects={KMS_OBJECT: kms},
        wait_seconds=wait_seconds,
    )
    await asyncio.to_thread(check_embedding_dimension, database_url, dimension)
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
