"""Notifications: what an agent that speaks first leaves for a person, and how it reaches them.

    Notifier.notify(user, new)   muted agent → nothing stored; a dedupe key seen before → the stored one;
                                 otherwise stored, then every open tab of the person (this replica's hub
                                 at once, the others' through the bus), then, outside quiet hours, each
                                 device by Web Push (a subscription the push service says is gone: deleted)
    Notifier.watch(user)         the unread count, then notifications and unread counts as they come, and
                                 a heartbeat whenever nothing came for `heartbeat_seconds`

The ports it needs (`NotificationStore`, `NotificationBus`, `PushSender`) are protocols here; PostgreSQL
(`memory.notification_store`), Redis pub/sub (`memory.notification_bus`) and pywebpush (`memory.webpush`)
implement them. No grpc here: the servicers (`memory.notification_service`) translate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import functools
import json
import logging
import re
import urllib.parse
import zoneinfo
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Protocol
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric import ec

from memory.pagination import Cursor
from mesh.clock import Clock
from mesh.errors import InvalidArgument

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
"""An idle watch stream carries a heartbeat this often (the contract's figure), so proxies keep it open."""

WATCH_QUEUE_SIZE = 64
"""Events one watch stream may have waiting; a stream this far behind loses notifications (it still
gets the unread count with the next event)."""

_HH_MM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True, slots=True)
class NewNotification:
    """What a rule asks to tell a person (NotifierService.Notify)."""

    agent_id: str
    title: str
    body: str
    kind: str
    dedupe_key: str
    conversation_id: str = ""

    @property
    def link(self) -> str:
        """Where the web app opens it: the agent's chat, in the conversation when there is one."""
        query = {"agent": self.agent_id}
        if self.conversation_id:
            query["conversation"] = self.conversation_id
        return "/?" + urllib.parse.urlencode(query)


@dataclass(frozen=True, slots=True)
class Notification:
    """A stored notification."""

    id: str
    agent_id: str
    title: str
    body: str
    kind: str
    conversation_id: str
    link: str
    created_at: datetime
    read_at: datetime | None = None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, self.id)

    def push_payload(self) -> bytes:
        """What a device's service worker receives (`event.data.json()`)."""
        return json.dumps(
            {
                "title": self.title,
                "body": self.body,
                "link": self.link,
                "id": self.id,
                "agent_id": self.agent_id,
            },
            ensure_ascii=False,
        ).encode()


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No push from `start` to `end` (local wall-clock time in `time_zone`); `start` after `end` spans
    midnight. Checked by `quiet_hours`: the zone exists and the two times differ."""

    start: time
    end: time
    time_zone: str

    def contains(self, at: datetime) -> bool:
        """Whether the moment `at` (timezone-aware) falls inside, in the person's zone."""
        local = at.astimezone(ZoneInfo(self.time_zone)).time().replace(second=0, microsecond=0, tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True, slots=True)
class NotificationSettings:
    """Which agents may not notify, and when not to push. The default: every agent, any time."""

    muted_agent_ids: tuple[str, ...] = ()
    quiet_hours: QuietHours | None = None

    def mutes(self, agent_id: str) -> bool:
        return agent_id in self.muted_agent_ids

    def quiet_at(self, at: datetime) -> bool:
        return self.quiet_hours is not None and self.quiet_hours.contains(at)

    def to_json(self) -> str:
        hours = self.quiet_hours
        return json.dumps(
            {
                "muted_agent_ids": list(self.muted_agent_ids),
                "quiet_hours": None
                if hours is None
                else {
                    "start": hours.start.strftime("%H:%M"),
                    "end": hours.end.strftime("%H:%M"),
                    "time_zone": hours.time_zone,
                },
            }
        )

    @classmethod
    def from_json(cls, text: str) -> NotificationSettings:
        data = json.loads(text)
        hours = data.get("quiet_hours")
        return cls(
            muted_agent_ids=tuple(data.get("muted_agent_ids", ())),
            quiet_hours=None
            if hours is None
            else QuietHours(
                time.fromisoformat(hours["start"]), time.fromisoformat(hours["end"]), hours["time_zone"]
            ),
        )


def quiet_hours(start: str, end: str, time_zone: str, field_name: str = "quiet_hours") -> QuietHours:
    """Quiet hours from what a person sent, or InvalidArgument naming the field at fault."""
    times = []
    for name, value in (("start", start), ("end", end)):
        match = _HH_MM.match(value)
        if match is None:
            raise InvalidArgument(f"{field_name}.{name}", 'must be "HH:MM", 24-hour')
        times.append(time(int(match[1]), int(match[2])))
    if times[0] == times[1]:
        raise InvalidArgument(f"{field_name}.end", "must differ from start")
    if time_zone not in iana_time_zones():
        raise InvalidArgument(f"{field_name}.time_zone", "is not an IANA time zone")
    return QuietHours(times[0], times[1], time_zone)


@functools.cache
def iana_time_zones() -> frozenset[str]:
    """The IANA zone names this system knows (a set, not a file lookup: no path reaches the filesystem)."""
    return frozenset(zoneinfo.available_timezones())


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """One device's subscription (`PushSubscription.toJSON()`): its push service's endpoint, its P-256
    public key (`p256dh`, base64url of the 65-byte point) and authentication secret (`auth`, 16 bytes)."""

    endpoint: str
    p256dh: str
    auth: str
    id: str = ""
    """Its row (empty until stored)."""

    @property
    def origin(self) -> str:
        """The push service's origin: what logs may say of an endpoint (the rest identifies a device)."""
        parts = urllib.parse.urlsplit(self.endpoint)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    def as_webpush(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


def b64url_decode(value: str) -> bytes:
    """base64url with or without padding (browsers send it without)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", value):
        raise ValueError("not base64url")
    stripped = value.rstrip("=")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def b64url_encode(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode().rstrip("=")


def push_subscription(endpoint: str, p256dh: str, auth: str, *, allow_http: bool = False) -> PushSubscription:
    """A subscription from what a browser sent, or InvalidArgument naming the field at fault. Endpoints
    are https URLs (`allow_http`: also http, for a local push-service emulator)."""
    parts = urllib.parse.urlsplit(endpoint)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise InvalidArgument("endpoint", "must be the https URL of a push service")
    if parts.fragment:
        raise InvalidArgument("endpoint", "must not have a fragment")
    try:
        point = b64url_decode(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        if len(point) != 65:
            raise ValueError("compressed")
    except (ValueError, binascii.Error):
        raise InvalidArgument("p256dh", "must be an uncompressed P-256 public key, base64url") from None
    try:
        secret = b64url_decode(auth)
    except (ValueError, binascii.Error):
        secret = b""
    if len(secret) != 16:
        raise InvalidArgument("auth", "must be a 16-byte authentication secret, base64url")
    return PushSubscription(endpoint=endpoint, p256dh=b64url_encode(point), auth=b64url_encode(secret))


class PushOutcome(enum.Enum):
    DELIVERED = "delivered"
    """The push service accepted it."""
    GONE = "gone"
    """The subscription is no more (404 or 410): forget it."""
    FAILED = "failed"
    """Anything else (logged by the sender); the subscription stays."""


class PushSender(Protocol):
    async def send(self, subscription: PushSubscription, payload: bytes) -> PushOutcome:
        """Encrypts `payload` for the device and posts it to its push service."""
        ...

    @property
    def public_key(self) -> str:
        """The VAPID public key (`applicationServerKey`): the uncompressed point, base64url."""
        ...


class NotificationStore(Protocol):
    """Each person's notifications, settings and push subscriptions (every method takes the user id)."""

    async def add(self, user_id: str, new: NewNotification) -> tuple[Notification, bool]:
        """Stores `new` unless a notification with its dedupe key is stored already; returns the stored
        one and whether this call stored it."""
        ...

    async def get(self, user_id: str, notification_id: str) -> Notification | None: ...

    async def page(
        self, user_id: str, limit: int, after: Cursor | None, *, unread_only: bool = False
    ) -> tuple[list[Notification], int]:
        """Up to `limit` notifications newest first after `after`, and the unread count."""
        ...

    async def unread_count(self, user_id: str) -> int: ...

    async def mark_read(self, user_id: str, notification_ids: Sequence[str] | None) -> tuple[int, int]:
        """Marks those of `notification_ids` (None: all) that are unread read; (marked, unread left)."""
        ...

    async def settings(self, user_id: str) -> NotificationSettings:
        """The person's settings (the defaults when they never set any)."""
        ...

    async def put_settings(self, user_id: str, settings: NotificationSettings) -> None: ...

    async def add_subscription(self, user_id: str, subscription: PushSubscription) -> None:
        """Stores the subscription, replacing the keys of one with the same endpoint."""
        ...

    async def remove_subscription(self, user_id: str, endpoint: str) -> bool: ...

    async def subscriptions(self, user_id: str) -> list[PushSubscription]: ...

    async def delete_subscription(self, user_id: str, subscription_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Stored:
    """A notification was stored for `user_id`: tabs following them show it."""

    user_id: str
    notification_id: str


@dataclass(frozen=True, slots=True)
class ReadChanged:
    """Some of `user_id`'s notifications were marked read: tabs following them update the unread count."""

    user_id: str


BusEvent = Stored | ReadChanged


class NotificationBus(Protocol):
    """How replicas tell each other what their tabs should see. Publishing never fails the caller: a bus
    that cannot publish logs it (the replica's own tabs were told already)."""

    async def publish(self, event: BusEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class UnreadCount:
    count: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    at: datetime


WatchEvent = Notification | UnreadCount | Heartbeat


@dataclass(eq=False)
class _Watcher:
    user_id: str
    queue: asyncio.Queue[Notification | ReadChanged] = field(
        default_factory=lambda: asyncio.Queue(WATCH_QUEUE_SIZE)
    )


class NotificationHub:
    """In-process fan-out: the watch streams open on this replica, by person."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[_Watcher]] = {}

    def watching(self, user_id: str) -> bool:
        return bool(self._watchers.get(user_id))

    @contextlib.contextmanager
    def watch(self, user_id: str) -> Iterator[asyncio.Queue[Notification | ReadChanged]]:
        """A queue of what `user_id`'s tabs should see, for as long as the block runs."""
        watcher = _Watcher(user_id)
        self._watchers.setdefault(user_id, set()).add(watcher)
        try:
            yield watcher.queue
        finally:
            watchers = self._watchers.get(user_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[user_id]

    def deliver(self, user_id: str, event: Notification | ReadChanged) -> None:
        """Hands `event` to every stream of `user_id` here (a stream too far behind loses it)."""
        for watcher in self._watchers.get(user_id, ()):
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("a notification stream is too far behind; an event was dropped")

    def resync(self) -> None:
        """Every stream here sends the unread count again (after the bus missed events)."""
        for user_id, watchers in self._watchers.items():
            for watcher in watchers:
                with contextlib.suppress(asyncio.QueueFull):
                    watcher.queue.put_nowait(ReadChanged(user_id))


@dataclass(frozen=True, slots=True)
class NotifyOutcome:
    notification: Notification | None
    """The stored notification (stored before, for a repeated dedupe key); None when the agent is muted."""
    created: bool
    pushed: int
    """Devices the push services accepted it for."""


class Notifier:
    """The notifications of every person, for the servicers and for events from other replicas."""

    def __init__(
        self,
        store: NotificationStore,
        hub: NotificationHub,
        bus: NotificationBus,
        sender: PushSender | None,
        *,
        clock: Clock,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.store = store
        self.hub = hub
        self._bus = bus
        self.sender = sender
        self._clock = clock
        self._heartbeat_seconds = heartbeat_seconds

    async def notify(self, user_id: str, new: NewNotification) -> NotifyOutcome:
        settings = await self.store.settings(user_id)
        if settings.mutes(new.agent_id):
            return NotifyOutcome(None, created=False, pushed=0)
        notification, created = await self.store.add(user_id, new)
        if not created:
            return NotifyOutcome(notification, created=False, pushed=0)
        self.hub.deliver(user_id, notification)
        await self._bus.publish(Stored(user_id, notification.id))
        pushed = 0
        if self.sender is not None and not settings.quiet_at(self._clock.now()):
            pushed = await self._push(user_id, notification)
        return NotifyOutcome(notification, created=True, pushed=pushed)

    async def _push(self, user_id: str, notification: Notification) -> int:
        assert self.sender is not None
        subscriptions = await self.store.subscriptions(user_id)
        payload = notification.push_payload()
        outcomes = await asyncio.gather(*(self.sender.send(s, payload) for s in subscriptions))
        for subscription, outcome in zip(subscriptions, outcomes, strict=True):
            if outcome is PushOutcome.GONE:
                await self.store.delete_subscription(user_id, subscription.id)
                log.info(
                    "deleted a push subscription its push service no longer knows",
                    extra={"push_service": subscription.origin},
                )
        return sum(outcome is PushOutcome.DELIVERED for outcome in outcomes)

    async def mark_read(self, user_id: str, notification_ids: Sequence[str] | None) -> tuple[int, int]:
        marked, unread = await self.store.mark_read(user_id, notification_ids)
        if marked:
            self.hub.deliver(user_id, ReadChanged(user_id))
            await self._bus.publish(ReadChanged(user_id))
        return marked, unread

    async def received(self, event: BusEvent) -> None:
        """An event another replica published: handed to the streams open here, if any."""
        if not self.hub.watching(event.user_id):
            return
        if isinstance(event, ReadChanged):
            self.hub.deliver(event.user_id, event)
            return
        notification = await self.store.get(event.user_id, event.notification_id)
        if notification is not None:
            self.hub.deliver(event.user_id, notification)

    async def watch(self, user_id: str) -> AsyncGenerator[WatchEvent, None]:
        """The unread count, then what happens until the caller stops iterating (see the module)."""
        with self.hub.watch(user_id) as queue:
            yield UnreadCount(await self.store.unread_count(user_id))
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self._heartbeat_seconds)
                except TimeoutError:
                    yield Heartbeat(self._clock.now())
                    continue
                if isinstance(event, ReadChanged):
                    yield UnreadCount(await self.store.unread_count(user_id))
                else:
                    yield event
