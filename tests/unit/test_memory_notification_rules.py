"""Notifications without a server (memory.notifications): quiet hours across midnight and time zones, muted
agents, dedupe, what a push carries, gone subscriptions, the watch stream, and input checks."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import stat
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from doubles.clock import FakeClock
from doubles.notifications import MemoryNotificationStore, RecordingBus, RecordingPushSender

from memory.notifications import (
    Heartbeat,
    NewNotification,
    Notification,
    NotificationHub,
    NotificationSettings,
    Notifier,
    PushOutcome,
    PushSubscription,
    QuietHours,
    ReadChanged,
    Stored,
    UnreadCount,
    push_subscription,
    quiet_hours,
)
from memory.webpush import VapidKeyError, load_vapid_key
from mesh.errors import InvalidArgument

ALICE = "5d3c2a1e-0000-4000-8000-000000000001"
BOB = "5d3c2a1e-0000-4000-8000-000000000002"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def new(dedupe_key: str = "rule:1", agent_id: str = "focus", **fields: str) -> NewNotification:
    return NewNotification(
        agent_id=agent_id,
        title=fields.get("title", "Meeting moved"),
        body=fields.get("body", "Into your focus block"),
        kind=fields.get("kind", "meeting_overlaps_focus"),
        dedupe_key=dedupe_key,
        conversation_id=fields.get("conversation_id", ""),
    )


def device(n: int) -> PushSubscription:
    return PushSubscription(endpoint=f"https://push.example.com/{n}", p256dh="p", auth="a")


MORNING = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Setup:
    """A notifier on the in-memory doubles, at `now`."""

    def __init__(self, now: datetime = MORNING, heartbeat: float = 30.0) -> None:
        self.clock = FakeClock(now)
        self.store = MemoryNotificationStore(now)
        self.bus = RecordingBus()
        self.sender = RecordingPushSender()
        self.notifier = Notifier(
            self.store,
            NotificationHub(),
            self.bus,
            self.sender,
            clock=self.clock,
            heartbeat_seconds=heartbeat,
        )


# --- quiet hours ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "quiet"),
    [
        ("2026-12-01T21:59:00+01:00", False),
        ("2026-12-01T22:00:00+01:00", True),
        ("2026-12-01T23:59:00+01:00", True),
        ("2026-12-02T00:00:00+01:00", True),
        ("2026-12-02T06:59:59+01:00", True),
        ("2026-12-02T07:00:00+01:00", False),
        ("2026-12-02T12:00:00+01:00", False),
    ],
)
def test_quiet_hours_span_midnight_when_start_is_after_end(moment: str, quiet: bool) -> None:
    hours = QuietHours(time(22, 0), time(7, 0), "Europe/Berlin")
    assert hours.contains(at(moment)) is quiet


def test_quiet_hours_are_the_persons_wall_clock_not_utc() -> None:
    """22:00-07:00 in Tokyo (UTC+9) is 13:00-22:00 UTC; in New York (UTC-5 in winter) 03:00-12:00 UTC."""
    tokyo = NotificationSettings(quiet_hours=QuietHours(time(22, 0), time(7, 0), "Asia/Tokyo"))
    new_york = NotificationSettings(quiet_hours=QuietHours(time(22, 0), time(7, 0), "America/New_York"))
    afternoon_utc = at("2026-12-01T14:00:00+00:00")
    assert tokyo.quiet_at(afternoon_utc)
    assert not new_york.quiet_at(afternoon_utc)
    early_utc = at("2026-12-01T04:00:00+00:00")
    assert not tokyo.quiet_at(early_utc)
    assert new_york.quiet_at(early_utc)


def test_quiet_hours_follow_daylight_saving_time() -> None:
    """08:00-09:00 in Berlin is 07:00 UTC in winter and 06:00 UTC in summer."""
    hours = QuietHours(time(8, 0), time(9, 0), "Europe/Berlin")
    assert hours.contains(at("2026-01-15T07:30:00+00:00"))
    assert not hours.contains(at("2026-07-15T07:30:00+00:00"))
    assert hours.contains(at("2026-07-15T06:30:00+00:00"))


def test_no_quiet_hours_means_push_any_time() -> None:
    assert not NotificationSettings().quiet_at(at("2026-12-01T03:00:00+00:00"))


@pytest.mark.parametrize(
    ("start", "end", "zone", "field"),
    [
        ("22:00", "07:00", "Not/AZone", "quiet_hours.time_zone"),
        ("22:00", "07:00", "", "quiet_hours.time_zone"),
        ("22:00", "07:00", "../../etc/passwd", "quiet_hours.time_zone"),
        ("22:00", "22:00", "UTC", "quiet_hours.end"),
        ("24:00", "07:00", "UTC", "quiet_hours.start"),
        ("22:00", "7:00", "UTC", "quiet_hours.end"),
    ],
)
def test_bad_quiet_hours_name_their_field(start: str, end: str, zone: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        quiet_hours(start, end, zone)
    assert raised.value.field == field


def test_settings_survive_their_stored_form() -> None:
    settings = NotificationSettings(
        muted_agent_ids=("sme", "focus"), quiet_hours=quiet_hours("23:30", "06:15", "Asia/Kolkata")
    )
    assert NotificationSettings.from_json(settings.to_json()) == settings
    assert NotificationSettings.from_json(NotificationSettings().to_json()) == NotificationSettings()


# --- notify ---------------------------------------------------------------------------------------------


async def test_a_dedupe_key_seen_before_is_the_same_notification_told_once() -> None:
    s = Setup()
    await s.store.add_subscription(ALICE, device(1))
    first = await s.notifier.notify(ALICE, new("meeting:evt-1"))
    again = await s.notifier.notify(ALICE, new("meeting:evt-1", title="Something else"))
    assert first.created
    assert not again.created
    assert again.notification == first.notification
    assert (first.pushed, again.pushed) == (1, 0)
    assert len(s.sender.sent) == 1
    assert first.notification is not None
    assert s.bus.published == [Stored(ALICE, first.notification.id)]
    # The same key for another person is theirs.
    assert (await s.notifier.notify(BOB, new("meeting:evt-1"))).created


async def test_a_muted_agent_stores_nothing_and_others_still_speak() -> None:
    s = Setup()
    await s.store.add_subscription(ALICE, device(1))
    await s.store.put_settings(ALICE, NotificationSettings(muted_agent_ids=("focus",)))
    muted = await s.notifier.notify(ALICE, new(agent_id="focus"))
    assert muted.notification is None
    assert (muted.created, muted.pushed) == (False, 0)
    assert await s.store.unread_count(ALICE) == 0
    assert s.sender.sent == []
    assert s.bus.published == []
    assert (await s.notifier.notify(ALICE, new("other", agent_id="nutrition"))).created


async def test_inside_quiet_hours_it_is_stored_and_streamed_but_not_pushed() -> None:
    s = Setup(now=at("2026-12-01T23:30:00+01:00"))
    await s.store.add_subscription(ALICE, device(1))
    await s.store.put_settings(
        ALICE, NotificationSettings(quiet_hours=quiet_hours("22:00", "07:00", "Europe/Berlin"))
    )
    stream = s.notifier.watch(ALICE)
    assert await anext(stream) == UnreadCount(0)
    outcome = await s.notifier.notify(ALICE, new())
    assert outcome.created
    assert outcome.pushed == 0
    assert s.sender.sent == []
    assert await anext(stream) == outcome.notification
    s.clock.set(at("2026-12-02T07:00:00+01:00"))
    assert (await s.notifier.notify(ALICE, new("later"))).pushed == 1
    await stream.aclose()


async def test_every_device_gets_the_payload_and_a_gone_one_is_forgotten() -> None:
    s = Setup()
    for n in (1, 2, 3):
        await s.store.add_subscription(ALICE, device(n))
    s.sender.outcomes = {device(2).endpoint: PushOutcome.GONE, device(3).endpoint: PushOutcome.FAILED}
    outcome = await s.notifier.notify(ALICE, new(conversation_id="c-1", title="Short night"))
    assert outcome.pushed == 1
    assert [endpoint for endpoint, _ in s.sender.sent] == [device(n).endpoint for n in (1, 2, 3)]
    assert outcome.notification is not None
    assert json.loads(s.sender.sent[0][1]) == {
        "title": "Short night",
        "body": "Into your focus block",
        "link": "/?agent=focus&conversation=c-1",
        "id": outcome.notification.id,
        "agent_id": "focus",
    }
    # The gone device is deleted; the failing one is kept (a push service may recover).
    assert [sub.endpoint for sub in await s.store.subscriptions(ALICE)] == [
        device(1).endpoint,
        device(3).endpoint,
    ]


async def test_without_a_sender_nothing_is_pushed() -> None:
    s = Setup()
    notifier = Notifier(s.store, NotificationHub(), s.bus, None, clock=s.clock)
    await s.store.add_subscription(ALICE, device(1))
    outcome = await notifier.notify(ALICE, new())
    assert outcome.created
    assert outcome.pushed == 0


def test_the_link_opens_the_agents_chat_escaped() -> None:
    assert new(agent_id="focus").link == "/?agent=focus"
    assert new(agent_id="focus", conversation_id="a b&c").link == "/?agent=focus&conversation=a+b%26c"


# --- watch ----------------------------------------------------------------------------------------------


async def test_watch_opens_with_the_unread_count_and_follows_stores_and_reads() -> None:
    s = Setup()
    await s.notifier.notify(ALICE, new("before"))
    alice, bob = s.notifier.watch(ALICE), s.notifier.watch(BOB)
    assert await anext(alice) == UnreadCount(1)
    assert await anext(bob) == UnreadCount(0)
    stored = await s.notifier.notify(ALICE, new("now"))
    assert await anext(alice) == stored.notification
    marked = await s.notifier.mark_read(ALICE, None)
    assert marked == (2, 0)
    assert await anext(alice) == UnreadCount(0)
    assert s.bus.published[-1] == ReadChanged(ALICE)
    # Bob's stream saw nothing of Alice's: its next event is a heartbeat-free event of his own.
    mine = await s.notifier.notify(BOB, new("bob"))
    assert await anext(bob) == mine.notification
    await alice.aclose()
    await bob.aclose()
    assert not s.notifier.hub.watching(ALICE)


async def test_an_idle_stream_beats() -> None:
    s = Setup(heartbeat=0.01)
    stream = s.notifier.watch(ALICE)
    assert await anext(stream) == UnreadCount(0)
    assert await anext(stream) == Heartbeat(s.clock.now())
    await stream.aclose()


async def test_events_from_other_replicas_reach_only_streams_of_that_person() -> None:
    s = Setup()
    stored, _ = await s.store.add(ALICE, new())  # by another replica, sharing the database
    stream = s.notifier.watch(ALICE)
    assert await anext(stream) == UnreadCount(1)
    await s.notifier.received(Stored(BOB, stored.id))  # nobody follows Bob here: not even read
    await s.notifier.received(Stored(ALICE, stored.id))
    assert await anext(stream) == stored
    await s.notifier.received(ReadChanged(ALICE))
    assert await anext(stream) == UnreadCount(1)
    await stream.aclose()


async def test_resync_sends_every_stream_its_unread_count_again() -> None:
    s = Setup()
    stream = s.notifier.watch(ALICE)
    assert await anext(stream) == UnreadCount(0)
    await s.store.add(ALICE, new())  # stored by a replica whose event was lost
    s.notifier.hub.resync()
    assert await asyncio.wait_for(anext(stream), 1) == UnreadCount(1)
    await stream.aclose()


# --- push subscriptions ---------------------------------------------------------------------------------


def browser_keys() -> tuple[str, str]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return base64.urlsafe_b64encode(point).decode().rstrip("="), base64.urlsafe_b64encode(
        b"0123456789abcdef"
    ).decode()


def test_a_browser_subscription_is_accepted_in_canonical_form() -> None:
    p256dh, auth = browser_keys()
    subscription = push_subscription("https://fcm.googleapis.com/fcm/send/abc:def", p256dh, auth)
    assert subscription.p256dh == p256dh
    assert subscription.auth == auth.rstrip("=")
    assert subscription.origin == "https://fcm.googleapis.com"


@pytest.mark.parametrize(
    ("endpoint", "p256dh", "auth", "field"),
    [
        ("http://push.example.com/x", None, None, "endpoint"),
        ("https://user:pw@push.example.com/x", None, None, "endpoint"),
        ("https:///x", None, None, "endpoint"),
        ("https://push.example.com/x#frag", None, None, "endpoint"),
        (None, "B" + "A" * 86, None, "p256dh"),
        (None, "not base64!", None, "p256dh"),
        (None, None, base64.urlsafe_b64encode(b"short").decode(), "auth"),
        (None, None, "%%%%", "auth"),
    ],
)
def test_a_bad_subscription_names_its_field(
    endpoint: str | None, p256dh: str | None, auth: str | None, field: str
) -> None:
    good_p256dh, good_auth = browser_keys()
    with pytest.raises(InvalidArgument) as raised:
        push_subscription(endpoint or "https://push.example.com/x", p256dh or good_p256dh, auth or good_auth)
    assert raised.value.field == field


def test_http_endpoints_only_when_allowed() -> None:
    p256dh, auth = browser_keys()
    assert push_subscription("http://127.0.0.1:9/push/1", p256dh, auth, allow_http=True).endpoint


def test_a_compressed_point_is_not_a_p256dh() -> None:
    compressed = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    with pytest.raises(InvalidArgument):
        push_subscription(
            "https://push.example.com/x", base64.urlsafe_b64encode(compressed).decode(), browser_keys()[1]
        )


def test_logs_name_only_the_push_service() -> None:
    subscription = PushSubscription(
        endpoint="https://updates.push.services.mozilla.com/wpush/v2/secret", p256dh="", auth=""
    )
    assert subscription.origin == "https://updates.push.services.mozilla.com"


def test_the_payload_is_what_the_service_worker_reads() -> None:
    notification = Notification(
        id="n-1",
        agent_id="nutrition",
        title="Dîner",
        body="b",
        kind="k",
        conversation_id="",
        link="/?agent=nutrition",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert json.loads(notification.push_payload()) == {
        "title": "Dîner",
        "body": "b",
        "link": "/?agent=nutrition",
        "id": "n-1",
        "agent_id": "nutrition",
    }


# --- the VAPID key --------------------------------------------------------------------------------------


def test_a_dev_start_makes_the_vapid_key_once_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "vapid" / "private_key.pem"
    assert load_vapid_key(path, create_if_missing=False) is None
    made = load_vapid_key(path, create_if_missing=True)
    assert made is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_vapid_key(path, create_if_missing=True)
    assert again is not None
    assert again.public_key == made.public_key
    point = base64.urlsafe_b64decode(made.public_key + "=")
    assert len(point) == 65
    assert point[0] == 4
    assert list(path.parent.iterdir()) == [path]


def test_a_vapid_key_that_is_not_p256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(VapidKeyError):
        load_vapid_key(path, create_if_missing=True)
    path.write_text("not a key")
    with pytest.raises(VapidKeyError):
        load_vapid_key(path, create_if_missing=True)


def test_the_notification_domain_and_adapters_import_no_grpc() -> None:
    """The domain (and the adapters beneath it) are tested and used without a server; only the servicers
    (memory/notification_service.py) speak gRPC."""
    root = Path(__file__).resolve().parents[2] / "memory"
    for module in ("notifications", "notification_store", "notification_bus", "webpush"):
        tree = ast.parse((root / f"{module}.py").read_text())
        imported = {
            name
            for node in ast.walk(tree)
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        }
        assert not {name for name in imported if name.startswith(("grpc", "athena."))}, module
