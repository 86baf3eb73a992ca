"""`InMemoryCalendars`: one person's connected calendars held in memory, answering the calendar tools as
`orchestrator.integrations_client.ConnectedCalendars` does over the integrations service. It is both a
`CalendarProvider` and an `EventsProvider`; tests/service/test_calendars_contract.py holds it and the real
client to the same answers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from orchestrator.tools.calendar import BusyBlock, CalendarAnswer, CalendarEvent, EventsAnswer
from orchestrator.tools.sources import SourceProblem


class InMemoryCalendars:
    """The calendars `sources` answering with `events` (kept in `held`), and `problems` for those that
    cannot answer.

    As the integrations service answers: free/busy is the busy time of the events overlapping the range,
    clipped to it, overlapping or touching blocks merged, by start (an all-day event blocks its days in the
    zone it was made in, UTC when unknown); events are those overlapping the range, by start (an all-day
    one at the start of its first day in UTC, before the events starting then), at most `limit` of them.
    Records what it was asked in `asked`: (method, user, start, end).
    """

    def __init__(
        self,
        events: Iterable[CalendarEvent] = (),
        *,
        sources: Iterable[str] = (),
        problems: Iterable[SourceProblem] = (),
    ) -> None:
        self.held = list(events)
        self.sources = list(sources)
        self.problems = list(problems)
        self.asked: list[tuple[str, str, datetime, datetime]] = []

    async def free_busy(self, user_id: str, start: datetime, end: datetime) -> CalendarAnswer:
        self.asked.append(("free_busy", user_id, start, end))
        blocks = sorted(
            BusyBlock(max(begins, start), min(ends, end))
            for begins, ends in (_span(event) for event in self._answering() if event.busy)
            if ends > start and begins < end
        )
        merged: list[BusyBlock] = []
        for block in blocks:
            if merged and block.start <= merged[-1].end:
                merged[-1] = BusyBlock(merged[-1].start, max(merged[-1].end, block.end))
            else:
                merged.append(block)
        return CalendarAnswer(merged, list(self.sources), list(self.problems))

    async def events(self, user_id: str, start: datetime, end: datetime, limit: int) -> EventsAnswer:
        self.asked.append(("events", user_id, start, end))
        overlapping = sorted(
            (event for event in self._answering() if _overlaps(event, start, end)), key=_order
        )
        return EventsAnswer(
            overlapping[:limit], list(self.sources), list(self.problems), truncated=len(overlapping) > limit
        )

    def _answering(self) -> list[CalendarEvent]:
        """The events of the calendars that answer."""
        return [event for event in self.held if event.source in self.sources]


def _span(event: CalendarEvent) -> tuple[datetime, datetime]:
    """The instants an event takes: an all-day event's days in its zone, or a timed event's."""
    if event.start_date is not None and event.end_date is not None:
        zone = ZoneInfo(event.time_zone) if event.time_zone else UTC
        return (
            datetime.combine(event.start_date, time(), zone).astimezone(UTC),
            datetime.combine(event.end_date, time(), zone).astimezone(UTC),
        )
    if event.start is None or event.end is None:
        raise ValueError(f"event {event.title!r} is neither timed nor all day")
    return event.start, event.end


def _overlaps(event: CalendarEvent, start: datetime, end: datetime) -> bool:
    begins, ends = _span(event)
    return ends > start and begins < end


def _order(event: CalendarEvent) -> tuple[datetime, bool, str, str]:
    if event.start_date is not None:
        return datetime.combine(event.start_date, time(), UTC), False, event.title, event.source
    return _span(event)[0], True, event.title, event.source
