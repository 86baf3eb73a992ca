"""The memory schema's migrations (memory/migrations/, ids prefixed `memory_`), run by `mesh.migrations`.

The first migration creates the embedding column as `vector(N)` with the dimension configured when it
runs (the migration variable `embedding_dimension`); memory_0006 makes vectors versioned, recording the
model configured then (`embedding_model`) as the one existing vectors were made with. From there on a model
change needs no migration: the service makes the configured model current at start-up and re-embeds in the
background (memory.vectors, memory.reembed).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from memory.embedding_models import OFFLINE_EMBEDDING_MODEL
from mesh import migrations
from mesh.kms import KeyEncryptionKeys

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DIMENSION_VARIABLE = "embedding_dimension"
MODEL_VARIABLE = "embedding_model"
KMS_OBJECT = "kms"
SERVICE = "memory"
"""The service named in the context of memory's wrapped data keys."""


def render_schema(dimension: int) -> str:
    """memory/schema.sql with embeddings of `dimension` components."""
    sql = resources.files("memory").joinpath("schema.sql").read_text(encoding="utf-8")
    return sql.replace("{dimension}", str(dimension))


def migration_dimension() -> int:
    """The embedding dimension of the migration run in progress."""
    return int(migrations.migration_variable(DIMENSION_VARIABLE))


def migration_model() -> str:
    """The embedding model name of the migration run in progress."""
    return migrations.migration_variable(MODEL_VARIABLE)


def migration_kms() -> KeyEncryptionKeys:
    """The KMS of the migration run in progress (a migration encrypting rows makes data keys)."""
    return migrations.migration_object(KMS_OBJECT)  # type: ignore[return-value]


def _variables(dimension: int, model: str) -> dict[str, str]:
    return {DIMENSION_VARIABLE: str(dimension), MODEL_VARIABLE: model}


def apply_migrations(
    database_url: str, dimension: int, kms: KeyEncryptionKeys, *, model: str = OFFLINE_EMBEDDING_MODEL
) -> list[str]:
    """Applies the pending migrations; returns the ids applied."""
    return migrations.apply_migrations(
        database_url, MIGRATIONS_DIR, variables=_variables(dimension, model), objects={KMS_OBJECT: kms}
    )


async def migrate(
    database_url: str,
    dimension: int,
    kms: KeyEncryptionKeys,
    *,
    model: str = OFFLINE_EMBEDDING_MODEL,
    wait_seconds: float = 0.0,
) -> list[str]:
    """`apply_migrations` off the event loop, waiting up to `wait_seconds` for PostgreSQL to come up."""
    return await migrations.migrate(
        database_url,
        MIGRATIONS_DIR,
        variables=_variables(dimension, model),
        objects={KMS_OBJECT: kms},
        wait_seconds=wait_seconds,
    )
