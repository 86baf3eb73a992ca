"""`SubscriptionStore` on PostgreSQL (`integrations.subscriptions`, migration integrations_0003).

The secret of each subscription (Graph `clientState`, Google channel token) is sealed with its owner's data
key, bound to table, column and the provider's subscription id: a dump shows what is watched and until
when, never the secret. A person whose data key is gone has no subscriptions to read. The cursor (a Drive
page token) is kept plain: an opaque position in the person's change log, not their data.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from integrations.providers import Capability, Provider
from integrations.subscriptions import Subscription
from mesh import postgres
from mesh.envelope import Cipher, DataKeys

_COLUMNS = "provider, id, user_id, capability, resource, secret_sealed, expires_at, missed_at, cursor"


def _bound(provider: Provider, subscription_id: str) -> str:
    """What each sealed secret is bound to (besides table and column)."""
    return f"{provider.value}:{subscription_id}"


class PostgresSubscriptionStore:
    def __init__(self, pool: postgres.Pool, keys: DataKeys) -> None:
        self._pool = pool
        self._keys = keys

    @staticmethod
    def _subscription(cipher: Cipher, row: asyncpg.Record) -> Subscription:
        provider = Provider(row["provider"])
        return Subscription(
            provider=provider,
            id=row["id"],
            user_id=str(row["user_id"]),
            capability=Capability(row["capability"]),
            resource=row["resource"],
            secret=cipher.open_text(
                "subscriptions", "secret", _bound(provider, row["id"]), row["secret_sealed"]
            ),
            expires_at=row["expires_at"],
            missed_at=row["missed_at"],
            cursor=row["cursor"],
        )

    async def add(self, subscription: Subscription) -> None:
        cipher = await self._keys.cipher(subscription.user_id)
        sealed = cipher.seal(
            "subscriptions", "secret", _bound(subscription.provider, subscription.id), subscription.secret
        )
        async with postgres.translated():
            await self._pool.execute(
                """INSERT INTO integrations.subscriptions
                       (provider, id, user_id, capability, resource, secret_sealed, expires_at, missed_at,
                        cursor)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
                subscription.provider.value,
                subscription.id,
                uuid.UUID(subscription.user_id),
                subscription.capability.value,
                subscription.resource,
                sealed,
                subscription.expires_at,
                subscription.missed_at,
                subscription.cursor,
            )

    async def get(self, provider: Provider, subscription_id: str) -> Subscription | None:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"""SELECT {_COLUMNS} FROM integrations.subscriptions
                    WHERE provider = $1 AND id = $2""",  # noqa: S608 (a constant column list)
                provider.value,
                subscription_id,
            )
        if row is None:
            return None
        cipher = await self._keys.existing(str(row["user_id"]))
        return self._subscription(cipher, row) if cipher is not None else None

    async def held_by(self, user_id: str) -> list[Subscription]:
        cipher = await self._keys.existing(user_id)
        if cipher is None:
            return []
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM integrations.subscriptions
                    WHERE user_id = $1 ORDER BY provider, capability, expires_at""",  # noqa: S608
                uuid.UUID(user_id),
            )
        return [self._subscription(cipher, row) for row in rows]

    async def update(self, subscription: Subscription) -> None:
        async with postgres.translated():
            await self._pool.execute(
                """UPDATE integrations.subscriptions SET expires_at = $3, missed_at = $4
                   WHERE provider = $1 AND id = $2""",
                subscription.provider.value,
                subscription.id,
                subscription.expires_at,
                subscription.missed_at,
            )

    async def move_cursor(self, subscription: Subscription, cursor: str) -> bool:
        async with postgres.translated():
            moved = await self._pool.fetchval(
                """UPDATE integrations.subscriptions SET cursor = $4
                   WHERE provider = $1 AND id = $2 AND cursor = $3 RETURNING true""",
                subscription.provider.value,
                subscription.id,
                subscription.cursor,
                cursor,
            )
        return bool(moved)

    async def delete(self, provider: Provider, subscription_id: str) -> bool:
        async with postgres.translated():
            deleted = await self._pool.fetchval(
                "DELETE FROM integrations.subscriptions WHERE provider = $1 AND id = $2 RETURNING true",
                provider.value,
                subscription_id,
            )
        return bool(deleted)

    async def expiring(self, before: datetime, limit: int) -> list[Subscription]:
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM integrations.subscriptions
                    WHERE expires_at < $1 ORDER BY expires_at LIMIT $2""",  # noqa: S608
                before,
                limit,
            )
        return await self._opened(rows)

    async def missed(self, limit: int) -> list[Subscription]:
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM integrations.subscriptions
                    WHERE missed_at IS NOT NULL ORDER BY missed_at LIMIT $1""",  # noqa: S608
                limit,
            )
        return await self._opened(rows)

    async def _opened(self, rows: list[asyncpg.Record]) -> list[Subscription]:
        found = []
        for row in rows:
            cipher = await self._keys.existing(str(row["user_id"]))
            if cipher is not None:
                found.append(self._subscription(cipher, row))
        return found
