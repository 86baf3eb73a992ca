"""The documents a person's conversations referred to, on PostgreSQL (`integrations.file_references`).

`Files.read` remembers a file read for a conversation; when the provider says the person's files changed,
the proactive agents ask which of the changed ones a conversation referred to (`referring`). The file is
found by a blind token of its provider and id, its name sealed with the person's data key (bound to the
row's place): a dump shows neither which files nor their names.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from integrations.providers import Provider
from mesh import postgres
from mesh.envelope import Cipher, DataKeys


@dataclass(frozen=True, slots=True)
class Reference:
    provider: Provider
    file_id: str
    name: str
    conversation_id: str
    read_at: datetime


def _token(cipher: Cipher, provider: Provider, file_id: str) -> bytes:
    return cipher.key_token(f"file:{provider.value}:{file_id}")


class PostgresFileReferences:
    def __init__(self, pool: postgres.Pool, keys: DataKeys) -> None:
        self._pool = pool
        self._keys = keys

    async def remember(
        self, user_id: str, conversation_id: str, at: datetime, files: Sequence[tuple[Provider, str, str]]
    ) -> None:
        """`files` (provider, id, name) as referred to by the conversation at `at`, in one round trip."""
        cipher = await self._keys.create(user_id)
        uid = uuid.UUID(user_id)
        rows = []
        for provider, file_id, name in files:
            token = _token(cipher, provider, file_id)
            place = f"{provider.value}:{token.hex()}"
            sealed = cipher.seal("file_references", "name", place, name)
            rows.append((uid, provider.value, token, sealed, conversation_id, at))
        async with postgres.translated():
            await self._pool.executemany(
                """INSERT INTO integrations.file_references
                       (user_id, provider, file_token, name_sealed, conversation_id, read_at)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (user_id, provider, file_token) DO UPDATE
                   SET name_sealed = EXCLUDED.name_sealed, conversation_id = EXCLUDED.conversation_id,
                       read_at = EXCLUDED.read_at""",
                rows,
            )

    async def referring(self, user_id: str, provider: Provider, file_id: str) -> Reference | None:
        """The latest conversation that read the file, if one did."""
        cipher = await self._keys.existing(user_id)
        if cipher is None:
            return None
        token = _token(cipher, provider, file_id)
        async with postgres.translated():
            row = await self._pool.fetchrow(
                """SELECT name_sealed, conversation_id, read_at FROM integrations.file_references
                   WHERE user_id = $1 AND provider = $2 AND file_token = $3""",
                uuid.UUID(user_id),
                provider.value,
                token,
            )
        if row is None:
            return None
        place = f"{provider.value}:{token.hex()}"
        name = cipher.open_text("file_references", "name", place, row["name_sealed"])
        return Reference(provider, file_id, name, row["conversation_id"], row["read_at"])

    async def forget_before(self, before: datetime) -> int:
        async with postgres.translated():
            status = await self._pool.execute(
                "DELETE FROM integrations.file_references WHERE read_at < $1", before
            )
        return int(status.split()[-1])

    async def purge_user(self, user_id: str) -> int:
        async with postgres.translated():
            status = await self._pool.execute(
                "DELETE FROM integrations.file_references WHERE user_id = $1", uuid.UUID(user_id)
            )
        return int(status.split()[-1])
