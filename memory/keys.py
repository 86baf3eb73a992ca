"""Memory's data keys per user (mesh.envelope), and who may have one.

A user is set up by their first write: their `users` row and their data key, unless their id is in
`erased_users`. Nothing else creates a user, so a token that outlives its erased account (until its
revocation reaches every replica, or its expiry) cannot bring the account back: its writes are refused.
"""

from __future__ import annotations

import uuid

from memory.database import Database
from mesh.envelope import Cipher, DataKeys, NoDataKey
from mesh.errors import FailedPrecondition

_SET_UP = """WITH added AS (
        INSERT INTO users (id) SELECT $1 WHERE NOT EXISTS (SELECT FROM erased_users WHERE id = $1)
        ON CONFLICT (id) DO NOTHING
    )
    SELECT EXISTS (SELECT FROM erased_users WHERE id = $1)"""


class UserKeys:
    def __init__(self, keys: DataKeys, database: Database) -> None:
        self._keys = keys
        self._db = database

    async def reading(self, user_id: str) -> Cipher | None:
        """The user's cipher; None when they have no key (nothing of theirs is stored)."""
        return await self._keys.existing(user_id)

    async def writing(self, user_id: str) -> Cipher:
        """The user's cipher, setting the user up on their first write; refused for an erased account."""
        try:
            return await self._keys.cipher(user_id)
        except NoDataKey:
            pass
        async with self._db.transaction(user_id) as connection:
            erased = await connection.fetchval(_SET_UP, uuid.UUID(user_id))
        if erased:
            raise FailedPrecondition("this account was erased; sign up again to start a new one")
        return await self._keys.create(user_id)

    async def erase(self, user_id: str) -> bool:
        """Marks the account erased (no write sets it up again), then destroys its data key: a copy of its
        rows made before (a replica, a restored dump) is unreadable from here on. Whether there was a key."""
        async with self._db.transaction(None) as connection:
            await connection.execute(
                "INSERT INTO erased_users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", uuid.UUID(user_id)
            )
        return await self._keys.destroy(user_id)
