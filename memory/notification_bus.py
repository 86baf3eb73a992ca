"""`memory.notifications.NotificationBus` on Redis pub/sub: tabs watching on one replica learn what another
stored or marked read.

One channel per deployment (`CHANNEL`, on the deployment's Redis). A message names a person and a
notification id, never its content: `{"r": <replica>, "u": <user id>, "n": <notification id>}` for a
notification stored, `{"r": ..., "u": ..., "read": true}` for notifications marked read. Each replica
skips its own messages (its tabs were told directly) and reads the notification from PostgreSQL, sealed
as it is, only when one of its tabs follows that person.

Redis is a convenience here, not a dependency: publishing that fails is logged and forgotten (the storing
replica's own tabs have it, and every tab has it on its next ListNotifications); the follower reconnects
with a capped back-off, and after a gap every stream here sends its unread count again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from redis import exceptions as redis_errors

from memory.notifications import BusEvent, ReadChanged, Stored
from mesh.redis import UNAVAILABLE, Redis

log = logging.getLogger(__name__)

CHANNEL = "athena:notifications"
"""The deployment's channel of notification events."""

FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis_errors.RedisError)
RETRY_SECONDS = (0.2, 5.0)
"""First and longest wait before the follower subscribes again after losing Redis."""


class _Reconnects:
    """Runs `resync` each time a connection is made again (redis-py keeps connect callbacks as weak
    methods: the follower holds this object while it reads)."""

    def __init__(self, resync: Callable[[], None]) -> None:
        self._resync = resync

    def connected(self, connection: object) -> None:
        log.info("notification events are followed again")
        self._resync()


class RedisNotificationBus:
    def __init__(
        self,
        client: Redis,
        *,
        subscriber: Redis | None = None,
        channel: str = CHANNEL,
        replica: str | None = None,
    ) -> None:
        self._client = client
        self._subscriber = subscriber or client
        self._channel = channel
        self.replica = replica or uuid.uuid4().hex

    async def publish(self, event: BusEvent) -> None:
        message: dict[str, object] = {"r": self.replica, "u": event.user_id}
        if isinstance(event, Stored):
            message["n"] = event.notification_id
        else:
            message["read"] = True
        try:
            await self._client.publish(self._channel, json.dumps(message, separators=(",", ":")))
        except FAILURES as exc:
            log.warning(
                "a notification event was not published; other replicas' tabs see it on their next list",
                extra={"error": type(exc).__name__},
            )

    async def follow(
        self, received: Callable[[BusEvent], Awaitable[None]], resync: Callable[[], None]
    ) -> None:
        """Forever: hands every other replica's event to `received`. Never raises but for cancellation;
        `resync` runs each time the subscription is made again after it was lost."""
        wait = RETRY_SECONDS[0]
        lost = False
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # redis-py dials again and resubscribes by itself after a brief loss: events published
                # meanwhile are lost, so the streams here count again then too.
                reconnects = _Reconnects(resync)
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(reconnects.connected)
                if lost:
                    log.info("notification events are followed again")
                    resync()
                    lost = False
                wait = RETRY_SECONDS[0]
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self._dispatch(message["data"], received)
            except FAILURES as exc:
                if not lost:
                    log.warning(
                        "notification events cannot be followed; tabs here miss other replicas' until "
                        "Redis is back",
                        extra={"error": type(exc).__name__},
                    )
                    lost = True
            finally:
                with contextlib.suppress(*FAILURES):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_SECONDS[1])

    async def _dispatch(self, data: str, received: Callable[[BusEvent], Awaitable[None]]) -> None:
        try:
            message = json.loads(data)
            if message["r"] == self.replica:
                return
            user_id = str(uuid.UUID(message["u"]))
            event: BusEvent = (
                ReadChanged(user_id) if message.get("read") else Stored(user_id, str(uuid.UUID(message["n"])))
            )
        except (ValueError, KeyError, TypeError):
            log.error("skipped a malformed notification event")
            return
        try:
            await received(event)
        except Exception:  # one event must not stop the follower (the store may be down a moment)
            log.exception("a notification event could not be handed to the streams here")
