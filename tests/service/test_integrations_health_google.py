"""Google Health's side of `wearable_stats` (integrations.health_google) against the Google emulator: a person
connects Google with the HEALTH capability through the real consent, and `GoogleHealth` reads their days
over loopback HTTP with the `Connections` domain object on the service's own database. Every metric's days,
a range longer than a roll-up may span, pages of sessions, a token refreshed unnoticed, a revoked grant, a
throttled or unreachable Google, no health connection, and other people's data kept apart."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest
import pytest_asyncio
from athena.connections.v1 import connections_pb2 as pb
from emulators import GoogleEmulator
from integrations_fixtures import (  # type: ignore[import-not-found]
    Metadata,
    Stub,
    connect,
    domain,
    google,
    microsoft,
    service,
    stub,
    user,
)

from integrations.connections import Connections, Status
from integrations.health import GOOGLE, HealthAnswer, Metric
from integrations.health_google import GoogleHealth
from integrations.providers import Provider
from mesh.errors import InvalidArgument

__all__ = ["domain", "google", "microsoft", "service", "stub", "user"]

BERLIN = timezone(timedelta(hours=1))  # Europe/Berlin in November
NOV = date(2026, 11, 1)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment of November 2026 in Berlin."""
    return datetime(2026, 11, 1, hour, minute, tzinfo=BERLIN) + timedelta(days=day - 1)


def rows(answer: HealthAnswer) -> list[tuple[int, float, float, float]]:
    """The answer's days as (day of November, value, min, max), values rounded to 3 places."""
    return [(d.day.day, round(d.value, 3), round(d.min, 3), round(d.max, 3)) for d in answer.days]


@pytest_asyncio.fixture
async def health(domain: Connections, google: GoogleEmulator) -> AsyncIterator[GoogleHealth]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield GoogleHealth(domain, http, health_url=google.health_base_url)


async def connect_health(stub: Stub, metadata: Metadata, google: GoogleEmulator) -> str:
    """Connects a fresh Google account's health data for the person; answers the account."""
    account = f"h-{uuid.uuid4().hex[:8]}@example.com"
    signed_in = google.account
    google.sign_in(account)
    try:
        await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_HEALTH)
    finally:
        google.sign_in(signed_in)
    return account


def health_calls(google: GoogleEmulator, data_type: str) -> list[str]:
    """The paths of the Health API calls made so far for `data_type`."""
    return [r.path for r in google.requests if f"/dataTypes/{data_type}/" in r.path]


async def test_every_metric_answers_the_days_that_were_recorded(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, health: GoogleHealth
) -> None:
    user_id, metadata = user()
    who = await connect_health(stub, metadata, google)
    google.add_steps(who, at(1, 9), at(1, 10), 1000)
    google.add_steps(who, at(1, 23, 30), at(1, 23, 50), 500)  # 22:30 UTC: still the 1st in Berlin
    google.add_steps(who, at(2, 0, 30), at(2, 0, 50), 2000)  # 23:30 UTC on the 1st: the 2nd in Berlin
    google.add_steps(who, at(4, 9), at(4, 10), 777)  # after the range
    google.add_active_energy(who, at(1, 7), at(1, 8), 120.5)
    google.add_active_energy(who, at(1, 18), at(1, 19), 30)
    google.add_active_energy(who, at(3, 7), at(3, 8), 200)
    for minute, bpm in [(0, 60), (10, 70), (20, 80)]:
        google.add_heart_rate(who, at(1, 6, minute), bpm)
    google.add_heart_rate(who, at(3, 6), 90)
    google.add_weight(who, at(2, 7), 71500)
    google.add_weight(who, at(2, 20), 72500)
    google.add_resting_heart_rate(who, date(2026, 11, 1), 58)
    google.add_resting_heart_rate(who, date(2026, 11, 2), 61)
    google.add_resting_heart_rate(who, date(2026, 10, 31), 70)  # before the range
    google.add_sleep(  # the night ending on the 2nd: 6 h light, 30 min awake, 1 h deep
        who,
        at(1, 23),
        at(2, 6, 30),
        [
            ("LIGHT", at(1, 23), at(2, 5)),
            ("AWAKE", at(2, 5), at(2, 5, 30)),
            ("DEEP", at(2, 5, 30), at(2, 6, 30)),
        ],
    )
    google.add_sleep(who, at(2, 14), at(2, 14, 45))  # a nap the same day
    google.add_sleep(who, at(2, 23), at(3, 7))  # ends on the 3rd
    google.add_exercise(who, at(1, 7), at(1, 8), "RUNNING", calories_kcal=540)
    google.add_exercise(who, at(1, 18), at(1, 18, 30), "WALKING")
    google.add_exercise(who, at(3, 23, 30), at(4, 0, 15), "SWIMMING")  # starts on the 3rd

    async def read(metric: Metric) -> list[tuple[int, float, float, float]]:
        answer = await health.days(user_id, metric, NOV, date(2026, 11, 3))
        assert (answer.metric, answer.sources, answer.problems) == (metric, [GOOGLE], [])
        assert all(d.source == GOOGLE for d in answer.days)
        return rows(answer)

    assert await read(Metric.STEPS) == [(1, 1500, 1500, 1500), (2, 2000, 2000, 2000)]
    assert await read(Metric.ACTIVE_ENERGY_KCAL) == [(1, 150.5, 150.5, 150.5), (3, 200, 200, 200)]
    assert await read(Metric.HEART_RATE) == [(1, 70, 60, 80), (3, 90, 90, 90)]
    assert await read(Metric.WEIGHT_KG) == [(2, 72, 72, 72)]  # the roll-up has an average only
    assert await read(Metric.RESTING_HEART_RATE) == [(1, 58, 58, 58), (2, 61, 61, 61)]
    assert await read(Metric.SLEEP_MINUTES) == [(2, 420 + 45, 465, 465), (3, 480, 480, 480)]
    assert await read(Metric.WORKOUT_MINUTES) == [(1, 90, 90, 90), (3, 45, 45, 45)]


async def test_a_range_longer_than_a_roll_up_may_span_is_asked_in_windows(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, health: GoogleHealth
) -> None:
    user_id, metadata = user()
    who = await connect_health(stub, metadata, google)
    for day, bpm in [(1, 61), (14, 62), (15, 63), (29, 64), (30, 65)]:
        google.add_heart_rate(who, at(day, 12), bpm)
    for day in (1, 90, 91, 100):
        google.add_steps(who, at(day, 12), at(day, 13), 1000 + day)
    asked = len(google.requests)

    heart = await health.days(user_id, Metric.HEART_RATE, NOV, date(2026, 11, 30))
    assert [(d, v) for d, v, _, _ in rows(heart)] == [(1, 61), (14, 62), (15, 63), (29, 64), (30, 65)]
    assert not heart.problems
    ranges = [
        json.loads(r.body)["range"]
        for r in google.requests[asked:]
        if r.path.endswith("/heart-rate/dataPoints:dailyRollUp")
    ]
    spans = sorted((r["start"]["date"]["month"], r["start"]["date"]["day"], r["end"]["date"]) for r in ranges)
    assert spans == [  # 14 + 14 + 2 days, closed-open
        (11, 1, {"year": 2026, "month": 11, "day": 15}),
        (11, 15, {"year": 2026, "month": 11, "day": 29}),
        (11, 29, {"year": 2026, "month": 12, "day": 1}),
    ]

    asked = len(health_calls(google, "steps"))
    steps = await health.days(user_id, Metric.STEPS, NOV, NOV + timedelta(days=99))
    assert [(d.day, d.value) for d in steps.days] == [
        (NOV + timedelta(days=day - 1), 1000 + day) for day in (1, 90, 91, 100)
    ]
    assert len(health_calls(google, "steps")) - asked == 2  # 90 days, then 10

    with pytest.raises(InvalidArgument, match="end: must not be before start"):
        await health.days(user_id, Metric.STEPS, NOV, NOV - timedelta(days=1))
    with pytest.raises(InvalidArgument, match="at most 366 days"):
        await health.days(user_id, Metric.STEPS, NOV, NOV + timedelta(days=366))


async def test_sessions_are_followed_page_after_page(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, health: GoogleHealth
) -> None:
    user_id, metadata = user()
    who = await connect_health(stub, metadata, google)
    for day in range(1, 31):  # 30 nights: more than a page of 25 sleep sessions
        google.add_sleep(who, at(day, 0), at(day, 7))
    asked = len(health_calls(google, "sleep"))

    answer = await health.days(user_id, Metric.SLEEP_MINUTES, NOV, date(2026, 11, 30))
    assert [(d.day.day, d.value) for d in answer.days] == [(day, 420.0) for day in range(1, 31)]
    assert len(health_calls(google, "sleep")) - asked == 2
    pages = [r for r in google.requests if r.path.endswith("/sleep/dataPoints")][-2:]
    assert "pageToken" not in pages[0].query
    assert pages[1].query["pageToken"]
    assert pages[0].query["filter"] == (
        'sleep.interval.civil_end_time >= "2026-11-01" AND sleep.interval.civil_end_time < "2026-12-01"'
    )


async def test_an_access_token_google_stopped_accepting_is_refreshed_unnoticed(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, health: GoogleHealth
) -> None:
    user_id, metadata = user()
    who = await connect_health(stub, metadata, google)
    google.add_steps(who, at(1, 9), at(1, 10), 4321)
    google.expire_access_tokens()  # the stored expiry is an hour away, but Google refuses the token now
    refreshes = len([r for r in google.requests if r.path == "/token"])

    answer = await health.days(user_id, Metric.STEPS, NOV, NOV)
    assert (rows(answer), answer.sources, answer.problems) == ([(1, 4321, 4321, 4321)], [GOOGLE], [])
    assert len([r for r in google.requests if r.path == "/token"]) == refreshes + 1


async def test_a_revoked_grant_is_a_problem_and_the_connection_needs_reconnecting(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    health: GoogleHealth,
    domain: Connections,
) -> None:
    user_id, metadata = user()
    who = await connect_health(stub, metadata, google)
    google.add_steps(who, at(1, 9), at(1, 10), 100)
    google.revoke_grant(who)

    answer = await health.days(user_id, Metric.STEPS, NOV, NOV)
    assert (answer.days, answer.sources) == ([], [])
    [problem] = answer.problems
    assert (problem.provider, problem.needs_reconnect) == (Provider.GOOGLE, True)
    assert "connect it again" in problem.message
    [connection] = await domain.list(user_id)
    assert connection.status is Status.NEEDS_RECONNECT
    again = await health.days(user_id, Metric.STEPS, NOV, NOV)  # no call to Google: reconnect first
    assert [(p.provider, p.needs_reconnect) for p in again.problems] == [(Provider.GOOGLE, True)]


async def test_a_throttled_or_unreachable_google_is_a_problem_not_an_error(
    stub: Stub,
    user: Callable[[], tuple[str, Metadata]],
    google: GoogleEmulator,
    health: GoogleHealth,
    domain: Connections,
) -> None:
    user_id, metadata = user()
    who = await connect_health(stub, metadata, google)
    google.add_resting_heart_rate(who, NOV, 57)

    google.rate_limit_next(1, retry_after_seconds=7)
    limited = await health.days(user_id, Metric.RESTING_HEART_RATE, NOV, NOV)
    assert (limited.days, limited.sources) == ([], [])
    assert [(p.provider, p.needs_reconnect, p.message) for p in limited.problems] == [
        (Provider.GOOGLE, False, "Google is limiting requests; try again in 7 s")
    ]

    google.rate_limit_next(1, retry_after_seconds=1)  # a moment: waited out, the answer is whole
    waited = await health.days(user_id, Metric.RESTING_HEART_RATE, NOV, NOV)
    assert (rows(waited), waited.problems) == ([(1, 57, 57, 57)], [])

    async with httpx.AsyncClient(timeout=2) as http:
        nowhere = GoogleHealth(domain, http, health_url="http://127.0.0.1:9/v4")
        unreachable = await nowhere.days(user_id, Metric.RESTING_HEART_RATE, NOV, NOV)
    assert [(p.provider, p.needs_reconnect, p.message) for p in unreachable.problems] == [
        (Provider.GOOGLE, False, "Google could not be reached; try again in a moment")
    ]
    [connection] = await domain.list(user_id)
    assert connection.status is Status.CONNECTED


async def test_without_a_health_connection_the_answer_is_empty(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, health: GoogleHealth
) -> None:
    user_id, metadata = user()
    signed_in = google.account
    google.sign_in(f"c-{uuid.uuid4().hex[:8]}@example.com")
    try:
        await connect(stub, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_CALENDAR)
    finally:
        google.sign_in(signed_in)
    asked = len(google.requests)

    answer = await health.days(user_id, Metric.STEPS, NOV, NOV)
    assert (answer.metric, answer.days, answer.sources, answer.problems) == (Metric.STEPS, [], [], [])
    nobody = await health.days(str(uuid.uuid4()), Metric.SLEEP_MINUTES, NOV, NOV)
    assert (nobody.days, nobody.sources, nobody.problems) == ([], [], [])
    assert len(google.requests) == asked  # Google was not asked


async def test_a_second_person_sees_nothing_of_the_first(
    stub: Stub, user: Callable[[], tuple[str, Metadata]], google: GoogleEmulator, health: GoogleHealth
) -> None:
    first_id, first = user()
    second_id, second = user()
    owner = await connect_health(stub, first, google)
    await connect_health(stub, second, google)
    google.add_steps(owner, at(1, 9), at(1, 10), 8000)
    google.add_exercise(owner, at(1, 7), at(1, 8), "RUNNING")

    for metric in (Metric.STEPS, Metric.WORKOUT_MINUTES):
        mine = await health.days(first_id, metric, NOV, NOV)
        theirs = await health.days(second_id, metric, NOV, NOV)
        assert [d.day for d in mine.days] == [NOV]
        assert (theirs.days, theirs.sources, theirs.problems) == ([], [GOOGLE], [])
