"""Notifications (issue 16), served by memory against real PostgreSQL and Valkey, pushed to a local push
service (tests/emulators/push.py) that checks VAPID and decrypts what a device would receive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest
import pytest_asyncio
from athena.memory.v1 import memory_pb2
from athena.notifications.v1 import notifications_pb2 as pb
from athena.notifications.v1 import notifications_pb2_grpc as pb_grpc
from conftest import NO_REDIS, StartService, running_valkey
from emulators import PushEmulator
from emulators.push import BrowserSubscription
from memory_fixtures import MemoryHarness, expect_status, start_memory
from polling import eventually
from privacy_fixtures import dump_database

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from memory.notification_bus import RedisNotificationBus
from memory.notifications import ReadChanged, Stored
from memory.webpush import VapidKey, load_vapid_key
from mesh import redis
from mesh.tokens import TokenVerifier

pytestmark = pytest.mark.timeout(60)

Metadata = tuple[tuple[str, str], ...]


def notifications(harness: MemoryHarness) -> pb_grpc.NotificationsServiceStub:
    return pb_grpc.NotificationsServiceStub(harness.channel)


def notifier(harness: MemoryHarness) -> pb_grpc.NotifierServiceStub:
    return pb_grpc.NotifierServiceStub(harness.channel)


def vapid_key_file(tmp_path: Path) -> Path:
    """The deployment's VAPID key, as the Secret memory-vapid-key would hold it (made once per test)."""
    path = tmp_path / "vapid" / "private_key.pem"
    if not path.exists():
        VapidKey.generate().save(path)
    return path


async def start_notifying_memory(
    start_service: StartService,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    tmp_path: Path,
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    **overrides: Any,
) -> MemoryHarness:
    """Memory with a VAPID key, accepting the emulator's http:// endpoints, quick heartbeats."""
    settings: dict[str, Any] = {
        "vapid_key_file": vapid_key_file(tmp_path),
        "vapid_subject": "mailto:ops@example.com",
        "push_allow_http_endpoints": True,
        "push_ttl_seconds": 120,
        **overrides,
    }
    return await start_memory(
        start_service, verifier, make_token, tmp_path, postgres.url, valkey.url, **settings
    )


@pytest_asyncio.fixture
async def push() -> AsyncIterator[PushEmulator]:
    emulator = PushEmulator()
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest_asyncio.fixture
async def memory(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
) -> MemoryHarness:
    return await start_notifying_memory(start_service, verifier, make_token, tmp_path, postgres, valkey)


async def subscribe(harness: MemoryHarness, md: Metadata, push: PushEmulator) -> BrowserSubscription:
    """A device subscribing as the web app does: the VAPID key first, then the subscription posted back."""
    config = await notifications(harness).GetPushConfig(pb.GetPushConfigRequest(), metadata=md)
    device = push.subscribe(config.vapid_public_key)
    await notifications(harness).AddPushSubscription(
        pb.AddPushSubscriptionRequest(endpoint=device.endpoint, p256dh=device.p256dh, auth=device.auth),
        metadata=md,
    )
    return device


async def notify(harness: MemoryHarness, user_id: str, **fields: str) -> pb.NotifyResponse:
    request = pb.NotifyRequest(
        user_id=user_id,
        agent_id=fields.pop("agent_id", "focus"),
        title=fields.pop("title", "Your 14:00 meeting moved into your focus block"),
        body=fields.pop("body", "Shall I move the focus block to 16:00?"),
        kind=fields.pop("kind", "meeting_overlaps_focus"),
        dedupe_key=fields.pop("dedupe_key", f"meeting_overlaps_focus:{uuid.uuid4()}"),
        **fields,
    )
    response: pb.NotifyResponse = await notifier(harness).Notify(request, metadata=harness.service_metadata)
    return response


async def test_notify_stores_once_per_dedupe_key_and_pushes_to_every_device(
    memory: MemoryHarness, push: PushEmulator
) -> None:
    user_id, md = memory.user()
    phone = await subscribe(memory, md, push)
    laptop = await subscribe(memory, md, push)
    conversation = str(uuid.uuid4())

    first = await notify(
        memory, user_id, dedupe_key="meeting:evt-1:14:00", conversation_id=conversation, title="Moved"
    )
    assert first.created
    assert first.pushed == 2
    stored = first.notification
    assert stored.link == f"/?agent=focus&conversation={conversation}"
    assert not stored.HasField("read_at")
    for device in (phone, laptop):
        (message,) = push.messages_for(device)
        assert message.json() == {
            "title": "Moved",
            "body": "Shall I move the focus block to 16:00?",
            "link": stored.link,
            "id": stored.id,
            "agent_id": "focus",
        }
        assert message.ttl == 120
        assert message.urgency == "normal"
        assert message.claims["sub"] == "mailto:ops@example.com"

    again = await notify(memory, user_id, dedupe_key="meeting:evt-1:14:00", title="Moved again")
    assert not again.created
    assert again.pushed == 0
    assert again.notification.id == stored.id
    assert again.notification.title == "Moved"
    assert len(push.messages) == 2
    listed = await notifications(memory).ListNotifications(pb.ListNotificationsRequest(), metadata=md)
    assert [n.id for n in listed.notifications] == [stored.id]
    assert listed.unread_count == 1


async def test_a_subscription_the_push_service_says_is_gone_is_deleted(
    memory: MemoryHarness, push: PushEmulator
) -> None:
    user_id, md = memory.user()
    kept = await subscribe(memory, md, push)
    expired = await subscribe(memory, md, push)
    unknown = await subscribe(memory, md, push)
    push.expire(expired, 410)
    push.expire(unknown, 404)

    assert (await notify(memory, user_id)).pushed == 1
    assert (await notify(memory, user_id)).pushed == 1
    assert len(push.messages_for(kept)) == 2
    posted_to = [request.path for request in push.requests]
    assert posted_to.count(urlpath(expired)) == 1
    assert posted_to.count(urlpath(unknown)) == 1


def urlpath(device: BrowserSubscription) -> str:
    return "/" + device.endpoint.split("/", 3)[3]


async def test_quiet_hours_stop_the_push_but_not_the_notification(
    memory: MemoryHarness, push: PushEmulator
) -> None:
    user_id, md = memory.user()
    await subscribe(memory, md, push)
    # Quiet from an hour ago to an hour from now, in Kolkata (UTC+05:30): across midnight there or not.
    local = datetime.now(UTC).astimezone(ZoneInfo("Asia/Kolkata"))
    hours = pb.QuietHours(
        start=(local - timedelta(hours=1)).strftime("%H:%M"),
        end=(local + timedelta(hours=1)).strftime("%H:%M"),
        time_zone="Asia/Kolkata",
    )
    updated = await notifications(memory).UpdateNotificationSettings(
        pb.UpdateNotificationSettingsRequest(settings=pb.NotificationSettings(quiet_hours=hours)), metadata=md
    )
    assert updated.settings.quiet_hours == hours

    quiet = await notify(memory, user_id)
    assert quiet.created
    assert quiet.pushed == 0
    assert push.messages == []
    listed = await notifications(memory).ListNotifications(pb.ListNotificationsRequest(), metadata=md)
    assert [n.id for n in listed.notifications] == [quiet.notification.id]

    await notifications(memory).UpdateNotificationSettings(
        pb.UpdateNotificationSettingsRequest(settings=pb.NotificationSettings()), metadata=md
    )
    assert (await notify(memory, user_id)).pushed == 1


async def test_a_muted_agent_leaves_nothing(memory: MemoryHarness, push: PushEmulator) -> None:
    user_id, md = memory.user()
    await subscribe(memory, md, push)
    await notifications(memory).UpdateNotificationSettings(
        pb.UpdateNotificationSettingsRequest(settings=pb.NotificationSettings(muted_agent_ids=["focus"])),
        metadata=md,
    )
    settings = await notifications(memory).GetNotificationSettings(
        pb.GetNotificationSettingsRequest(), metadata=md
    )
    assert list(settings.settings.muted_agent_ids) == ["focus"]

    muted = await notify(memory, user_id, agent_id="focus")
    assert not muted.HasField("notification")
    assert not muted.created
    assert muted.pushed == 0
    heard = await notify(memory, user_id, agent_id="nutrition")
    assert heard.created
    listed = await notifications(memory).ListNotifications(pb.ListNotificationsRequest(), metadata=md)
    assert [n.agent_id for n in listed.notifications] == ["nutrition"]
    assert len(push.messages) == 1


async def test_list_pages_newest_first_and_mark_read_counts(memory: MemoryHarness) -> None:
    user_id, md = memory.user()
    stub = notifications(memory)
    ids = [(await notify(memory, user_id, title=f"n{i}")).notification.id for i in range(5)]

    first = await stub.ListNotifications(pb.ListNotificationsRequest(page_size=2), metadata=md)
    assert [n.title for n in first.notifications] == ["n4", "n3"]
    assert first.unread_count == 5
    second = await stub.ListNotifications(
        pb.ListNotificationsRequest(page_size=2, page_token=first.next_page_token), metadata=md
    )
    third = await stub.ListNotifications(
        pb.ListNotificationsRequest(page_size=2, page_token=second.next_page_token), metadata=md
    )
    assert [n.title for n in [*second.notifications, *third.notifications]] == ["n2", "n1", "n0"]
    assert third.next_page_token == ""

    marked = await stub.MarkRead(pb.MarkReadRequest(notification_ids=ids[:2]), metadata=md)
    assert (marked.marked, marked.unread_count) == (2, 3)
    again = await stub.MarkRead(pb.MarkReadRequest(notification_ids=ids[:2]), metadata=md)
    assert (again.marked, again.unread_count) == (0, 3)
    unread = await stub.ListNotifications(pb.ListNotificationsRequest(unread_only=True), metadata=md)
    assert [n.title for n in unread.notifications] == ["n4", "n3", "n2"]
    everything = await stub.ListNotifications(pb.ListNotificationsRequest(), metadata=md)
    assert [n.HasField("read_at") for n in everything.notifications] == [False, False, False, True, True]
    everything_read = await stub.MarkRead(pb.MarkReadRequest(all=True), metadata=md)
    assert (everything_read.marked, everything_read.unread_count) == (3, 0)

    await expect_status(
        stub.ListNotifications(pb.ListNotificationsRequest(page_token="not-a-token"), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def next_event(stream: Any) -> pb.WatchNotificationsResponse:
    event: pb.WatchNotificationsResponse = await asyncio.wait_for(stream.read(), 10)
    return event


async def test_watch_opens_with_the_unread_count_then_follows_notifications_and_reads(
    memory: MemoryHarness,
) -> None:
    user_id, md = memory.user()
    await notify(memory, user_id)
    stream = notifications(memory).WatchNotifications(pb.WatchNotificationsRequest(), metadata=md)
    try:
        assert (await next_event(stream)).unread_count == 1
        stored = await notify(memory, user_id, title="Short night")
        event = await next_event(stream)
        assert event.WhichOneof("event") == "notification"
        assert event.notification == stored.notification
        await notifications(memory).MarkRead(pb.MarkReadRequest(all=True), metadata=md)
        event = await next_event(stream)
        assert event.WhichOneof("event") == "unread_count"
        assert event.unread_count == 0
    finally:
        stream.cancel()


async def test_a_notification_stored_by_another_replica_reaches_the_tab(
    memory: MemoryHarness,
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
) -> None:
    other = await start_notifying_memory(start_service, verifier, make_token, tmp_path, postgres, valkey)
    user_id, md = memory.user()
    stream = notifications(memory).WatchNotifications(pb.WatchNotificationsRequest(), metadata=md)
    try:
        assert (await next_event(stream)).unread_count == 0
        await asyncio.sleep(0.3)  # both replicas' followers subscribed (a publish before is not replayed)
        stored = await notify(other, user_id, title="From the other replica")
        event = await next_event(stream)
        assert event.notification == stored.notification
        await notifications(other).MarkRead(pb.MarkReadRequest(all=True), metadata=md)
        assert (await next_event(stream)).unread_count == 0
    finally:
        stream.cancel()


async def test_the_stream_beats_while_idle(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
) -> None:
    harness = await start_notifying_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        postgres,
        valkey,
        notifications_heartbeat_seconds=0.2,
    )
    _, md = harness.user()
    stream = notifications(harness).WatchNotifications(pb.WatchNotificationsRequest(), metadata=md)
    try:
        assert (await next_event(stream)).unread_count == 0
        beat = await next_event(stream)
        assert beat.WhichOneof("event") == "heartbeat"
        assert abs(beat.heartbeat.ToDatetime(UTC) - datetime.now(UTC)) < timedelta(seconds=5)
    finally:
        stream.cancel()


async def test_a_person_sees_nothing_of_anothers(memory: MemoryHarness, push: PushEmulator) -> None:
    alice_id, alice = memory.user()
    bob_id, bob = memory.user()
    await subscribe(memory, alice, push)
    bob_stream = notifications(memory).WatchNotifications(pb.WatchNotificationsRequest(), metadata=bob)
    try:
        assert (await next_event(bob_stream)).unread_count == 0
        stored = await notify(memory, alice_id)
        listed = await notifications(memory).ListNotifications(pb.ListNotificationsRequest(), metadata=bob)
        assert list(listed.notifications) == []
        assert listed.unread_count == 0
        marked = await notifications(memory).MarkRead(
            pb.MarkReadRequest(notification_ids=[stored.notification.id]), metadata=bob
        )
        assert marked.marked == 0
        # Bob's stream carries nothing of it: the next event is a later one of his own.
        await notify(memory, bob_id, title="Bob's own")
        assert (await next_event(bob_stream)).notification.title == "Bob's own"
    finally:
        bob_stream.cancel()
    alice_list = await notifications(memory).ListNotifications(pb.ListNotificationsRequest(), metadata=alice)
    assert alice_list.unread_count == 1


async def test_nothing_readable_in_a_dump_and_erasure_takes_it_all(
    memory: MemoryHarness, push: PushEmulator, postgres: EmbeddedPostgres
) -> None:
    user_id, md = memory.user()
    secret = f"zq{uuid.uuid4().hex[:10]}"
    device = await subscribe(memory, md, push)
    await notifications(memory).UpdateNotificationSettings(
        pb.UpdateNotificationSettingsRequest(
            settings=pb.NotificationSettings(
                muted_agent_ids=[f"agent-{secret}"],
                quiet_hours=pb.QuietHours(start="22:00", end="07:00", time_zone="America/Argentina/Ushuaia"),
            )
        ),
        metadata=md,
    )
    await notify(
        memory,
        user_id,
        title=f"title {secret}",
        body=f"body {secret}",
        kind=f"kind_{secret}",
        dedupe_key=f"dedupe:{secret}",
        conversation_id=f"conv-{secret}",
    )
    dump = await dump_database(postgres.superuser_url)
    endpoint_id = device.endpoint.rsplit("/", 1)[1]
    for readable in (secret, endpoint_id, device.p256dh, device.auth, "Ushuaia"):
        assert readable not in dump

    purged = await memory.user_data.PurgeUser(memory_pb2.PurgeUserRequest(), metadata=md)
    assert purged.data_key_destroyed
    assert purged.deleted_rows >= 1 + 1 + 1 + 1  # the user, a notification, the settings, a subscription
    superuser = await asyncpg.connect(postgres.superuser_url)
    try:
        for table in ("notifications", "notification_settings", "push_subscriptions"):
            left = await superuser.fetchval(
                f"SELECT count(*) FROM {table} WHERE user_id = $1",  # noqa: S608 (constant names)
                uuid.UUID(user_id),
            )
            assert left == 0, table
    finally:
        await superuser.close()
    await expect_status(notify(memory, user_id), grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"endpoint": "ftp://push.example.com/x"}, "endpoint"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"p256dh": "B" + "A" * 86}, "p256dh"),
        ({"p256dh": "!" * 87}, "p256dh"),
        ({"auth": "A" * 24}, "auth"),
        ({"auth": "A" * 21 + "$"}, "auth"),
    ],
)
async def test_a_bad_subscription_is_refused_naming_its_field(
    memory: MemoryHarness, push: PushEmulator, request_fields: dict[str, str], field: str
) -> None:
    _, md = memory.user()
    device = push.subscribe()
    request = pb.AddPushSubscriptionRequest(
        **{"endpoint": device.endpoint, "p256dh": device.p256dh, "auth": device.auth, **request_fields}
    )
    error = await expect_status(
        notifications(memory).AddPushSubscription(request, metadata=md), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (error.details() or "").startswith(field)


@pytest.mark.parametrize(
    ("hours", "field"),
    [
        (pb.QuietHours(start="22:00", end="07:00", time_zone="Mars/Olympus_Mons"), "quiet_hours.time_zone"),
        (pb.QuietHours(start="22:00", end="22:00", time_zone="Europe/Berlin"), "quiet_hours.end"),
        (pb.QuietHours(start="24:00", end="07:00", time_zone="Europe/Berlin"), "quiet_hours.start"),
        (pb.QuietHours(start="22:00", end="7:00", time_zone="Europe/Berlin"), "quiet_hours.end"),
    ],
)
async def test_bad_quiet_hours_are_refused_naming_the_field(
    memory: MemoryHarness, hours: pb.QuietHours, field: str
) -> None:
    _, md = memory.user()
    error = await expect_status(
        notifications(memory).UpdateNotificationSettings(
            pb.UpdateNotificationSettingsRequest(settings=pb.NotificationSettings(quiet_hours=hours)),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in (error.details() or "")


async def test_notify_needs_the_service_key_and_a_user_id(memory: MemoryHarness) -> None:
    user_id, md = memory.user()
    request = pb.NotifyRequest(
        user_id=user_id, agent_id="focus", title="t", body="b", kind="k", dedupe_key="d"
    )
    await expect_status(notifier(memory).Notify(request, metadata=md), grpc.StatusCode.UNAUTHENTICATED)
    request.user_id = "not-a-uuid"
    error = await expect_status(
        notifier(memory).Notify(request, metadata=memory.service_metadata), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "user_id" in (error.details() or "")


async def test_remove_push_subscription_stops_the_pushes(memory: MemoryHarness, push: PushEmulator) -> None:
    user_id, md = memory.user()
    device = await subscribe(memory, md, push)
    await notifications(memory).RemovePushSubscription(
        pb.RemovePushSubscriptionRequest(endpoint=device.endpoint), metadata=md
    )
    await notifications(memory).RemovePushSubscription(
        pb.RemovePushSubscriptionRequest(endpoint=device.endpoint), metadata=md
    )
    assert (await notify(memory, user_id)).pushed == 0
    assert push.requests == []


async def test_without_a_vapid_key_push_is_off_and_notifications_still_work(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
) -> None:
    harness = await start_memory(start_service, verifier, make_token, tmp_path, postgres.url, valkey.url)
    user_id, md = harness.user()
    await expect_status(
        notifications(harness).GetPushConfig(pb.GetPushConfigRequest(), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    stored = await notify(harness, user_id)
    assert stored.created
    assert stored.pushed == 0


async def test_the_push_config_is_the_key_files_public_key(memory: MemoryHarness, tmp_path: Path) -> None:
    _, md = memory.user()
    config = await notifications(memory).GetPushConfig(pb.GetPushConfigRequest(), metadata=md)
    key = load_vapid_key(vapid_key_file(tmp_path), create_if_missing=False)
    assert key is not None
    assert config.vapid_public_key == key.public_key
    assert len(config.vapid_public_key) == 87  # 65 bytes, base64url without padding


async def test_without_redis_notifications_still_reach_this_replicas_tabs(
    postgres: EmbeddedPostgres,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
    push: PushEmulator,
) -> None:
    harness = await start_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        postgres.url,
        NO_REDIS,
        vapid_key_file=vapid_key_file(tmp_path),
        push_allow_http_endpoints=True,
    )
    user_id, md = harness.user()
    await subscribe(harness, md, push)
    stream = notifications(harness).WatchNotifications(pb.WatchNotificationsRequest(), metadata=md)
    try:
        assert (await next_event(stream)).unread_count == 0
        stored = await notify(harness, user_id)
        assert stored.created
        assert stored.pushed == 1
        assert (await next_event(stream)).notification == stored.notification
    finally:
        stream.cancel()


async def test_the_bus_follows_again_after_redis_comes_back_and_resyncs(tmp_path: Path) -> None:
    with running_valkey(tmp_path) as server:
        client = redis.connect(server.url, 1.0)
        bus = RedisNotificationBus(client, subscriber=redis.connect(server.url, 5.0), replica="here")
        other = RedisNotificationBus(redis.connect(server.url, 1.0), replica="there")
        received: list[Any] = []
        resyncs: list[bool] = []

        async def got(event: Any) -> None:
            received.append(event)

        follower = asyncio.create_task(bus.follow(got, lambda: resyncs.append(True)))
        try:
            user = str(uuid.uuid4())
            note = str(uuid.uuid4())
            await eventually(lambda: publish_and_check(other, Stored(user, note), received))
            await bus.publish(Stored(user, str(uuid.uuid4())))  # its own: skipped
            server.stop()
            await other.publish(ReadChanged(user))  # lost, and logged, not raised
            server.start()
            await eventually(lambda: asyncio.sleep(0, bool(resyncs)))
            received.clear()
            await eventually(lambda: publish_and_check(other, ReadChanged(user), received))
            assert all(event == ReadChanged(user) for event in received)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await client.aclose()


async def publish_and_check(bus: RedisNotificationBus, event: Any, received: list[Any]) -> bool:
    await bus.publish(event)
    await asyncio.sleep(0.05)
    return event in received
