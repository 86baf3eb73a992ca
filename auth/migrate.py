"""The auth schema's migrations (auth/migrations/, ids prefixed `auth_`), run by `mesh.migrations`.

A migration that encrypts existing rows (auth_0002) makes data keys, and so needs the deployment's KMS:
it is passed to the run as the migration object `kms` and read with `migration_kms()`.
"""

from __future__ import annotations

from pathlib import Path

from mesh import migrations
from mesh.kms import KeyEncryptionKeys

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
KMS_OBJECT = "kms"
SERVICE = "auth"
"""The service named in the context of auth's wrapped data keys."""


def migration_kms() -> KeyEncryptionKeys:
    """The KMS of the migration run in progress."""
    return migrations.migration_object(KMS_OBJECT)  # type: ignore[return-value]


def apply_migrations(database_url: str, kms: KeyEncryptionKeys) -> list[str]:
    """Applies the pending migrations; returns the ids applied. Blocking: async code calls `migrate`."""
    return migrations.apply_migrations(database_url, MIGRATIONS_DIR, objects={KMS_OBJECT: kms})


async def migrate(database_url: str, kms: KeyEncryptionKeys, *, wait_seconds: float = 0.0) -> list[str]:
    """`apply_migrations` off the event loop, waiting up to `wait_seconds` for PostgreSQL to come up."""
    return await migrations.migrate(
        database_url, MIGRATIONS_DIR, objects={KMS_OBJECT: kms}, wait_seconds=wait_seconds
    )
