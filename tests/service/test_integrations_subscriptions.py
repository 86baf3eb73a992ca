"""The providers' change notifications for each connection (integrations.subscriptions), end to end: the
integrations service on a real PostgreSQL and Valkey, connecting at the Google and Microsoft emulators,
with a small aiohttp receiver standing in for the webhooks service behind the edge.

Connecting subscribes (Graph's validation handshake, Google's sync message, both registered for the
webhooks service to verify against); disconnecting and erasure stop them at the provider and in the
registry; the maintenance round renews what is about to expire (the clock driven, the emulators on the same
clock) and recreates what the provider removed, marking it for a resync; Graph's lifecycle events are
handled; people's subscriptions stay apart; the database holds no secret. A Google files channel keeps its
Drive cursor: `changed_files` answers what changed since the last look, once, across renewals.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from athena.connections.v1 import connections_pb2 as pb
from athena.connections.v1 import connections_pb2_grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from doubles.clock import FakeClock
from emulators import GoogleEmulator, MicrosoftEmulator
from emulators.google import GOOGLE_DOC
from integrations_fixtures import (  # type: ignore[import-not-found]
    REDIRECT,
    Metadata,
    Stub,
    connect,
    settings_for,
    user,
)
from privacy_fixtures import dump_database  # type: ignore[import-not-found]

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from integrations.app import INTEGRATIONS, IntegrationsDeps
from integrations.connections import Connections
from integrations.migrate import DATA_KEYS_TABLE, SERVICE
from integrations.oauth import OAuth
from integrations.postgres import PostgresConnectionStore
from integrations.postgres_subscriptions import PostgresSubscriptionStore
from integrations.providers import Provider
from integrations.subscriptions import ChangedFile, Lifecycle, Subscriptions
from mesh import redis
from mesh.app import RunningService
from mesh.envelope import DataKeys
from mesh.keystore import PostgresDataKeys
from mesh.kms import from_settings
from mesh.subscriptions import SubscriptionRegistry, health_subscription_id
from mesh.tokens import TokenVerifier

__all__ = ["user"]

GOOGLE_ACCOUNT = "person@example.com"
MICROSOFT_ACCOUNT = "person@contoso.com"
DAY = 86400.0


class Receiver:
    """The webhooks service as providers see it: echoes Graph's validation tokens, takes notifications."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], dict[str, str], bytes]] = []
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.path, dict(request.headers), dict(request.query), body))
        token = request.query.get("validationToken")
        if token is not None:
            return web.Response(text=token, content_type="text/plain")
        return web.Response(status=202)

    def at(self, path: str) -> list[tuple[dict[str, str], dict[str, str], bytes]]:
        return [(headers, query, body) for p, headers, query, body in self.received if p == path]

    def validations(self, path: str) -> list[str]:
        return [query["validationToken"] for _, query, _ in self.at(path) if "validationToken" in query]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest_asyncio.fixture
async def google(clock: FakeClock) -> AsyncIterator[GoogleEmulator]:
    emulator = GoogleEmulator(clock=clock.time, account=GOOGLE_ACCOUNT)
    emulator.register_client("google-client", "google-secret", [REDIRECT])
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest_asyncio.fixture
async def microsoft(clock: FakeClock) -> AsyncIterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator(clock=clock.time, account=MICROSOFT_ACCOUNT)
    emulator.register_client("microsoft-client", "microsoft-secret", [REDIRECT])
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", found.handle)
    found.server = TestServer(app, host="127.0.0.1")
    await found.server.start_server()
    yield found
    await found.server.close()


@pytest_asyncio.fixture
async def registry(valkey: EmbeddedValkey) -> AsyncIterator[SubscriptionRegistry]:
    client = redis.connect(valkey.url, 2.0)
    yield SubscriptionRegistry(client)
    await client.aclose()


@pytest_asyncio.fixture
async def service(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    kms_keys_dir: Path,
    start_service: Any,
    tmp_path: Path,
    verifier: TokenVerifier,
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    receiver: Receiver,
    clock: FakeClock,
) -> AsyncIterator[tuple[RunningService, Stub]]:
    settings = settings_for(tmp_path, postgres, kms_keys_dir, google, microsoft).model_copy(
        update={"webhooks_public_url": receiver.url, "redis_url": valkey.url}
    )
    running = await start_service(INTEGRATIONS, settings, IntegrationsDeps(verifier=verifier, clock=clock))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, connections_pb2_grpc.ConnectionsServiceStub(channel)
    await channel.close()


@pytest.fixture
def stub(service: tuple[RunningService, Stub]) -> Stub:
    return service[1]


@pytest_asyncio.fixture
async def subscriptions(
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    tmp_path: Path,
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    receiver: Receiver,
    registry: SubscriptionRegistry,
    clock: FakeClock,
    service: tuple[RunningService, Stub],  # migrated the schema
) -> AsyncIterator[Subscriptions]:
    """The domain object on the service's database, for what the maintenance round and the event consumer
    call (renewals, lifecycle events)."""
    settings = settings_for(tmp_path, postgres, kms_keys_dir, google, microsoft)
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=4)
    assert pool is not None
    try:
        async with httpx.AsyncClient(timeout=15) as http:
            keys = DataKeys(PostgresDataKeys(pool, DATA_KEYS_TABLE), from_settings(settings), SERVICE)
            connections = Connections(
                PostgresConnectionStore(pool, keys),
                OAuth(clock=clock.time),
                settings.providers(),
                clock=clock.now,
            )
            yield Subscriptions(
                PostgresSubscriptionStore(pool, keys),
                registry,
                connections,
                http,
                webhooks_url=receiver.url,
                google_calendar_url=google.calendar_base_url,
                drive_url=google.drive_base_url,
                graph_url=microsoft.graph_base_url,
                clock=clock.now,
            )
    finally:
        await pool.close()


async def rows(postgres: EmbeddedPostgres, user_id: str) -> int:
    database = await asyncpg.connect(postgres.url)
    try:
        count = await database.fetchval(
            "SELECT count(*) FROM integrations.subscriptions WHERE user_id = $1", uuid.UUID(user_id)
        )
    finally:
        await database.close()
    return int(count)


def graph_time(subscription_expiry: float) -> datetime:
    return datetime.fromtimestamp(subscription_expiry, UTC)


async def connect_calendars(stub: Stub, metadata: Metadata, google: GoogleEmulator) -> None:
    google.add_calendar(GOOGLE_ACCOUNT, GOOGLE_ACCOUNT, "Person", "Europe/Berlin", primary=True)
    await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)
    await google.deliveries()


async def test_connecting_microsoft_calendar_subscribes_after_the_validation_handshake(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    microsoft: MicrosoftEmulator,
    receiver: Receiver,
    registry: SubscriptionRegistry,
    clock: FakeClock,
) -> None:
    user_id, metadata = user()
    await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)

    (made,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    assert (made.resource, made.change_type) == ("me/events", "created,updated,deleted")
    assert made.notification_url == f"{receiver.url}/webhooks/graph"
    assert made.lifecycle_url == f"{receiver.url}/webhooks/graph/lifecycle"
    longest = clock.now() + timedelta(minutes=10_080)
    assert longest - timedelta(hours=2) < graph_time(made.expires_at) < longest  # the maximum, less a margin
    assert len(receiver.validations("/webhooks/graph")) == 1
    assert len(receiver.validations("/webhooks/graph/lifecycle")) == 1

    registered = await registry.lookup("microsoft", made.id)
    assert registered is not None
    assert (registered.user_id, registered.kind, registered.resource) == (user_id, "calendar", "me/events")
    assert made.client_state is not None
    assert len(made.client_state) >= 32
    assert registered.verifies(made.client_state)
    assert not registered.verifies("guessed")

    # What the webhooks service will get: a notification whose clientState the registry verifies.
    assert await microsoft.notify(MICROSOFT_ACCOUNT, "me/events", "created", "AAMkAGnew") == [202]
    _headers, _, body = receiver.at("/webhooks/graph")[-1]
    item = json.loads(body)["value"][0]
    assert item["subscriptionId"] == made.id
    assert registered.verifies(item["clientState"])


async def test_connecting_google_calendar_and_files_opens_channels_that_sync(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    receiver: Receiver,
    registry: SubscriptionRegistry,
) -> None:
    user_id, metadata = user()
    google.add_calendar(GOOGLE_ACCOUNT, GOOGLE_ACCOUNT, "Person", "Europe/Berlin", primary=True)
    await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR, pb.CAPABILITY_FILES)
    await google.deliveries()

    channels = {c.kind: c for c in google.live_channels(GOOGLE_ACCOUNT)}
    assert set(channels) == {"events", "changes"}
    syncs = {h["X-Goog-Channel-ID"]: h for h, _, _ in receiver.at("/webhooks/google")}
    for kind, capability in (("events", "calendar"), ("changes", "files")):
        channel = channels[kind]
        assert channel.address == f"{receiver.url}/webhooks/google"
        assert syncs[channel.id]["X-Goog-Resource-State"] == "sync"
        registered = await registry.lookup("google", channel.id)
        assert registered is not None
        assert (registered.user_id, registered.kind) == (user_id, capability)
        assert registered.resource == channel.resource_id == syncs[channel.id]["X-Goog-Resource-ID"]
        assert channel.token is not None
        assert registered.verifies(syncs[channel.id]["X-Goog-Channel-Token"])

    assert await google.notify_channel(channels["events"].id) == 202
    assert receiver.at("/webhooks/google")[-1][0]["X-Goog-Resource-State"] == "exists"


async def test_connecting_google_health_registers_the_person_under_their_health_user_id(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    registry: SubscriptionRegistry,
) -> None:
    user_id, metadata = user()
    await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_HEALTH)
    health_user = google.health_user_id(GOOGLE_ACCOUNT)
    registered = await registry.lookup("google", health_subscription_id(health_user))
    assert registered is not None
    assert (registered.user_id, registered.kind, registered.resource) == (user_id, "health", health_user)
    assert google.live_channels(GOOGLE_ACCOUNT) == []  # nothing per person at Google: one subscriber
    await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_GOOGLE), metadata=metadata)
    assert await registry.lookup("google", health_subscription_id(health_user)) is None


async def test_microsoft_files_without_a_write_scope_get_no_subscription_and_stay_connected(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    microsoft: MicrosoftEmulator,
    postgres: EmbeddedPostgres,
) -> None:
    user_id, metadata = user()
    connection = await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_FILES)
    assert connection.status == pb.CONNECTION_STATUS_CONNECTED
    # Graph wants Files.ReadWrite for a driveItem subscription; AthenaOS asks for Files.Read alone.
    assert microsoft.live_subscriptions(MICROSOFT_ACCOUNT) == []
    listed = await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)
    assert [c.status for c in listed.connections] == [pb.CONNECTION_STATUS_CONNECTED]
    assert await rows(postgres, user_id) == 0


async def test_disconnecting_stops_the_subscriptions_at_the_provider_and_in_the_registry(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    registry: SubscriptionRegistry,
    postgres: EmbeddedPostgres,
) -> None:
    user_id, metadata = user()
    await connect_calendars(stub, metadata, google)
    (graph,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    (channel,) = google.live_channels(GOOGLE_ACCOUNT)
    assert await rows(postgres, user_id) == 2

    await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_MICROSOFT), metadata=metadata)
    assert graph.id not in microsoft.subscriptions
    assert await registry.lookup("microsoft", graph.id) is None
    assert await registry.lookup("google", channel.id) is not None  # the other provider's stays

    await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_GOOGLE), metadata=metadata)
    assert channel.id not in google.channels
    assert await registry.lookup("google", channel.id) is None
    assert await rows(postgres, user_id) == 0


async def test_erasing_a_person_stops_their_subscriptions_before_revoking(
    service: tuple[RunningService, Stub],
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    registry: SubscriptionRegistry,
    postgres: EmbeddedPostgres,
) -> None:
    running, stub = service
    user_id, metadata = user()
    await connect_calendars(stub, metadata, google)
    (graph,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    (channel,) = google.live_channels(GOOGLE_ACCOUNT)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as grpc_channel:
        internal = integrations_pb2_grpc.IntegrationsServiceStub(grpc_channel)
        purged = await internal.PurgeUser(integrations_pb2.PurgeUserRequest(), metadata=metadata)
    assert purged.data_key_destroyed
    assert microsoft.live_subscriptions() == []
    assert google.live_channels() == []
    assert await registry.lookup("microsoft", graph.id) is None
    assert await registry.lookup("google", channel.id) is None
    assert await rows(postgres, user_id) == 0


async def test_renewal_near_expiry_extends_graph_and_replaces_google_channels(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    registry: SubscriptionRegistry,
    subscriptions: Subscriptions,
    clock: FakeClock,
) -> None:
    user_id, metadata = user()
    await connect_calendars(stub, metadata, google)
    (graph,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    (old,) = google.live_channels(GOOGLE_ACCOUNT)
    first_expiry = graph.expires_at

    clock.advance(5 * DAY)  # more than a day left: nothing to do yet
    assert await subscriptions.maintain() == 0

    clock.advance(1.5 * DAY)  # Graph's about half a day from its end, Google's a day
    assert await subscriptions.maintain() == 2
    await google.deliveries()
    assert [s.id for s in microsoft.live_subscriptions(MICROSOFT_ACCOUNT)] == [graph.id]  # renewed in place
    assert graph.expires_at > first_expiry + 6 * DAY
    (new,) = google.live_channels(GOOGLE_ACCOUNT)  # a new channel, the old one stopped
    assert new.id != old.id
    assert old.id not in google.channels
    assert new.expiration_ms / 1000 > clock.time() + 6 * DAY
    assert await registry.lookup("google", old.id) is None
    registered = await registry.lookup("google", new.id)
    assert registered is not None
    assert registered.user_id == user_id
    renewed = await registry.lookup("microsoft", graph.id)
    assert renewed is not None
    assert renewed.expires_at.timestamp() == pytest.approx(graph.expires_at)
    assert await subscriptions.needing_resync(user_id) == []  # nothing was missed
    assert await subscriptions.maintain() == 0


async def test_subscriptions_the_provider_dropped_are_recreated_and_resynced(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    registry: SubscriptionRegistry,
    subscriptions: Subscriptions,
    clock: FakeClock,
) -> None:
    user_id, metadata = user()
    await connect_calendars(stub, metadata, google)
    (graph,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    (channel,) = google.live_channels(GOOGLE_ACCOUNT)
    microsoft.remove_subscription(graph.id)  # gone at Graph without a word

    clock.advance(8 * DAY)  # and the renewal round missed: the Google channel lapsed too
    assert await subscriptions.maintain() == 2
    await google.deliveries()
    (graph_again,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    (channel_again,) = google.live_channels(GOOGLE_ACCOUNT)
    assert graph_again.id != graph.id
    assert channel_again.id != channel.id
    assert await registry.lookup("microsoft", graph.id) is None
    assert await registry.lookup("microsoft", graph_again.id) is not None
    assert await registry.lookup("google", channel_again.id) is not None
    missed = await subscriptions.needing_resync(user_id)
    assert {s.id for s in missed} == {graph_again.id, channel_again.id}  # the gap is read again
    for subscription in missed:
        await subscriptions.resynced(subscription)
    assert await subscriptions.needing_resync(user_id) == []


async def test_graph_lifecycle_events(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    microsoft: MicrosoftEmulator,
    receiver: Receiver,
    registry: SubscriptionRegistry,
    subscriptions: Subscriptions,
) -> None:
    user_id, metadata = user()
    await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)
    (graph,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)

    assert await microsoft.notify_lifecycle(graph.id, "reauthorizationRequired") == 202
    assert await subscriptions.on_lifecycle(Provider.MICROSOFT, graph.id, "reauthorizationRequired") == (
        Lifecycle.REAUTHORIZED
    )
    assert [r.path for r in microsoft.requests][-1] == f"/v1.0/subscriptions/{graph.id}/reauthorize"

    assert await subscriptions.on_lifecycle(Provider.MICROSOFT, graph.id, "missed") == Lifecycle.RESYNC
    assert [s.id for s in await subscriptions.needing_resync(user_id)] == [graph.id]

    assert await microsoft.notify_lifecycle(graph.id, "subscriptionRemoved") == 202
    lifecycle = json.loads(receiver.at("/webhooks/graph/lifecycle")[-1][2])["value"][0]
    assert lifecycle["lifecycleEvent"] == "subscriptionRemoved"
    registered = await registry.lookup("microsoft", graph.id)
    assert registered is not None
    assert registered.verifies(lifecycle["clientState"])
    assert await subscriptions.on_lifecycle(Provider.MICROSOFT, graph.id, "subscriptionRemoved") == (
        Lifecycle.RECREATED
    )
    (again,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    assert again.id != graph.id
    assert await registry.lookup("microsoft", graph.id) is None
    assert await registry.lookup("microsoft", again.id) is not None
    assert [s.id for s in await subscriptions.needing_resync(user_id)] == [again.id]
    assert await subscriptions.on_lifecycle(Provider.MICROSOFT, "unknown-id", "missed") == Lifecycle.UNKNOWN


async def test_each_person_has_their_own_subscriptions(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    microsoft: MicrosoftEmulator,
    registry: SubscriptionRegistry,
    postgres: EmbeddedPostgres,
) -> None:
    ada_id, ada = user()
    bob_id, bob = user()
    await connect(stub, ada, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)
    microsoft.sign_in("bob@contoso.com")
    await connect(stub, bob, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)
    (adas,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    (bobs,) = microsoft.live_subscriptions("bob@contoso.com")
    assert adas.client_state != bobs.client_state
    ada_registered = await registry.lookup("microsoft", adas.id)
    bob_registered = await registry.lookup("microsoft", bobs.id)
    assert ada_registered is not None
    assert bob_registered is not None
    assert (ada_registered.user_id, bob_registered.user_id) == (ada_id, bob_id)
    assert bobs.client_state is not None
    assert not ada_registered.verifies(bobs.client_state)

    await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_MICROSOFT), metadata=bob)
    assert [s.id for s in microsoft.live_subscriptions()] == [adas.id]
    assert await registry.lookup("microsoft", adas.id) is not None
    assert (await rows(postgres, ada_id), await rows(postgres, bob_id)) == (1, 0)


async def test_no_subscription_secret_is_readable_in_the_database(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
    postgres: EmbeddedPostgres,
) -> None:
    _, metadata = user()
    await connect_calendars(stub, metadata, google)
    secrets = [s.client_state for s in microsoft.live_subscriptions()] + [
        c.token for c in google.live_channels()
    ]
    assert len(secrets) == 2
    assert all(secrets)
    dump = await dump_database(postgres.superuser_url)
    assert "integrations.subscriptions" in dump
    for secret in secrets:
        assert secret is not None
        assert secret not in dump


async def test_a_lapsed_subscription_already_replaced_on_reconnect_is_not_made_twice(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    microsoft: MicrosoftEmulator,
    postgres: EmbeddedPostgres,
    subscriptions: Subscriptions,
    clock: FakeClock,
) -> None:
    user_id, metadata = user()
    await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)
    clock.advance(8 * DAY)  # lapsed, unrenewed
    await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)  # made again on reconnect
    (fresh,) = microsoft.live_subscriptions(MICROSOFT_ACCOUNT)
    assert await rows(postgres, user_id) == 2
    assert await subscriptions.maintain() == 0
    assert [s.id for s in microsoft.live_subscriptions(MICROSOFT_ACCOUNT)] == [fresh.id]
    assert [s.id for s in await subscriptions.held_by(user_id)] == [fresh.id]


async def connect_files(stub: Stub, metadata: Metadata, google: GoogleEmulator) -> None:
    await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_FILES)
    await google.deliveries()


async def set_cursor(postgres: EmbeddedPostgres, user_id: str, cursor: str) -> None:
    database = await asyncpg.connect(postgres.url)
    try:
        await database.execute(
            "UPDATE integrations.subscriptions SET cursor = $2 WHERE user_id = $1", uuid.UUID(user_id), cursor
        )
    finally:
        await database.close()


async def test_changed_files_answers_each_drive_file_changed_since_the_last_look_once(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    subscriptions: Subscriptions,
    clock: FakeClock,
) -> None:
    user_id, metadata = user()
    plan = google.add_file(GOOGLE_ACCOUNT, "Plan", GOOGLE_DOC, b"v1")
    notes = google.add_file(GOOGLE_ACCOUNT, "Notes", "text/plain", b"v1")
    google.add_file(GOOGLE_ACCOUNT, "Budget", GOOGLE_DOC, b"untouched")
    binned = google.add_file(GOOGLE_ACCOUNT, "Draft", GOOGLE_DOC, b"v1")
    gone = google.add_file(GOOGLE_ACCOUNT, "Scratch", "text/plain", b"v1")
    await connect_files(stub, metadata, google)
    assert await subscriptions.changed_files(user_id) == []  # what was there before is not news

    at = [clock.now() + timedelta(minutes=m) for m in (1, 2, 3)]
    google.update_file(GOOGLE_ACCOUNT, plan, content=b"v2", modified_time=at[0])
    google.update_file(GOOGLE_ACCOUNT, notes, name="Notes (Monday)", modified_time=at[1])
    google.update_file(GOOGLE_ACCOUNT, plan, content=b"v3", modified_time=at[2])
    google.update_file(GOOGLE_ACCOUNT, binned, content=b"v2")
    google.trash_file(GOOGLE_ACCOUNT, binned)
    google.update_file(GOOGLE_ACCOUNT, gone, content=b"v2")
    google.delete_file(GOOGLE_ACCOUNT, gone)

    assert await subscriptions.changed_files(user_id) == [
        ChangedFile(Provider.GOOGLE, notes, "Notes (Monday)", at[1]),
        ChangedFile(Provider.GOOGLE, plan, "Plan", at[2]),
    ]
    assert await subscriptions.changed_files(user_id) == []  # read: the cursor moved on
    google.update_file(GOOGLE_ACCOUNT, notes, modified_time=at[2] + timedelta(minutes=1))
    assert [f.file_id for f in await subscriptions.changed_files(user_id)] == [notes]


async def test_a_renewed_or_reopened_files_channel_continues_from_the_old_cursor(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    subscriptions: Subscriptions,
    clock: FakeClock,
) -> None:
    user_id, metadata = user()
    plan = google.add_file(GOOGLE_ACCOUNT, "Plan", GOOGLE_DOC, b"v1")
    notes = google.add_file(GOOGLE_ACCOUNT, "Notes", GOOGLE_DOC, b"v1")
    await connect_files(stub, metadata, google)
    (old,) = await subscriptions.held_by(user_id)
    google.update_file(GOOGLE_ACCOUNT, plan, content=b"v2")  # unread when the channel is replaced

    clock.advance(6.5 * DAY)
    assert await subscriptions.maintain() == 1
    await google.deliveries()
    (new,) = await subscriptions.held_by(user_id)
    assert new.id != old.id
    assert new.cursor == old.cursor
    (channel,) = google.live_channels(GOOGLE_ACCOUNT)
    assert channel.resource_uri.endswith(f"pageToken={old.cursor}")  # watched from there, too
    google.update_file(GOOGLE_ACCOUNT, notes, content=b"v2")
    assert [f.file_id for f in await subscriptions.changed_files(user_id)] == [plan, notes]

    google.update_file(GOOGLE_ACCOUNT, plan, content=b"v3")
    clock.advance(8 * DAY)  # the channel lapsed unrenewed; the person connects again
    await connect_files(stub, metadata, google)
    assert [f.file_id for f in await subscriptions.changed_files(user_id)] == [plan]


async def test_changed_files_are_each_persons_own_and_need_a_files_subscription(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    subscriptions: Subscriptions,
) -> None:
    ada_id, ada = user()
    bob_id, bob = user()
    cal_id, cal = user()
    nobody_id, _ = user()
    adas = google.add_file(GOOGLE_ACCOUNT, "Ada's plan", GOOGLE_DOC, b"v1")
    bobs = google.add_file("bob@example.com", "Bob's plan", GOOGLE_DOC, b"v1")
    await connect_files(stub, ada, google)
    google.sign_in("bob@example.com")
    await connect_files(stub, bob, google)
    google.sign_in("cal@example.com")
    google.add_calendar("cal@example.com", "cal@example.com", "Cal", primary=True)
    await connect(stub, cal, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)

    google.update_file("bob@example.com", bobs, content=b"v2")
    assert await subscriptions.changed_files(ada_id) == []
    assert [f.name for f in await subscriptions.changed_files(bob_id)] == ["Bob's plan"]
    google.update_file(GOOGLE_ACCOUNT, adas, content=b"v2")
    assert [f.name for f in await subscriptions.changed_files(ada_id)] == ["Ada's plan"]
    assert await subscriptions.changed_files(cal_id) == []  # a calendar channel has no cursor
    assert await subscriptions.changed_files(nobody_id) == []


async def test_changed_files_waits_out_an_unanswering_drive_and_restarts_after_a_refused_cursor(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    subscriptions: Subscriptions,
    postgres: EmbeddedPostgres,
) -> None:
    user_id, metadata = user()
    plan = google.add_file(GOOGLE_ACCOUNT, "Plan", GOOGLE_DOC, b"v1")
    await connect_files(stub, metadata, google)
    google.update_file(GOOGLE_ACCOUNT, plan, content=b"v2")

    google.rate_limit_next(1, retry_after_seconds=None)
    assert await subscriptions.changed_files(user_id) == []  # Drive could not answer: nothing lost
    assert [f.file_id for f in await subscriptions.changed_files(user_id)] == [plan]

    await set_cursor(postgres, user_id, "no-such-token")
    assert await subscriptions.changed_files(user_id) == []  # refused: listing starts again from now
    (subscription,) = await subscriptions.held_by(user_id)
    assert subscription.cursor.isdigit()
    google.update_file(GOOGLE_ACCOUNT, plan, content=b"v3")
    assert [f.file_id for f in await subscriptions.changed_files(user_id)] == [plan]
