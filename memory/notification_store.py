"""`memory.notifications.NotificationStore` on PostgreSQL (tables of migration memory_0004).

What a person could be recognised by is sealed with their data key (`memory.keys`), bound to its table,
column and row: a notification's title, body, kind, link and conversation; the settings (JSON); a
subscription's endpoint and keys. A rule's dedupe key and a subscription's endpoint are found again by
blind tokens (`Cipher.token`), unique per person. `agent_id` is a catalog id, stored plain.
"""

# ruff: noqa: S608 (queries interpolate only this module's column-list constants; values are bound)

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import asyncpg

from memory.database import Database
from memory.keys import UserKeys
from memory.notifications import NewNotification, Notification, NotificationSettings, PushSubscription
from memory.pagination import Cursor
from mesh.envelope import Cipher

_COLUMNS = "id, agent_id, title, body, kind, link, conversation_id, created_at, read_at"
_SEALED = ("title", "body", "kind", "link", "conversation_id")


def _dedupe_token(cipher: Cipher, key: str) -> bytes:
    return cipher.token(f"notification-dedupe:{key}")


def _endpoint_token(cipher: Cipher, endpoint: str) -> bytes:
    return cipher.token(f"push-endpoint:{endpoint}")


def _notification(cipher: Cipher, row: asyncpg.Record) -> Notification:
    opened = {name: cipher.open_text("notifications", name, row["id"], row[name]) for name in _SEALED}
    return Notification(
        id=str(row["id"]),
        agent_id=row["agent_id"],
        created_at=row["created_at"],
        read_at=row["read_at"],
        **opened,
    )


class PostgresNotificationStore:
    def __init__(self, database: Database, keys: UserKeys) -> None:
        self._db = database
        self._keys = keys

    async def add(self, user_id: str, new: NewNotification) -> tuple[Notification, bool]:
        cipher = await self._keys.writing(user_id)
        uid = uuid.UUID(user_id)
        token = _dedupe_token(cipher, new.dedupe_key)
        row_id = uuid.uuid4()
        values = {
            "title": new.title,
            "body": new.body,
            "kind": new.kind,
            "link": new.link,
            "conversation_id": new.conversation_id,
        }
        sealed = [cipher.seal("notifications", name, row_id, values[name]) for name in _SEALED]
        async with self._db.transaction(user_id) as connection:
            row = await connection.fetchrow(
                f"""INSERT INTO notifications (id, user_id, agent_id, dedupe_token, {", ".join(_SEALED)})
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                    ON CONFLICT (user_id, dedupe_token) DO NOTHING
                    RETURNING {_COLUMNS}""",
                row_id,
                uid,
                new.agent_id,
                token,
                *sealed,
            )
            created = row is not None
            if row is None:  # stored before (a concurrent insert has committed: read committed sees it)
                row = await connection.fetchrow(
                    f"SELECT {_COLUMNS} FROM notifications WHERE user_id = $1 AND dedupe_token = $2",
                    uid,
                    token,
                )
        assert row is not None
        return _notification(cipher, row), created

    async def get(self, user_id: str, notification_id: str) -> Notification | None:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return None
        async with self._db.transaction(user_id, readonly=True) as connection:
            row = await connection.fetchrow(
                f"SELECT {_COLUMNS} FROM notifications WHERE user_id = $1 AND id = $2",
                uuid.UUID(user_id),
                uuid.UUID(notification_id),
            )
        return None if row is None else _notification(cipher, row)

    async def page(
        self, user_id: str, limit: int, after: Cursor | None, *, unread_only: bool = False
    ) -> tuple[list[Notification], int]:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return [], 0
        conditions = ["user_id = $1"]
        arguments: list[object] = [uuid.UUID(user_id), limit]
        if unread_only:
            conditions.append("read_at IS NULL")
        if after is not None:
            conditions.append("(created_at, id) < ($3, $4)")
            arguments += [after.at, uuid.UUID(after.id)]
        async with self._db.transaction(user_id, readonly=True) as connection:
            rows = await connection.fetch(
                f"""SELECT {_COLUMNS} FROM notifications WHERE {" AND ".join(conditions)}
                    ORDER BY created_at DESC, id DESC LIMIT $2""",
                *arguments,
            )
            unread = await connection.fetchval(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
                uuid.UUID(user_id),
            )
        return [_notification(cipher, row) for row in rows], int(unread)

    async def unread_count(self, user_id: str) -> int:
        async with self._db.transaction(user_id, readonly=True) as connection:
            unread = await connection.fetchval(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
                uuid.UUID(user_id),
            )
        return int(unread)

    async def mark_read(self, user_id: str, notification_ids: Sequence[str] | None) -> tuple[int, int]:
        uid = uuid.UUID(user_id)
        async with self._db.transaction(user_id) as connection:
            if notification_ids is None:
                marked = await connection.fetchval(
                    """WITH marked AS (UPDATE notifications SET read_at = clock_timestamp()
                                       WHERE user_id = $1 AND read_at IS NULL RETURNING 1)
                       SELECT count(*) FROM marked""",
                    uid,
                )
            else:
                marked = await connection.fetchval(
                    """WITH marked AS (UPDATE notifications SET read_at = clock_timestamp()
                                       WHERE user_id = $1 AND id = ANY($2::uuid[]) AND read_at IS NULL
                                       RETURNING 1)
                       SELECT count(*) FROM marked""",
                    uid,
                    [uuid.UUID(i) for i in notification_ids],
                )
            unread = await connection.fetchval(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL", uid
            )
        return int(marked), int(unread)

    async def settings(self, user_id: str) -> NotificationSettings:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return NotificationSettings()
        async with self._db.transaction(user_id, readonly=True) as connection:
            sealed = await connection.fetchval(
                "SELECT settings FROM notification_settings WHERE user_id = $1", uuid.UUID(user_id)
            )
        if sealed is None:
            return NotificationSettings()
        return NotificationSettings.from_json(
            cipher.open_text("notification_settings", "settings", user_id, sealed)
        )

    async def put_settings(self, user_id: str, settings: NotificationSettings) -> None:
        cipher = await self._keys.writing(user_id)
        sealed = cipher.seal("notification_settings", "settings", user_id, settings.to_json())
        async with self._db.transaction(user_id) as connection:
            await connection.execute(
                """INSERT INTO notification_settings (user_id, settings) VALUES ($1, $2)
                   ON CONFLICT (user_id) DO UPDATE
                   SET settings = EXCLUDED.settings, updated_at = clock_timestamp()""",
                uuid.UUID(user_id),
                sealed,
            )

    async def add_subscription(self, user_id: str, subscription: PushSubscription) -> None:
        cipher = await self._keys.writing(user_id)
        uid = uuid.UUID(user_id)
        token = _endpoint_token(cipher, subscription.endpoint)
        keys = json.dumps({"p256dh": subscription.p256dh, "auth": subscription.auth})
        async with self._db.transaction(user_id) as connection:
            # The row keeps its id when a device subscribes again (its sealed values are bound to it).
            row_id = await connection.fetchval(
                "SELECT id FROM push_subscriptions WHERE user_id = $1 AND endpoint_token = $2 FOR UPDATE",
                uid,
                token,
            )
            if row_id is not None:
                await connection.execute(
                    """UPDATE push_subscriptions SET keys = $2, updated_at = clock_timestamp()
                       WHERE id = $1""",
                    row_id,
                    cipher.seal("push_subscriptions", "keys", row_id, keys),
                )
                return
            row_id = uuid.uuid4()
            await connection.execute(
                """INSERT INTO push_subscriptions (id, user_id, endpoint_token, endpoint, keys)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (user_id, endpoint_token) DO NOTHING""",
                row_id,
                uid,
                token,
                cipher.seal("push_subscriptions", "endpoint", row_id, subscription.endpoint),
                cipher.seal("push_subscriptions", "keys", row_id, keys),
            )

    async def remove_subscription(self, user_id: str, endpoint: str) -> bool:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return False
        async with self._db.transaction(user_id) as connection:
            removed = await connection.fetchval(
                "DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint_token = $2 RETURNING true",
                uuid.UUID(user_id),
                _endpoint_token(cipher, endpoint),
            )
        return bool(removed)

    async def subscriptions(self, user_id: str) -> list[PushSubscription]:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return []
        async with self._db.transaction(user_id, readonly=True) as connection:
            rows = await connection.fetch(
                "SELECT id, endpoint, keys FROM push_subscriptions WHERE user_id = $1 ORDER BY created_at",
                uuid.UUID(user_id),
            )
        found = []
        for row in rows:
            keys = json.loads(cipher.open("push_subscriptions", "keys", row["id"], row["keys"]))
            found.append(
                PushSubscription(
                    endpoint=cipher.open_text("push_subscriptions", "endpoint", row["id"], row["endpoint"]),
                    p256dh=keys["p256dh"],
                    auth=keys["auth"],
                    id=str(row["id"]),
                )
            )
        return found

    async def delete_subscription(self, user_id: str, subscription_id: str) -> None:
        async with self._db.transaction(user_id) as connection:
            await connection.execute(
                "DELETE FROM push_subscriptions WHERE user_id = $1 AND id = $2",
                uuid.UUID(user_id),
                uuid.UUID(subscription_id),
            )
