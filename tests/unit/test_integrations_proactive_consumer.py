"""What the integrations service does with each event of the bus (integrations.proactive_consumer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from athena.events.v1 import events_pb2

from integrations.calendars import Event as CalendarEvent
from integrations.calendars import Events
from integrations.file_references import Reference
from integrations.health import APPLE_HEALTH, Day, HealthAnswer, Metric
from integrations.proactive import Notice
from integrations.proactive_consumer import CACHED, ProactiveAgents
from integrations.providers import Capability, Provider
from integrations.subscriptions import Subscription

NOW = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
Kind = events_pb2.ProviderEvent.Kind


def timed(ident: str, title: str, start: datetime, minutes: int, *, focus: bool = False) -> CalendarEvent:
    return CalendarEvent(
        Provider.GOOGLE,
        ident,
        title,
        start,
        start + timedelta(minutes=minutes),
        None,
        None,
        "Europe/Berlin",
        True,
        "",
        "",
        focus_time=focus,
    )


class Calendars:
    def __init__(self, events: list[CalendarEvent]) -> None:
        self.events_ = events
        self.asked: list[tuple[str, datetime, datetime]] = []

    async def events(self, user_id: str, start: datetime, end: datetime, limit: int) -> Events:
        self.asked.append((user_id, start, end))
        return Events(self.events_, [Provider.GOOGLE], [], False)


class Sleep:
    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes

    async def stats(self, user_id: str, metric: Metric, start: date, end: date) -> HealthAnswer:
        assert metric is Metric.SLEEP_MINUTES
        days = (
            [] if self.minutes is None else [Day(end, self.minutes, self.minutes, self.minutes, APPLE_HEALTH)]
        )
        return HealthAnswer(metric, days, [APPLE_HEALTH], [])


class Notes:
    def __init__(self) -> None:
        self.left: list[tuple[str, Notice]] = []
        self.forgotten: list[tuple[str, list[str]]] = []

    async def forget_cached(self, user_id: str, namespaces: list[str]) -> int:
        self.forgotten.append((user_id, namespaces))
        return 1

    async def notify(self, user_id: str, notice: Notice) -> bool:
        self.left.append((user_id, notice))
        return True


def event(kind: int, user: str = "u1") -> events_pb2.ProviderEvent:
    return events_pb2.ProviderEvent(id="e1", provider="google", kind=kind, user_id=user)  # type: ignore[arg-type]


async def test_a_calendar_change_reads_the_week_and_says_each_conflict_in_the_meetings_zone() -> None:
    calendars = Calendars(
        [
            timed("f", "Focus", datetime(2026, 12, 2, 9, tzinfo=UTC), 120, focus=True),
            timed("m", "1:1", datetime(2026, 12, 2, 10, tzinfo=UTC), 30),
            timed("x", "Lunch", datetime(2026, 12, 2, 12, tzinfo=UTC), 60),
        ]
    )
    notes = Notes()
    agents = ProactiveAgents(calendars, Sleep(None), notes, clock=lambda: NOW)
    await agents.handle(event(Kind.KIND_CALENDAR_CHANGED))
    assert calendars.asked == [("u1", NOW, NOW + timedelta(days=7))]
    assert notes.forgotten == [("u1", ["calendar_freebusy", "calendar_events"])]  # stale for the tools
    assert [(user, n.agent_id, n.kind) for user, n in notes.left] == [
        ("u1", "focus", "meeting_overlaps_focus")
    ]
    assert "(Wed 02 Dec 11:00–11:30)" in notes.left[0][1].body  # Berlin time


async def test_a_short_night_notifies_two_coaches_and_other_events_nothing() -> None:
    notes = Notes()
    agents = ProactiveAgents(Calendars([]), Sleep(290), notes, clock=lambda: NOW)
    await agents.handle(event(Kind.KIND_HEALTH_CHANGED, "u2"))
    assert [(user, n.agent_id) for user, n in notes.left] == [("u2", "focus"), ("u2", "nutrition")]
    assert notes.forgotten == [("u2", ["wearable_stats"])]
    quiet = Notes()
    rested = ProactiveAgents(Calendars([]), Sleep(480), quiet, clock=lambda: NOW)
    for kind in (Kind.KIND_HEALTH_CHANGED, Kind.KIND_FILES_CHANGED, Kind.KIND_UNSPECIFIED):
        await rested.handle(event(kind))
    assert quiet.left == []


async def test_lifecycle_events_go_to_the_subscriptions_owner() -> None:
    seen: list[str] = []

    async def lifecycle(e: events_pb2.ProviderEvent) -> None:
        seen.append(e.id)

    agents = ProactiveAgents(Calendars([]), Sleep(None), Notes(), clock=lambda: NOW, on_lifecycle=lifecycle)
    await agents.handle(event(Kind.KIND_SUBSCRIPTION_LIFECYCLE))
    assert seen == ["e1"]


@dataclass(frozen=True)
class Changed:
    provider: Provider
    file_id: str
    name: str
    changed_at: datetime


class Drive:
    def __init__(self, changed: list[Changed]) -> None:
        self.changed = changed

    async def changed_files(self, user_id: str) -> list[Changed]:
        found, self.changed = self.changed, []
        return found


class Read:
    async def referring(self, user_id: str, provider: Provider, file_id: str) -> Reference | None:
        if file_id != "plan":
            return None
        return Reference(provider, file_id, "Q3 plan", "conversation-7", NOW - timedelta(days=2))


async def test_a_changed_document_a_conversation_read_is_said_in_that_conversation() -> None:
    notes = Notes()
    changes = Drive(
        [
            Changed(Provider.GOOGLE, "plan", "Q3 plan (v2)", NOW),
            Changed(Provider.GOOGLE, "holiday", "Holiday photos", NOW),  # no conversation read it
        ]
    )
    agents = ProactiveAgents(
        Calendars([]), Sleep(None), notes, clock=lambda: NOW, file_changes=changes, references=Read()
    )
    await agents.handle(event(Kind.KIND_FILES_CHANGED))
    assert [(n.agent_id, n.kind, n.conversation_id) for _, n in notes.left] == [
        ("sme", "document_changed", "conversation-7")
    ]
    assert "“Q3 plan (v2)”, which we talked about" in notes.left[0][1].body
    await agents.handle(event(Kind.KIND_FILES_CHANGED))  # nothing changed since
    assert len(notes.left) == 1


class Lapsed:
    def __init__(self, missed: list[Subscription]) -> None:
        self.waiting = missed
        self.resynced_ids: list[str] = []

    async def missed(self, *, limit: int = 100) -> list[Subscription]:
        return list(self.waiting)

    async def resynced(self, subscription: Subscription) -> None:
        self.resynced_ids.append(subscription.id)
        self.waiting = [s for s in self.waiting if s.id != subscription.id]


async def test_catching_up_runs_each_missed_subscriptions_change_once_and_marks_it() -> None:
    calendars = Calendars(
        [
            timed("f", "Focus", datetime(2026, 12, 2, 9, tzinfo=UTC), 120, focus=True),
            timed("m", "1:1", datetime(2026, 12, 2, 10, tzinfo=UTC), 30),
        ]
    )
    notes = Notes()
    agents = ProactiveAgents(calendars, Sleep(300), notes, clock=lambda: NOW)
    lapsed = Lapsed(
        [
            Subscription(
                Provider.MICROSOFT, "s1", "u1", Capability.CALENDAR, "me/events", "x", NOW, missed_at=NOW
            ),
            Subscription(Provider.GOOGLE, "s2", "u2", Capability.HEALTH, "hid", "y", NOW, missed_at=NOW),
        ]
    )
    assert await agents.catch_up(lapsed) == 2
    assert lapsed.resynced_ids == ["s1", "s2"]
    assert [(user, n.kind) for user, n in notes.left] == [
        ("u1", "meeting_overlaps_focus"),
        ("u2", "short_night"),
        ("u2", "short_night"),
    ]
    assert await agents.catch_up(lapsed) == 0  # nothing waits any more


def test_the_namespaces_emptied_are_the_tools_caches() -> None:
    """The consumer names the orchestrator tools' cache namespaces (two services, one contract of names)."""
    from orchestrator.tools import calendar, wearables

    emptied = {namespace for namespaces in CACHED.values() for namespace in namespaces}
    assert emptied == {calendar.CACHE_NAMESPACE, calendar.EVENTS_CACHE_NAMESPACE, wearables.CACHE_NAMESPACE}
