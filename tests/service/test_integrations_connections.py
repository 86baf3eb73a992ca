"""ConnectionsService end to end: the integrations service on a real PostgreSQL, connecting accounts at the
Google and Microsoft emulators (tests/emulators) through their real consent, token and revocation
endpoints: the happy paths (incremental consent included), every way a connection must fail, tokens
refreshed once however many need them, a revoked grant becoming "needs reconnect", other people seeing
nothing, and no token readable in the database; then what the agents' tools read through connections:
free/busy and events of both calendars merged (all-day events on the right days, in every zone), files."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from athena.connections.v1 import connections_pb2 as pb
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from emulators import GoogleEmulator, MicrosoftEmulator
from integrations_fixtures import (  # type: ignore[import-not-found]
    CALENDAR,
    DRIVE,
    REDIRECT,
    Metadata,
    Stub,
    connect,
    consent,
    domain,
    google,
    microsoft,
    query_of,
    service,
    settings_for,
    stub,
    text_pdf,
    user,
)
from privacy_fixtures import dump_database

from devstack.postgres import EmbeddedPostgres
from integrations.connections import Connections, Status, hash_state
from integrations.migrate import DATA_KEYS_TABLE, SERVICE
from integrations.postgres import PostgresConnectionStore
from integrations.providers import Provider
from mesh.app import RunningService
from mesh.envelope import DataKeys
from mesh.errors import FailedPrecondition
from mesh.keystore import PostgresDataKeys
from mesh.kms import from_settings

__all__ = ["domain", "google", "microsoft", "service", "stub", "user"]


async def fails(call: Any, request: Any, metadata: Metadata, status: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=metadata)
    assert caught.value.code() == status, caught.value.details()
    return caught.value.details() or ""


async def test_the_consent_page_asks_for_the_capabilitys_scopes_with_pkce_and_offline_access(
    stub: Stub, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, metadata = user()
    begun = await stub.BeginConnection(
        pb.BeginConnectionRequest(
            provider=pb.PROVIDER_GOOGLE, capabilities=[pb.CAPABILITY_CALENDAR], redirect_uri=REDIRECT
        ),
        metadata=metadata,
    )
    query = query_of(begun.authorization_url)
    assert query["client_id"] == "google-client"
    assert query["redirect_uri"] == REDIRECT
    assert query["response_type"] == "code"
    assert query["state"] == begun.state
    assert len(begun.state) >= 32
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert query["scope"].split() == ["openid", "email", CALENDAR]
    assert (query["access_type"], query["include_granted_scopes"]) == ("offline", "true")
    assert begun.expires_at.ToSeconds() > 0


async def test_google_connects_and_a_second_capability_adds_its_scopes_alone(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator
) -> None:
    _, metadata = user()
    calendar = await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    assert calendar.status == pb.CONNECTION_STATUS_CONNECTED
    assert list(calendar.capabilities) == [pb.CAPABILITY_CALENDAR]

    begun = await stub.BeginConnection(
        pb.BeginConnectionRequest(
            provider=pb.PROVIDER_GOOGLE, capabilities=[pb.CAPABILITY_FILES], redirect_uri=REDIRECT
        ),
        metadata=metadata,
    )
    assert query_of(begun.authorization_url)["scope"].split() == ["openid", "email", DRIVE]
    both = await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_FILES)
    assert both.id == calendar.id
    assert list(both.capabilities) == [pb.CAPABILITY_CALENDAR, pb.CAPABILITY_FILES]
    listed = (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)).connections
    assert [(c.provider, list(c.capabilities)) for c in listed] == [
        (pb.PROVIDER_GOOGLE, [pb.CAPABILITY_CALENDAR, pb.CAPABILITY_FILES])
    ]


async def test_microsoft_connects_its_calendar_and_offers_no_health(
    stub: Stub, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, metadata = user()
    connection = await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_CALENDAR)
    assert (connection.provider, list(connection.capabilities)) == (
        pb.PROVIDER_MICROSOFT,
        [pb.CAPABILITY_CALENDAR],
    )
    message = await fails(
        stub.BeginConnection,
        pb.BeginConnectionRequest(
            provider=pb.PROVIDER_MICROSOFT, capabilities=[pb.CAPABILITY_HEALTH], redirect_uri=REDIRECT
        ),
        metadata,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert message == "capabilities: Microsoft offers no access to your health data"


async def test_a_state_is_good_once_for_the_person_who_began_it(
    stub: Stub, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, owner = user()
    _, stranger = user()
    begun = await stub.BeginConnection(
        pb.BeginConnectionRequest(
            provider=pb.PROVIDER_GOOGLE, capabilities=[pb.CAPABILITY_CALENDAR], redirect_uri=REDIRECT
        ),
        metadata=owner,
    )
    back = await consent(begun.authorization_url)
    request = pb.CompleteConnectionRequest(state=back["state"], code=back["code"], redirect_uri=REDIRECT)
    message = await fails(stub.CompleteConnection, request, stranger, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "state: is unknown, used or expired; connect again"
    await stub.CompleteConnection(request, metadata=owner)  # the stranger's try did not use it up
    await fails(stub.CompleteConnection, request, owner, grpc.StatusCode.INVALID_ARGUMENT)
    forged = pb.CompleteConnectionRequest(state="forged-" + back["state"], code="x", redirect_uri=REDIRECT)
    await fails(stub.CompleteConnection, forged, owner, grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_refusal_a_wrong_code_and_a_foreign_redirect_are_told_apart(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator
) -> None:
    _, metadata = user()
    begin = pb.BeginConnectionRequest(
        provider=pb.PROVIDER_GOOGLE, capabilities=[pb.CAPABILITY_CALENDAR], redirect_uri=REDIRECT
    )
    google.refuse_next_consent()
    refused = await consent((await stub.BeginConnection(begin, metadata=metadata)).authorization_url)
    assert refused["error"] == "access_denied"
    message = await fails(
        stub.CompleteConnection,
        pb.CompleteConnectionRequest(state=refused["state"], error=refused["error"], redirect_uri=REDIRECT),
        metadata,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert message == "Google did not connect: you declined"

    begun = await stub.BeginConnection(begin, metadata=metadata)
    message = await fails(
        stub.CompleteConnection,
        pb.CompleteConnectionRequest(state=begun.state, code="not-a-code", redirect_uri=REDIRECT),
        metadata,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert message == "Google did not accept the sign-in; connect again"

    foreign = pb.BeginConnectionRequest(
        provider=pb.PROVIDER_GOOGLE,
        capabilities=[pb.CAPABILITY_CALENDAR],
        redirect_uri="https://evil.example/",
    )
    message = await fails(stub.BeginConnection, foreign, metadata, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "redirect_uri: is not registered with Google"
    bad = pb.BeginConnectionRequest(provider=pb.PROVIDER_GOOGLE, redirect_uri=REDIRECT)
    message = await fails(stub.BeginConnection, bad, metadata, grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith("capabilities:")
    unknown = pb.BeginConnectionRequest(
        provider=7, capabilities=[pb.CAPABILITY_CALENDAR], redirect_uri=REDIRECT
    )  # type: ignore[arg-type]
    message = await fails(stub.BeginConnection, unknown, metadata, grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith("provider:")


async def test_disconnecting_revokes_the_grant_at_google_then_deletes_it(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator
) -> None:
    _, metadata = user()
    await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    revocations = len([r for r in google.requests if r.path == "/revoke"])
    answer = await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_GOOGLE), metadata=metadata)
    assert answer.revoked_at_provider
    assert len([r for r in google.requests if r.path == "/revoke"]) == revocations + 1
    assert not (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)).connections
    again = await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_GOOGLE), metadata=metadata)
    assert not again.revoked_at_provider


async def test_another_person_sees_none_of_it_and_the_database_holds_no_token(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], postgres: EmbeddedPostgres
) -> None:
    owner_id, owner = user()
    _, stranger = user()
    await connect(stub, owner, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    assert not (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=stranger)).connections
    await stub.Disconnect(pb.DisconnectRequest(provider=pb.PROVIDER_GOOGLE), metadata=stranger)
    assert (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=owner)).connections

    database = await asyncpg.connect(postgres.url)
    try:
        row = await database.fetchrow(
            "SELECT grant_sealed FROM integrations.connections WHERE user_id = $1", uuid.UUID(owner_id)
        )
        dump = await database.fetch("SELECT * FROM integrations.connections")
    finally:
        await database.close()
    assert row is not None
    sealed = bytes(row["grant_sealed"])
    for secret in (b"ya29.", b"1//0", b"access_token", b"refresh_token"):
        assert secret not in sealed
    assert all(b"ya29." not in repr(tuple(record)).encode() for record in dump)


async def test_an_expiring_token_is_refreshed_once_however_many_need_it(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, domain: Connections
) -> None:
    user_id, metadata = user()
    google.expires_in = 60  # within the refresh margin: the first use refreshes it
    try:
        await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    finally:
        google.expires_in = 3599
    refreshes = len([r for r in google.requests if r.path == "/token"])
    got = await asyncio.gather(*(domain.access_token(user_id, Provider.GOOGLE) for _ in range(5)))
    assert len([r for r in google.requests if r.path == "/token"]) == refreshes + 1
    assert len({token for _, token in got}) == 1


async def test_a_revoked_grant_marks_the_connection_needs_reconnect(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, domain: Connections
) -> None:
    user_id, metadata = user()
    google.expires_in = 60
    try:
        await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    finally:
        google.expires_in = 3599
    google.revoke_grant(google.account or "")
    with pytest.raises(FailedPrecondition, match="connect it again"):
        await domain.access_token(user_id, Provider.GOOGLE)
    (listed,) = (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)).connections
    assert listed.status == pb.CONNECTION_STATUS_NEEDS_RECONNECT
    assert listed.status_message == (
        "Google no longer accepts AthenaOS's access to your account; connect it again."
    )
    stored = await domain.list(user_id)
    assert stored[0].status is Status.NEEDS_RECONNECT


async def test_purging_a_person_revokes_their_grants_and_leaves_nothing(
    service: tuple[RunningService, Stub],
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    postgres: EmbeddedPostgres,
) -> None:
    running, stub = service
    user_id, metadata = user()
    await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    await connect(stub, metadata, pb.PROVIDER_MICROSOFT, pb.CAPABILITY_FILES)
    await stub.BeginConnection(  # pending, never completed
        pb.BeginConnectionRequest(
            provider=pb.PROVIDER_GOOGLE, capabilities=[pb.CAPABILITY_FILES], redirect_uri=REDIRECT
        ),
        metadata=metadata,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        internal = integrations_pb2_grpc.IntegrationsServiceStub(channel)
        purged = await internal.PurgeUser(integrations_pb2.PurgeUserRequest(), metadata=metadata)
        again = await internal.PurgeUser(integrations_pb2.PurgeUserRequest(), metadata=metadata)
    assert (purged.deleted_rows, purged.data_key_destroyed, purged.revoked_grants) == (3, True, 1)
    assert (again.deleted_rows, again.data_key_destroyed, again.revoked_grants) == (0, False, 0)
    assert not (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)).connections
    database = await asyncpg.connect(postgres.url)
    try:
        left = await database.fetchval(
            """SELECT (SELECT count(*) FROM integrations.connections WHERE user_id = $1)
                    + (SELECT count(*) FROM integrations.pending_connections WHERE user_id = $1)
                    + (SELECT count(*) FROM integrations.data_keys WHERE owner = $2)""",
            uuid.UUID(user_id),
            user_id,
        )
    finally:
        await database.close()
    assert left == 0


@pytest_asyncio.fixture
async def internal(
    service: tuple[RunningService, Stub],
) -> AsyncIterator[integrations_pb2_grpc.IntegrationsServiceStub]:
    running, _ = service
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield integrations_pb2_grpc.IntegrationsServiceStub(channel)


def free_busy_request(start: datetime, end: datetime) -> integrations_pb2.FreeBusyRequest:
    request = integrations_pb2.FreeBusyRequest()
    request.start.FromDatetime(start)
    request.end.FromDatetime(end)
    return request


def blocks(answer: integrations_pb2.FreeBusyResponse) -> list[tuple[str, str]]:
    return [(b.start.ToJsonString(), b.end.ToJsonString()) for b in answer.busy]


async def connect_as(
    stub: Stub, metadata: Metadata, emulator: GoogleEmulator | MicrosoftEmulator, provider: int, account: str
) -> None:
    signed_in = emulator.account
    emulator.sign_in(account)
    try:
        await connect(stub, metadata, provider, pb.CAPABILITY_CALENDAR)
    finally:
        emulator.sign_in(signed_in)


TOMORROW = datetime(2026, 12, 3, tzinfo=UTC)


async def test_free_busy_is_the_union_of_every_connected_calendar(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    tag = uuid.uuid4().hex[:8]
    at_google, at_microsoft = f"g-{tag}@example.com", f"m-{tag}@contoso.com"
    google.add_calendar(at_google, at_google, "Me", "Europe/Berlin", primary=True)
    google.add_calendar(at_google, f"family-{tag}@group.calendar.google.com", "Family", "Europe/Berlin")
    google.add_event(  # 09:00-10:00 in Berlin: 08:00-09:00 UTC
        at_google,
        at_google,
        {
            "summary": "standup",
            "start": {"dateTime": "2026-12-03T09:00:00+01:00"},
            "end": {"dateTime": "2026-12-03T10:00:00+01:00"},
        },
    )
    google.add_event(
        at_google,
        f"family-{tag}@group.calendar.google.com",
        {
            "summary": "school run",
            "start": {"dateTime": "2026-12-03T15:00:00Z"},
            "end": {"dateTime": "2026-12-03T15:30:00Z"},
        },
    )
    google.add_event(  # free time: not busy
        at_google,
        at_google,
        {
            "summary": "maybe",
            "transparency": "transparent",
            "start": {"dateTime": "2026-12-03T18:00:00Z"},
            "end": {"dateTime": "2026-12-03T19:00:00Z"},
        },
    )
    microsoft.add_event(  # overlaps the standup: merged
        at_microsoft,
        {
            "subject": "review",
            "start": {"dateTime": "2026-12-03T08:30:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T09:30:00", "timeZone": "UTC"},
        },
    )
    microsoft.add_event(
        at_microsoft,
        {
            "subject": "lunch, shown free",
            "showAs": "free",
            "start": {"dateTime": "2026-12-03T12:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T13:00:00", "timeZone": "UTC"},
        },
    )
    await connect_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    await connect_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)

    answer = await internal.FreeBusy(
        free_busy_request(TOMORROW, TOMORROW + timedelta(days=1)), metadata=metadata
    )
    assert blocks(answer) == [
        ("2026-12-03T08:00:00Z", "2026-12-03T09:30:00Z"),
        ("2026-12-03T15:00:00Z", "2026-12-03T15:30:00Z"),
    ]
    assert sorted(answer.sources) == ["google", "microsoft"]
    assert not answer.problems
    (google_connection,) = [
        c
        for c in (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)).connections
        if c.provider == pb.PROVIDER_GOOGLE
    ]
    assert google_connection.HasField("last_used_at")


async def test_a_calendar_that_cannot_answer_is_a_problem_and_the_others_still_answer(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    tag = uuid.uuid4().hex[:8]
    at_google, at_microsoft = f"g-{tag}@example.com", f"m-{tag}@contoso.com"
    microsoft.add_event(
        at_microsoft,
        {
            "subject": "1:1",
            "start": {"dateTime": "2026-12-03T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T11:00:00", "timeZone": "UTC"},
        },
    )
    await connect_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    await connect_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)
    request = free_busy_request(TOMORROW, TOMORROW + timedelta(days=1))

    google.rate_limit_next(1, retry_after_seconds=7)
    limited = await internal.FreeBusy(request, metadata=metadata)
    assert blocks(limited) == [("2026-12-03T10:00:00Z", "2026-12-03T11:00:00Z")]
    assert [(p.provider, p.needs_reconnect, p.message) for p in limited.problems] == [
        ("google", False, "Google is limiting requests; try again in 7 s")
    ]

    google.rate_limit_next(1, retry_after_seconds=1)  # a moment: waited out, the answer is whole
    asked = len(google.requests)
    waited = await internal.FreeBusy(request, metadata=metadata)
    assert (sorted(waited.sources), list(waited.problems)) == (["google", "microsoft"], [])
    assert len(google.requests) == asked + 3  # the throttled call, again, then freeBusy

    google.revoke_grant(at_google)
    revoked = await internal.FreeBusy(request, metadata=metadata)
    assert list(revoked.sources) == ["microsoft"]
    assert [(p.provider, p.needs_reconnect) for p in revoked.problems] == [("google", True)]
    assert "connect it again" in revoked.problems[0].message
    statuses = {
        c.provider: c.status
        for c in (await stub.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)).connections
    }
    assert statuses == {
        pb.PROVIDER_GOOGLE: pb.CONNECTION_STATUS_NEEDS_RECONNECT,
        pb.PROVIDER_MICROSOFT: pb.CONNECTION_STATUS_CONNECTED,
    }


async def test_an_access_token_expired_early_is_refreshed_without_the_person_noticing(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
) -> None:
    _, metadata = user()
    at_google = f"g-{uuid.uuid4().hex[:8]}@example.com"
    google.add_event(
        at_google,
        "primary",
        {
            "summary": "x",
            "start": {"dateTime": "2026-12-03T07:00:00Z"},
            "end": {"dateTime": "2026-12-03T07:45:00Z"},
        },
    )
    await connect_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    google.expire_access_tokens()  # the stored token's expiry is an hour away, but Google refuses it now
    answer = await internal.FreeBusy(
        free_busy_request(TOMORROW, TOMORROW + timedelta(days=1)), metadata=metadata
    )
    assert blocks(answer) == [("2026-12-03T07:00:00Z", "2026-12-03T07:45:00Z")]
    assert not answer.problems


async def test_free_busy_refuses_a_backwards_or_too_long_range(
    internal: integrations_pb2_grpc.IntegrationsServiceStub, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, metadata = user()
    message = await fails(
        internal.FreeBusy, free_busy_request(TOMORROW, TOMORROW), metadata, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert message == "end: must be after start"
    too_long = free_busy_request(TOMORROW, TOMORROW + timedelta(days=94))
    message = await fails(internal.FreeBusy, too_long, metadata, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "end: the range may span at most 93 days"
    empty = await internal.FreeBusy(
        free_busy_request(TOMORROW, TOMORROW + timedelta(days=1)), metadata=metadata
    )
    assert (list(empty.busy), list(empty.sources), list(empty.problems)) == ([], [], [])


def events_request(start: datetime, end: datetime, limit: int = 0) -> integrations_pb2.ListEventsRequest:
    request = integrations_pb2.ListEventsRequest(limit=limit)
    request.start.FromDatetime(start)
    request.end.FromDatetime(end)
    return request


def when(event: integrations_pb2.CalendarEvent) -> tuple[str, str]:
    """An event's days (all-day) or instants, as a person would read them."""
    if event.all_day:
        assert not event.HasField("start")
        assert not event.HasField("end")
        return event.start_date, event.end_date
    return event.start.ToJsonString(), event.end.ToJsonString()


def utc(moment: datetime) -> str:
    """A Graph dateTime (no offset) of a UTC moment."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_events_of_every_calendar_merged_by_start_with_all_day_dates_and_zones(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    tag = uuid.uuid4().hex[:8]
    at_google, at_microsoft = f"g-{tag}@example.com", f"m-{tag}@contoso.com"
    family = f"family-{tag}@group.calendar.google.com"
    google.add_calendar(at_google, at_google, "Me", "Europe/Berlin", primary=True)
    google.add_calendar(at_google, family, "Family", "America/Los_Angeles")
    google.add_event(
        at_google,
        at_google,
        {
            "summary": "standup",
            "location": "Room 4",
            "start": {"dateTime": "2026-12-03T09:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-12-03T09:15:00+01:00", "timeZone": "Europe/Berlin"},
        },
    )
    google.add_event(  # the 3rd in Berlin: from 23:00 UTC on the 2nd
        at_google,
        at_google,
        {"summary": "Berlin holiday", "start": {"date": "2026-12-03"}, "end": {"date": "2026-12-04"}},
    )
    google.add_event(  # the 3rd in Los Angeles: from 08:00 UTC on the 3rd
        at_google,
        family,
        {"summary": "LA offsite", "start": {"date": "2026-12-03"}, "end": {"date": "2026-12-04"}},
    )
    google.add_event(
        at_google,
        family,
        {
            "summary": "maybe dinner",
            "transparency": "transparent",
            "start": {"dateTime": "2026-12-03T14:00:00-08:00"},
            "end": {"dateTime": "2026-12-03T15:00:00-08:00"},
        },
    )
    google.add_event(
        at_google,
        at_google,
        {
            "summary": "called off",
            "status": "cancelled",
            "start": {"dateTime": "2026-12-03T12:00:00Z"},
            "end": {"dateTime": "2026-12-03T13:00:00Z"},
        },
    )
    microsoft.add_event(  # 09:00 in Los Angeles: 17:00 UTC
        at_microsoft,
        {
            "subject": "design review",
            "location": {"displayName": "Teams"},
            "start": {"dateTime": "2026-12-03T09:00:00", "timeZone": "Pacific Standard Time"},
            "end": {"dateTime": "2026-12-03T10:00:00", "timeZone": "Pacific Standard Time"},
        },
    )
    for subject, zone in (
        ("Munich fair", "W. Europe Standard Time"),
        ("Seattle trip", "Pacific Standard Time"),
    ):
        microsoft.add_event(
            at_microsoft,
            {
                "subject": subject,
                "isAllDay": True,
                "showAs": "oof",
                "start": {"dateTime": "2026-12-03T00:00:00", "timeZone": zone},
                "end": {"dateTime": "2026-12-05T00:00:00", "timeZone": zone},
            },
        )
    microsoft.add_event(
        at_microsoft,
        {
            "subject": "lunch, shown free",
            "showAs": "free",
            "start": {"dateTime": "2026-12-03T12:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T13:00:00", "timeZone": "UTC"},
        },
    )
    microsoft.add_event(
        at_microsoft,
        {
            "subject": "cancelled sync",
            "isCancelled": True,
            "start": {"dateTime": "2026-12-03T14:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T15:00:00", "timeZone": "UTC"},
        },
    )
    await connect_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    await connect_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)

    answer = await internal.ListEvents(
        events_request(TOMORROW, TOMORROW + timedelta(days=1)), metadata=metadata
    )
    assert [(e.provider, e.title, *when(e), e.time_zone, e.busy) for e in answer.events] == [
        ("google", "Berlin holiday", "2026-12-03", "2026-12-04", "Europe/Berlin", True),
        ("google", "LA offsite", "2026-12-03", "2026-12-04", "America/Los_Angeles", True),
        ("microsoft", "Munich fair", "2026-12-03", "2026-12-05", "Europe/Berlin", True),
        ("microsoft", "Seattle trip", "2026-12-03", "2026-12-05", "America/Los_Angeles", True),
        ("google", "standup", "2026-12-03T08:00:00Z", "2026-12-03T08:15:00Z", "Europe/Berlin", True),
        ("microsoft", "lunch, shown free", "2026-12-03T12:00:00Z", "2026-12-03T13:00:00Z", "UTC", False),
        (
            "microsoft",
            "design review",
            "2026-12-03T17:00:00Z",
            "2026-12-03T18:00:00Z",
            "America/Los_Angeles",
            True,
        ),
        (
            "google",
            "maybe dinner",
            "2026-12-03T22:00:00Z",
            "2026-12-03T23:00:00Z",
            "America/Los_Angeles",
            False,
        ),
    ]
    by_title = {e.title: e for e in answer.events}
    assert (by_title["standup"].location, by_title["design review"].location) == ("Room 4", "Teams")
    assert by_title["standup"].link.startswith("https://www.google.com/calendar/event?eid=")
    assert by_title["design review"].link.startswith("https://outlook.office365.com/owa/?itemid=")
    assert by_title["design review"].id
    assert by_title["standup"].id
    assert (sorted(answer.sources), list(answer.problems), answer.truncated) == (
        ["google", "microsoft"],
        [],
        False,
    )
    (view,) = [r for r in microsoft.requests if r.path.endswith("/calendarView")][-1:]
    assert view.headers["Prefer"] == 'outlook.timezone="UTC"'


async def test_an_all_day_graph_event_blocks_its_days_where_it_was_scheduled(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    at_microsoft = f"m-{uuid.uuid4().hex[:8]}@contoso.com"
    for day, zone in (("2026-12-03", "W. Europe Standard Time"), ("2026-12-05", "Pacific Standard Time")):
        following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
        microsoft.add_event(
            at_microsoft,
            {
                "subject": f"away {day}",
                "isAllDay": True,
                "start": {"dateTime": f"{day}T00:00:00", "timeZone": zone},
                "end": {"dateTime": f"{following}T00:00:00", "timeZone": zone},
            },
        )
    await connect_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)
    answer = await internal.FreeBusy(
        free_busy_request(TOMORROW - timedelta(days=1), TOMORROW + timedelta(days=4)), metadata=metadata
    )
    assert blocks(answer) == [
        ("2026-12-02T23:00:00Z", "2026-12-03T23:00:00Z"),  # the 3rd in Berlin
        ("2026-12-05T08:00:00Z", "2026-12-06T08:00:00Z"),  # the 5th in Los Angeles
    ]


async def test_every_page_of_both_calendars_is_read_and_a_limit_keeps_the_earliest(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    tag = uuid.uuid4().hex[:8]
    at_google, at_microsoft = f"g-{tag}@example.com", f"m-{tag}@contoso.com"
    for n in range(260):  # Google pages hold 250, Graph's 100: both answer in pages
        at = TOMORROW + timedelta(minutes=4 * n)
        google.add_event(
            at_google,
            "primary",
            {
                "summary": f"g{n:03d}",
                "start": {"dateTime": z(at)},
                "end": {"dateTime": z(at + timedelta(minutes=1))},
            },
        )
        if n < 110:
            later = at + timedelta(minutes=2)
            microsoft.add_event(
                at_microsoft,
                {
                    "subject": f"m{n:03d}",
                    "start": {"dateTime": utc(later), "timeZone": "UTC"},
                    "end": {"dateTime": utc(later + timedelta(minutes=1)), "timeZone": "UTC"},
                },
            )
    await connect_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    await connect_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)
    window = (TOMORROW, TOMORROW + timedelta(days=1))

    asked_google, asked_microsoft = len(google.requests), len(microsoft.requests)
    everything = await internal.ListEvents(events_request(*window, limit=500), metadata=metadata)
    titles = [e.title for e in everything.events]
    assert len(titles) == 370
    assert titles[:4] == ["g000", "m000", "g001", "m001"]
    assert titles[-3:] == ["g257", "g258", "g259"]
    assert not everything.truncated
    google_pages = [r for r in google.requests[asked_google:] if r.path.endswith("/events")]
    graph_pages = [r for r in microsoft.requests[asked_microsoft:] if r.path.endswith("/calendarView")]
    assert (len(google_pages), len(graph_pages)) == (2, 2)
    assert "pageToken" in google_pages[1].query
    assert "$skiptoken" in graph_pages[1].query

    asked_google, asked_microsoft = len(google.requests), len(microsoft.requests)
    first = await internal.ListEvents(events_request(*window, limit=5), metadata=metadata)
    assert [e.title for e in first.events] == ["g000", "m000", "g001", "m001", "g002"]
    assert first.truncated
    # Bounded: one small page of each calendar is enough for the five earliest.
    assert [
        r.query.get("maxResults") for r in google.requests[asked_google:] if r.path.endswith("/events")
    ] == ["6"]
    assert [
        r.query.get("$top") for r in microsoft.requests[asked_microsoft:] if r.path.endswith("/calendarView")
    ] == ["6"]


async def test_events_of_a_revoked_grant_are_a_problem_and_the_others_still_answer(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    tag = uuid.uuid4().hex[:8]
    at_google, at_microsoft = f"g-{tag}@example.com", f"m-{tag}@contoso.com"
    google.add_event(
        at_google,
        "primary",
        {
            "summary": "gym",
            "start": {"dateTime": "2026-12-03T07:00:00Z"},
            "end": {"dateTime": "2026-12-03T08:00:00Z"},
        },
    )
    microsoft.add_event(
        at_microsoft,
        {
            "subject": "1:1",
            "start": {"dateTime": "2026-12-03T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T11:00:00", "timeZone": "UTC"},
        },
    )
    await connect_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    await connect_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)
    google.revoke_grant(at_google)
    answer = await internal.ListEvents(
        events_request(TOMORROW, TOMORROW + timedelta(days=1)), metadata=metadata
    )
    assert [e.title for e in answer.events] == ["1:1"]
    assert list(answer.sources) == ["microsoft"]
    assert [(p.provider, p.needs_reconnect) for p in answer.problems] == [("google", True)]
    assert "connect it again" in answer.problems[0].message


async def test_list_events_refuses_a_backwards_or_too_long_range_and_too_many_events(
    internal: integrations_pb2_grpc.IntegrationsServiceStub, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, metadata = user()
    message = await fails(
        internal.ListEvents, events_request(TOMORROW, TOMORROW), metadata, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert message == "end: must be after start"
    too_long = events_request(TOMORROW, TOMORROW + timedelta(days=94))
    message = await fails(internal.ListEvents, too_long, metadata, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "end: the range may span at most 93 days"
    too_many = events_request(TOMORROW, TOMORROW + timedelta(days=1), limit=501)
    message = await fails(internal.ListEvents, too_many, metadata, grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith("limit")
    nothing = await internal.ListEvents(
        events_request(TOMORROW, TOMORROW + timedelta(days=1)), metadata=metadata
    )
    assert (list(nothing.events), list(nothing.sources), nothing.truncated) == ([], [], False)


async def test_expired_pending_connections_are_purged_and_no_longer_complete(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    postgres: EmbeddedPostgres,
    kms_keys_dir: Path,
    tmp_path: Path,
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    begun = await stub.BeginConnection(
        pb.BeginConnectionRequest(
            provider=pb.PROVIDER_GOOGLE, capabilities=[pb.CAPABILITY_CALENDAR], redirect_uri=REDIRECT
        ),
        metadata=metadata,
    )
    back = await consent(begun.authorization_url)
    settings = settings_for(tmp_path, postgres, kms_keys_dir, google, microsoft)
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = PostgresConnectionStore(
            pool, DataKeys(PostgresDataKeys(pool, DATA_KEYS_TABLE), from_settings(settings), SERVICE)
        )
        ours = hash_state(begun.state)

        async def pending() -> bool:
            found = await pool.fetchval(
                "SELECT true FROM integrations.pending_connections WHERE state_hash = $1", ours
            )
            return bool(found)

        await store.purge_pending(begun.expires_at.ToDatetime(UTC) - timedelta(seconds=1))
        assert await pending()  # not expired yet: kept
        assert await store.purge_pending(begun.expires_at.ToDatetime(UTC)) >= 1
        assert not await pending()
    finally:
        await pool.close()
    request = pb.CompleteConnectionRequest(state=back["state"], code=back["code"], redirect_uri=REDIRECT)
    await fails(stub.CompleteConnection, request, metadata, grpc.StatusCode.INVALID_ARGUMENT)


async def connect_files_as(
    stub: Stub, metadata: Metadata, emulator: GoogleEmulator | MicrosoftEmulator, provider: int, account: str
) -> None:
    signed_in = emulator.account
    emulator.sign_in(account)
    try:
        await connect(stub, metadata, provider, pb.CAPABILITY_FILES)
    finally:
        emulator.sign_in(signed_in)


async def test_files_are_found_in_both_drives_and_read_as_text(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    microsoft: MicrosoftEmulator,
) -> None:
    _, metadata = user()
    tag = uuid.uuid4().hex[:8]
    at_google, at_microsoft = f"g-{tag}@example.com", f"m-{tag}@contoso.com"
    older, newer = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    google.add_file(
        at_google,
        "Q3 plan",
        "application/vnd.google-apps.document",
        b"The budget forecast for Q3 grows by ten percent.",
        older,
    )
    microsoft.add_file(at_microsoft, "budget.csv", "text/csv", b"line,budget\nrent,1200\n", newer)
    microsoft.add_file(
        at_microsoft,
        "budget memo.pdf",
        "application/pdf",
        text_pdf("Budget memo", "Travel: 1,200 EUR"),
        older,
    )
    microsoft.add_file(at_microsoft, "budget broken.pdf", "application/pdf", b"%PDF-1.7 budget", older)
    microsoft.add_file(at_microsoft, "budget chart.png", "image/png", b"\x89PNG budget", older)
    google.add_file(at_google, "budget report.pdf", "application/pdf", text_pdf("Budget report 2026"), older)
    google.add_file(at_google, "holiday.txt", "text/plain", b"nothing to see", newer)
    await connect_files_as(stub, metadata, google, pb.PROVIDER_GOOGLE, at_google)
    await connect_files_as(stub, metadata, microsoft, pb.PROVIDER_MICROSOFT, at_microsoft)

    found = await internal.SearchFiles(integrations_pb2.SearchFilesRequest(query="budget"), metadata=metadata)
    assert sorted(found.sources) == ["google", "microsoft"]
    assert not found.problems
    names = [(f.provider, f.name) for f in found.files]
    assert ("microsoft", "budget.csv") in names
    assert ("google", "Q3 plan") in names
    assert ("google", "holiday.txt") not in names
    assert names.index(("microsoft", "budget.csv")) < names.index(("google", "Q3 plan"))  # newest first
    by_name = {f.name: f for f in found.files}

    doc = await internal.ReadFile(
        integrations_pb2.ReadFileRequest(provider="google", file_id=by_name["Q3 plan"].id), metadata=metadata
    )
    assert doc.text.strip() == "The budget forecast for Q3 grows by ten percent."
    assert not doc.truncated
    csv = await internal.ReadFile(
        integrations_pb2.ReadFileRequest(
            provider="microsoft", file_id=by_name["budget.csv"].id, max_chars=11
        ),
        metadata=metadata,
    )
    assert (csv.text, csv.truncated, csv.file.name) == ("line,budget", True, "budget.csv")
    # PDFs read by their text layer, page by page
    memo = await internal.ReadFile(
        integrations_pb2.ReadFileRequest(provider="microsoft", file_id=by_name["budget memo.pdf"].id),
        metadata=metadata,
    )
    assert (memo.text, memo.truncated) == ("Budget memo\n\nTravel: 1,200 EUR", False)
    report = await internal.ReadFile(
        integrations_pb2.ReadFileRequest(
            provider="google", file_id=by_name["budget report.pdf"].id, max_chars=6
        ),
        metadata=metadata,
    )
    assert (report.text, report.truncated, report.file.mime_type) == ("Budget", True, "application/pdf")
    for name, problem in (
        ("budget broken.pdf", "budget broken.pdf is a PDF that cannot be read (it may be damaged)"),
        ("budget chart.png", "budget chart.png is of type image/png, which cannot be read as text yet"),
    ):
        message = await fails(
            internal.ReadFile,
            integrations_pb2.ReadFileRequest(provider="microsoft", file_id=by_name[name].id),
            metadata,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert message == problem


async def test_reading_files_of_a_drive_nobody_connected_is_not_found(
    internal: integrations_pb2_grpc.IntegrationsServiceStub, user: Callable[[], tuple[str, Metadata]]
) -> None:
    _, metadata = user()
    message = await fails(
        internal.ReadFile,
        integrations_pb2.ReadFileRequest(provider="google", file_id="abc"),
        metadata,
        grpc.StatusCode.NOT_FOUND,
    )
    assert message == "no Google drive is connected"
    found = await internal.SearchFiles(integrations_pb2.SearchFilesRequest(query="x"), metadata=metadata)
    assert (list(found.files), list(found.sources), list(found.problems)) == ([], [], [])
    bad = integrations_pb2.ReadFileRequest(provider="dropbox", file_id="abc")
    await fails(internal.ReadFile, bad, metadata, grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_document_read_for_a_conversation_is_remembered_sealed_and_erased(
    stub: Stub,
    internal: integrations_pb2_grpc.IntegrationsServiceStub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    postgres: EmbeddedPostgres,
) -> None:
    user_id, metadata = user()
    account = f"g-{uuid.uuid4().hex[:8]}@example.com"
    name = f"Board memo {uuid.uuid4().hex[:8]}"
    file_id = google.add_file(account, name, "text/plain", b"the board meets in May")
    await connect_files_as(stub, metadata, google, pb.PROVIDER_GOOGLE, account)
    conversation = str(uuid.uuid4())
    await internal.ReadFile(
        integrations_pb2.ReadFileRequest(provider="google", file_id=file_id, conversation_id=conversation),
        metadata=metadata,
    )
    await internal.ReadFile(
        integrations_pb2.ReadFileRequest(provider="google", file_id=file_id), metadata=metadata
    )

    async def remembered() -> list[str]:
        connection = await asyncpg.connect(postgres.url)
        try:
            rows = await connection.fetch(
                "SELECT conversation_id FROM integrations.file_references WHERE user_id = $1",
                uuid.UUID(user_id),
            )
        finally:
            await connection.close()
        return [row["conversation_id"] for row in rows]

    assert await remembered() == [conversation]  # a read outside a conversation refers to nothing
    dump = await dump_database(postgres.superuser_url)
    assert conversation in dump
    assert name not in dump
    assert file_id not in dump.split("COPY integrations.file_references", 1)[1].split("\\.", 1)[0]
    await internal.PurgeUser(integrations_pb2.PurgeUserRequest(), metadata=metadata)
    assert await remembered() == []
