"""An agent that speaks first, end to end (issue 16's second acceptance item): the whole mesh as `make run`
starts it with the provider emulators and a Web Push service emulator. A person connects their Microsoft
calendar (the integrations service subscribes to its changes; Graph's validation handshake reaches the
webhooks service through the edge), turns push on for a device, and keeps a tab following their
notifications; the emulator then sends the change notification of a meeting that overlaps their focus
block → the webhooks service verifies it and publishes it on the event bus → the integrations service's
proactive agents read the week's events and leave the focus coach's notification with memory → it is in
ListNotifications, on the open tab's stream, and pushed to the device, whose keys decrypt it."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from athena.connections.v1 import connections_pb2 as pb
from athena.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from emulators import GoogleEmulator, MicrosoftEmulator, PushEmulator
from test_connections_e2e import Mesh as ConnectedMesh  # type: ignore[import-not-found]
from test_connections_e2e import connect  # type: ignore[import-not-found]

from devstack.process import free_port
from devstack.stack import (
    EMULATOR_CLIENT_ID,
    EMULATOR_CLIENT_SECRET,
    Ports,
    Stack,
    StackConfig,
    emulated_providers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

AT_MICROSOFT = "grace@contoso.com"
AT_GOOGLE = "lin@example.com"
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Mesh(ConnectedMesh):
    """The connections end to end test's mesh, with a Web Push service for the person's device."""

    push: PushEmulator

    async def answer(self, metadata: Metadata, text: str, agent: str = "focus") -> str:
        events = await self.chat(metadata, text, agent)
        return "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")

    @property
    def notifications(self) -> notifications_pb2_grpc.NotificationsServiceStub:
        return notifications_pb2_grpc.NotificationsServiceStub(self.channel)


@pytest_asyncio.fixture(scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    google, microsoft, push = (
        GoogleEmulator(account=AT_GOOGLE),
        MicrosoftEmulator(account=AT_MICROSOFT),
        PushEmulator(),
    )
    for emulator in (google, microsoft, push):
        await emulator.start()
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    edge = f"http://127.0.0.1:{ports.edge}"
    redirect = f"{edge}/connections"
    for provider in (google, microsoft):
        provider.register_client(EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET, [redirect])
    extra_env = {
        **emulated_providers(google.base_url, microsoft.base_url, [redirect], webhooks_public_url=edge),
        "MEMORY_PUSH_ALLOW_HTTP_ENDPOINTS": "true",  # the push emulator is plain HTTP on loopback
    }
    with tempfile.TemporaryDirectory(prefix="athena-proactive-") as data:
        stack = Stack(StackConfig(data_dir=Path(data), ports=ports, offline_delay_ms=0, extra_env=extra_env))
        await asyncio.to_thread(stack.start)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.edge}")
        try:
            yield Mesh(stack, channel, redirect, google, microsoft, push)
        finally:
            await channel.close(grace=None)
            await asyncio.to_thread(stack.stop)
            for emulator in (google, microsoft, push):
                await emulator.stop()


def graph_time(moment: datetime) -> dict[str, str]:
    return {"dateTime": moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


async def test_a_meeting_moved_into_a_focus_block_reaches_the_list_the_open_tab_and_the_device(
    mesh: Mesh,
) -> None:
    who = await mesh.sign_in("grace@example.com")
    # A device that allowed push, subscribed with the deployment's VAPID key.
    key = await mesh.notifications.GetPushConfig(notifications_pb2.GetPushConfigRequest(), metadata=who)
    device = mesh.push.subscribe(key.vapid_public_key)
    await mesh.notifications.AddPushSubscription(
        notifications_pb2.AddPushSubscriptionRequest(
            endpoint=device.endpoint, p256dh=device.p256dh, auth=device.auth
        ),
        metadata=who,
    )
    # An open tab following the notifications.
    tab: list[notifications_pb2.WatchNotificationsResponse] = []
    watch = mesh.notifications.WatchNotifications(notifications_pb2.WatchNotificationsRequest(), metadata=who)

    async def follow() -> None:
        async for event in watch:
            tab.append(event)

    following = asyncio.create_task(follow())
    try:
        await connect(mesh, who, pb.PROVIDER_MICROSOFT)  # type: ignore[arg-type]
        (subscription,) = mesh.microsoft.live_subscriptions(AT_MICROSOFT)
        assert subscription.resource.lower() == "me/events"

        tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
        mesh.microsoft.add_event(
            AT_MICROSOFT,
            {
                "subject": "Focus time",
                "start": graph_time(tomorrow),
                "end": graph_time(tomorrow + timedelta(hours=2)),
            },
        )
        before = await mesh.answer(who, "what's on my calendar tomorrow?")  # cached for five minutes
        assert "Focus time" in before
        assert "Vendor call" not in before
        meeting = mesh.microsoft.add_event(
            AT_MICROSOFT,
            {
                "subject": "Vendor call",
                "start": graph_time(tomorrow + timedelta(minutes=30)),
                "end": graph_time(tomorrow + timedelta(minutes=60)),
            },
        )
        fired = time.monotonic()
        assert await mesh.microsoft.notify(AT_MICROSOFT, "me/events", "created", meeting["id"]) == [202]

        listed = None
        for _ in range(200):
            listed = await mesh.notifications.ListNotifications(
                notifications_pb2.ListNotificationsRequest(), metadata=who
            )
            if listed.notifications:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - fired
        assert listed is not None
        assert listed.notifications, "no notification within 10 s"
        (notification,) = listed.notifications
        print(f"change notification → stored notification: {elapsed * 1000:.0f} ms")
        assert (notification.agent_id, notification.kind) == ("focus", "meeting_overlaps_focus")
        assert "Vendor call" in notification.title
        assert "Focus time" in notification.body
        assert listed.unread_count == 1

        for _ in range(100):
            if any(e.WhichOneof("event") == "notification" for e in tab) and mesh.push.messages_for(device):
                break
            await asyncio.sleep(0.05)
        streamed = [e.notification for e in tab if e.WhichOneof("event") == "notification"]
        assert [n.id for n in streamed] == [notification.id]
        (pushed,) = mesh.push.messages_for(device)
        payload = json.loads(pushed.payload)
        assert (payload["id"], payload["title"]) == (notification.id, notification.title)

        # The change emptied the cached answer: the agent sees the meeting at once.
        assert "Vendor call" in await mesh.answer(who, "what's on my calendar tomorrow?")

        # The same notification again (Graph retries, a replica re-reads the bus) is one notification.
        await mesh.microsoft.notify(AT_MICROSOFT, "me/events", "updated", meeting["id"])
        await asyncio.sleep(1.0)
        again = await mesh.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(), metadata=who
        )
        assert [n.id for n in again.notifications] == [notification.id]
    finally:
        watch.cancel()
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_a_changed_document_the_business_assistant_found_is_said_in_that_conversation(
    mesh: Mesh,
) -> None:
    who = await mesh.sign_in("lin@example.com")
    plan = mesh.google.add_file(
        AT_GOOGLE,
        "Q3 budget plan",
        "application/vnd.google-apps.document",
        b"The budget grows by ten percent.",
    )
    await connect(mesh, who, pb.PROVIDER_GOOGLE, pb.CAPABILITY_FILES)  # type: ignore[arg-type]
    (channel,) = [c for c in mesh.google.live_channels(AT_GOOGLE) if c.kind == "changes"]

    events = await mesh.chat(who, "find my documents about the budget", agent="sme")
    (started,) = [e.conversation_started for e in events if e.WhichOneof("event") == "conversation_started"]
    answer = "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")
    assert "Q3 budget plan" in answer

    mesh.google.update_file(AT_GOOGLE, plan, content=b"The budget grows by twelve percent.")
    assert await mesh.google.notify_channel(channel.id) == 200

    for _ in range(200):
        listed = await mesh.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(), metadata=who
        )
        if listed.notifications:
            break
        await asyncio.sleep(0.05)
    (notification,) = listed.notifications
    assert (notification.agent_id, notification.kind) == ("sme", "document_changed")
    assert notification.conversation_id == started.conversation_id  # continue where it was found
    assert "“Q3 budget plan”, which we talked about" in notification.body
