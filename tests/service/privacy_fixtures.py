"""Helpers of the privacy tests (issue 14): what a superuser's dump and the database's files hold, and a
database of its own for a test that upgrades an old schema.

Imported explicitly by tests/service/test_*_privacy.py.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import asyncpg

from devstack.postgres import EmbeddedPostgres, _bin


async def dump_database(superuser_url: str) -> str:
    """A superuser's `pg_dump` of the whole database."""
    done = await asyncio.to_thread(
        subprocess.run,
        [str(_bin("pg_dump")), "--dbname", superuser_url, "--no-owner"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return str(done.stdout)


def files_holding(directory: Path, words: tuple[str, ...]) -> list[str]:
    """Files under `directory` holding any of `words` (bytes as stored)."""
    encoded = [word.encode() for word in words]
    return [
        str(path)
        for path in directory.rglob("*")
        if path.is_file() and any(word in path.read_bytes() for word in encoded)
    ]


async def fresh_database(postgres: EmbeddedPostgres) -> tuple[str, str]:
    """A new empty database with pgvector: (application URL, superuser URL)."""
    database = f"privacy_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}" OWNER athena')
    finally:
        await admin.close()
    superuser_url = postgres.superuser_url.rsplit("/", 1)[0] + f"/{database}"
    superuser = await asyncpg.connect(superuser_url)
    try:
        await superuser.execute("CREATE EXTENSION IF NOT EXISTS vector")
    finally:
        await superuser.close()
    return postgres.url.rsplit("/", 1)[0] + f"/{database}", superuser_url
