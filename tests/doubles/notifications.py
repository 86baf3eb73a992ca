"""In-memory doubles of the notification ports (`memory.notifications`): a store, a push sender that
records what it sends, and a bus that records what it publishes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from memory.notifications import (
    BusEvent,
    NewNotification,
    Notification,
    NotificationSettings,
    PushOutcome,
    PushSubscription,
)
from memory.pagination import Cursor


@dataclass
class MemoryNotificationStore:
    """Every person's notifications, settings and subscriptions in dicts; `created_at` strictly increases."""

    now: datetime
    notifications: dict[str, list[Notification]] = field(default_factory=dict)
    dedupe: dict[tuple[str, str], str] = field(default_factory=dict)
    person_settings: dict[str, NotificationSettings] = field(default_factory=dict)
    person_subscriptions: dict[str, list[PushSubscription]] = field(default_factory=dict)

    async def add(self, user_id: str, new: NewNotification) -> tuple[Notification, bool]:
        known = self.dedupe.get((user_id, new.dedupe_key))
        if known is not None:
            return next(n for n in self.notifications[user_id] if n.id == known), False
        self.now += timedelta(milliseconds=1)
        stored = Notification(
            id=str(uuid.uuid4()),
            agent_id=new.agent_id,
            title=new.title,
            body=new.body,
            kind=new.kind,
            conversation_id=new.conversation_id,
            link=new.link,
            created_at=self.now,
        )
        self.notifications.setdefault(user_id, []).append(stored)
        self.dedupe[(user_id, new.dedupe_key)] = stored.id
        return stored, True

    async def get(self, user_id: str, notification_id: str) -> Notification | None:
        return next((n for n in self.notifications.get(user_id, []) if n.id == notification_id), None)

    async def page(
        self, user_id: str, limit: int, after: Cursor | None, *, unread_only: bool = False
    ) -> tuple[list[Notification], int]:
        newest = sorted(self.notifications.get(user_id, []), key=lambda n: (n.created_at, n.id), reverse=True)
        if after is not None:
            newest = [n for n in newest if (n.created_at, n.id) < (after.at, after.id)]
        if unread_only:
            newest = [n for n in newest if n.read_at is None]
        return newest[:limit], await self.unread_count(user_id)

    async def unread_count(self, user_id: str) -> int:
        return sum(n.read_at is None for n in self.notifications.get(user_id, []))

    async def mark_read(self, user_id: str, notification_ids: Sequence[str] | None) -> tuple[int, int]:
        marked = 0
        stored = self.notifications.get(user_id, [])
        for index, n in enumerate(stored):
            if n.read_at is None and (notification_ids is None or n.id in notification_ids):
                stored[index] = replace(n, read_at=self.now)
                marked += 1
        return marked, await self.unread_count(user_id)

    async def settings(self, user_id: str) -> NotificationSettings:
        return self.person_settings.get(user_id, NotificationSettings())

    async def put_settings(self, user_id: str, settings: NotificationSettings) -> None:
        self.person_settings[user_id] = settings

    async def add_subscription(self, user_id: str, subscription: PushSubscription) -> None:
        await self.remove_subscription(user_id, subscription.endpoint)
        self.person_subscriptions.setdefault(user_id, []).append(replace(subscription, id=str(uuid.uuid4())))

    async def remove_subscription(self, user_id: str, endpoint: str) -> bool:
        before = self.person_subscriptions.get(user_id, [])
        after = [s for s in before if s.endpoint != endpoint]
        self.person_subscriptions[user_id] = after
        return len(after) < len(before)

    async def subscriptions(self, user_id: str) -> list[PushSubscription]:
        return list(self.person_subscriptions.get(user_id, []))

    async def delete_subscription(self, user_id: str, subscription_id: str) -> None:
        self.person_subscriptions[user_id] = [
            s for s in self.person_subscriptions.get(user_id, []) if s.id != subscription_id
        ]


@dataclass
class RecordingPushSender:
    """Answers `outcomes[endpoint]` (DELIVERED by default) and records every send."""

    public_key: str = "BPublicKey"
    outcomes: dict[str, PushOutcome] = field(default_factory=dict)
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def send(self, subscription: PushSubscription, payload: bytes) -> PushOutcome:
        self.sent.append((subscription.endpoint, payload))
        return self.outcomes.get(subscription.endpoint, PushOutcome.DELIVERED)


@dataclass
class RecordingBus:
    published: list[BusEvent] = field(default_factory=list)

    async def publish(self, event: BusEvent) -> None:
        self.published.append(event)
