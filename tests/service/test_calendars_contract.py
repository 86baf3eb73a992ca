"""The calendar tools' provider contract (`CalendarProvider`, `EventsProvider`), held by the in-memory double
(tests/doubles/calendars.py) and by `ConnectedCalendars` asking the real integrations service (PostgreSQL)
about a Google calendar connected at the emulator (tests/emulators) through the real consent.

Each test gives one person the same events in both and asserts what `calendar_freebusy` and
`calendar_events` rely on: busy time clipped to the range and merged, free events left out, an all-day
event blocking its days in its calendar's zone; events by start, all-day ones at the start of their first
UTC day, at most the limit and saying when there were more; nothing connected, nothing answered.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import grpc
import pytest
import pytest_asyncio
from athena.connections.v1 import connections_pb2 as pb
from doubles.calendars import InMemoryCalendars
from emulators import GoogleEmulator
from integrations_fixtures import (  # type: ignore[import-not-found]
    Metadata,
    Stub,
    connect,
    google,
    microsoft,
    service,
    stub,
    user,
)

from mesh.app import RunningService
from mesh.context import CallInfo, Principal, current_call
from orchestrator.integrations_client import ConnectedCalendars
from orchestrator.tools.calendar import CalendarAnswer, CalendarEvent, EventsAnswer

__all__ = ["google", "microsoft", "service", "stub", "user"]

ZONE = "Europe/Berlin"
"""The zone of the person's calendar (and so of each of its events)."""
DAY = datetime(2026, 12, 3, tzinfo=UTC)


class Calendars(Protocol):
    async def free_busy(self, user_id: str, start: datetime, end: datetime) -> CalendarAnswer: ...

    async def events(self, user_id: str, start: datetime, end: datetime, limit: int) -> EventsAnswer: ...


MakeCalendars = Callable[[list[CalendarEvent] | None], Awaitable[tuple[str, Calendars]]]
"""The person's Google calendar holding the events (None: no calendar connected): their id and provider."""


def timed(title: str, start: datetime, minutes: int, *, busy: bool = True) -> CalendarEvent:
    return CalendarEvent(
        "google", title, start, start + timedelta(minutes=minutes), None, None, ZONE, busy, "", ""
    )


def all_day(title: str, first: date, days: int) -> CalendarEvent:
    return CalendarEvent("google", title, None, None, first, first + timedelta(days=days), ZONE, True, "", "")


A_WEEK = [
    timed("standup", DAY.replace(hour=9), 15),
    timed("planning", DAY.replace(hour=10), 60),
    timed("review", DAY.replace(hour=10, minute=30), 60),  # overlaps planning
    timed("lunch", DAY.replace(hour=12), 60, busy=False),
    all_day("offsite", date(2026, 12, 4), 1),  # from 23:00 UTC the day before, in Berlin
    timed("early call", DAY + timedelta(days=1), 30),  # listed after the offsite, which starts its UTC day
    timed("next week", DAY + timedelta(days=7), 30),
]


def as_google(event: CalendarEvent) -> dict[str, Any]:
    """The event in Calendar's JSON form."""
    if event.start_date is not None and event.end_date is not None:
        span = {"start": {"date": event.start_date.isoformat()}, "end": {"date": event.end_date.isoformat()}}
    elif event.start is not None and event.end is not None:
        span = {"start": {"dateTime": event.start.isoformat()}, "end": {"dateTime": event.end.isoformat()}}
    else:
        raise ValueError(f"event {event.title!r} is neither timed nor all day")
    return {"summary": event.title, **span} | ({} if event.busy else {"transparency": "transparent"})


@contextmanager
def calling_as(who: Principal) -> Iterator[None]:
    """The current call is `who`'s, as while the orchestrator serves one of their RPCs (`ConnectedCalendars`
    forwards its token)."""
    token = current_call.set(
        CallInfo(method="/athena.orchestrator.v1.OrchestratorService/Run", request_id="t", principal=who)
    )
    try:
        yield
    finally:
        current_call.reset(token)


Backend = tuple[RunningService, Stub, GoogleEmulator]


@pytest.fixture(params=["in-memory", "connected"])
def backend(request: pytest.FixtureRequest) -> Backend | None:
    """None for the double; the integrations service, its ConnectionsService and the Google emulator."""
    if request.param == "in-memory":
        return None
    running, stub = request.getfixturevalue("service")
    return running, stub, request.getfixturevalue("google")


@pytest_asyncio.fixture
async def make(
    backend: Backend | None, user: Callable[[], tuple[str, Metadata]]
) -> AsyncIterator[MakeCalendars]:
    if backend is None:

        async def held(events: list[CalendarEvent] | None) -> tuple[str, Calendars]:
            sources = [] if events is None else ["google"]
            return str(uuid.uuid4()), InMemoryCalendars(events or [], sources=sources)

        yield held
        return

    running, stub, emulator = backend
    user_id, metadata = user()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")

    async def connected(events: list[CalendarEvent] | None) -> tuple[str, Calendars]:
        if events is not None:
            await connect_google(stub, metadata, emulator, events)
        return user_id, ConnectedCalendars(channel)

    token = dict(metadata)["authorization"].removeprefix("Bearer ")
    try:
        with calling_as(Principal(user_id=user_id, token=token)):
            yield connected
    finally:
        await channel.close(grace=None)


async def connect_google(
    stub: Stub, metadata: Metadata, emulator: GoogleEmulator, events: list[CalendarEvent]
) -> None:
    """A fresh Google account whose primary calendar holds `events`, connected for the person."""
    account = f"c-{uuid.uuid4().hex[:8]}@example.com"
    emulator.add_calendar(account, account, "Me", ZONE, primary=True)
    for event in events:
        emulator.add_event(account, account, as_google(event))
    signed_in = emulator.account
    emulator.sign_in(account)
    try:
        await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    finally:
        emulator.sign_in(signed_in)


def at(hour: int, minute: int = 0, *, day: datetime = DAY) -> datetime:
    return day.replace(hour=hour, minute=minute)


async def test_free_busy_is_the_busy_time_in_the_range_clipped_and_merged(make: MakeCalendars) -> None:
    user_id, calendars = await make(A_WEEK)
    answer = await calendars.free_busy(user_id, at(9, 5), DAY + timedelta(days=1))
    assert [(block.start, block.end) for block in answer.busy] == [
        (at(9, 5), at(9, 15)),  # the standup, from where the range starts
        (at(10), at(11, 30)),  # planning and the review overlapping it; lunch is free time
        (at(23), DAY + timedelta(days=1)),  # the offsite's Berlin day, until the range ends
    ]
    assert (answer.sources, answer.problems) == (["google"], [])


def described(event: CalendarEvent) -> tuple[Any, ...]:
    return (event.source, event.title, event.start, event.end, event.start_date, event.end_date, event.busy)


async def test_events_are_listed_by_start_and_at_most_the_limit(make: MakeCalendars) -> None:
    user_id, calendars = await make(A_WEEK)
    answer = await calendars.events(user_id, DAY, DAY + timedelta(days=2), 10)
    assert [described(event) for event in answer.events] == [described(event) for event in A_WEEK[:6]]
    assert {event.time_zone for event in answer.events} == {ZONE}
    assert (answer.sources, answer.problems, answer.truncated) == (["google"], [], False)

    earliest = await calendars.events(user_id, DAY, DAY + timedelta(days=2), 2)
    assert [event.title for event in earliest.events] == ["standup", "planning"]
    assert earliest.truncated


async def test_without_a_connected_calendar_nothing_answers(make: MakeCalendars) -> None:
    user_id, calendars = await make(None)
    busy = await calendars.free_busy(user_id, DAY, DAY + timedelta(days=1))
    assert (busy.busy, busy.sources, busy.problems) == ([], [], [])
    events = await calendars.events(user_id, DAY, DAY + timedelta(days=1), 10)
    assert (events.events, events.sources, events.problems, events.truncated) == ([], [], [], False)
