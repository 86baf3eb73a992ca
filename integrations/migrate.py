"""The integrations schema's migrations (integrations/migrations/, ids prefixed `integrations_`), run by
`mesh.migrations`."""

from __future__ import annotations

from pathlib import Path

from mesh import migrations

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SERVICE = "integrations"
"""The service named in the context of the wrapped data keys."""
DATA_KEYS_TABLE = "integrations.data_keys"


def apply_migrations(database_url: str) -> list[str]:
    """Applies the pending migrations; returns the ids applied. Blocking: async code calls `migrate`."""
    return migrations.apply_migrations(database_url, MIGRATIONS_DIR)


async def migrate(database_url: str, *, wait_seconds: float = 0.0) -> list[str]:
    """`apply_migrations` off the event loop, waiting up to `wait_seconds` for PostgreSQL to come up."""
    return await migrations.migrate(database_url, MIGRATIONS_DIR, wait_seconds=wait_seconds)
