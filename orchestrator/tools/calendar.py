"""`calendar_freebusy`: busy blocks of the user's calendars in a time range; `calendar_events`: the events
themselves (titles, times, all-day days, places), earliest first.

Both tools read the person's own connected calendars through `CalendarProvider` and `EventsProvider`:
`ConnectedCalendars` (orchestrator/integrations_client.py) asks the integrations service for every calendar
the person connected (Google, Microsoft) and serves both. Both tools take the same range (`start`, `end`). A
calendar that cannot answer is reported to the model as `orchestrator.tools.sources` says. Complete answers
are cached in memory's ephemeral store for five minutes, per person and range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from mesh.errors import InvalidArgument
from orchestrator.tools.ephemeral import cached
from orchestrator.tools.registry import Tool, ToolContext
from orchestrator.tools.sources import SourceProblem, complete, with_sources

NAME = "calendar_freebusy"
CACHE_NAMESPACE = "calendar_freebusy"
EVENTS = "calendar_events"
EVENTS_CACHE_NAMESPACE = "calendar_events"
EVENTS_LIMIT = 50
"""Events a `calendar_events` answer lists at most (the earliest); it says when there were more."""
MAX_RANGE = timedelta(days=93)
NO_CALENDAR = "No calendar is connected: the person can connect Google or Microsoft under Connections."


@dataclass(frozen=True, slots=True, order=True)
class BusyBlock:
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class CalendarAnswer:
    busy: list[BusyBlock]
    """Busy blocks of the calendars that answered, merged and sorted; times are timezone-aware."""
    sources: list[str]
    """The calendars that answered ("google", "microsoft")."""
    problems: list[SourceProblem] = field(default_factory=list)


class CalendarProvider(Protocol):
    async def free_busy(self, user_id: str, start: datetime, end: datetime) -> CalendarAnswer:
        """The user's busy time overlapping [start, end)."""
        ...


@dataclass(frozen=True, slots=True)
class CalendarEvent:
    """One event: at a time (`start`, `end`) or all day (`start_date`, `end_date`, the end exclusive)."""

    source: str
    title: str
    start: datetime | None
    end: datetime | None
    start_date: date | None
    end_date: date | None
    time_zone: str
    """The IANA zone it was scheduled in ("" when unknown)."""
    busy: bool
    location: str
    link: str


@dataclass(frozen=True, slots=True)
class EventsAnswer:
    events: list[CalendarEvent]
    """Events of the calendars that answered, earliest first (all-day ones at the start of their day)."""
    sources: list[str]
    problems: list[SourceProblem] = field(default_factory=list)
    truncated: bool = False
    """Whether the calendars held more events than the limit asked."""


class EventsProvider(Protocol):
    async def events(self, user_id: str, start: datetime, end: datetime, limit: int) -> EventsAnswer:
        """At most `limit` of the user's events overlapping [start, end), the earliest."""
        ...


def parse_time(value: str, field: str) -> datetime:
    """ISO 8601 date-time ("Z" or offset; naive means UTC) or date, as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidArgument(field, "must be an ISO 8601 date-time such as 2025-03-01T09:00:00Z") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


RANGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "start": {"type": "string", "minLength": 10, "maxLength": 40},
        "end": {"type": "string", "minLength": 10, "maxLength": 40},
    },
    "required": ["start", "end"],
    "additionalProperties": False,
}
"""The arguments of both calendar tools: a range of ISO 8601 date-times."""


def time_range(arguments: dict[str, Any]) -> tuple[datetime, datetime]:
    """The [start, end) a calendar tool was asked for, in UTC; at most `MAX_RANGE` long."""
    start = parse_time(arguments["start"], "start")
    end = parse_time(arguments["end"], "end")
    if end <= start:
        raise InvalidArgument("end", "must be after start")
    if end - start > MAX_RANGE:
        raise InvalidArgument("end", f"the range may span at most {MAX_RANGE.days} days")
    return start, end


def calendar_tool(provider: CalendarProvider) -> Tool:
    async def freebusy(arguments: dict[str, Any], context: ToolContext) -> Any:
        start, end = time_range(arguments)

        async def compute() -> dict[str, Any]:
            answer = await provider.free_busy(context.user_id, start, end)
            result: dict[str, Any] = {
                "start": iso(start),
                "end": iso(end),
                "busy": [{"start": iso(block.start), "end": iso(block.end)} for block in answer.busy],
                "calendars": answer.sources,
            }
            return with_sources(
                result, answer.sources, answer.problems, kind="calendar", none_connected=NO_CALENDAR
            )

        return await cached(
            context.memory,
            CACHE_NAMESPACE,
            f"{iso(start)}/{iso(end)}",
            compute,
            keep=complete,
        )

    return Tool(
        NAME,
        "The user's busy time blocks between start and end (ISO 8601 date-times, UTC unless an offset is "
        "given). Free time is everything else.",
        RANGE_SCHEMA,
        freebusy,
    )


def _described(event: CalendarEvent) -> dict[str, Any]:
    """An event as the model reads it: an all-day event's days, or a timed event's instants in UTC."""
    described: dict[str, Any] = {"title": event.title, "calendar": event.source}
    if event.start_date is not None and event.end_date is not None:
        described |= {
            "all_day": True,
            "start_date": event.start_date.isoformat(),
            "end_date": event.end_date.isoformat(),
        }
    elif event.start is not None and event.end is not None:
        described |= {"start": iso(event.start), "end": iso(event.end)}
    if event.time_zone:
        described["time_zone"] = event.time_zone
    described["busy"] = event.busy
    if event.location:
        described["location"] = event.location
    if event.link:
        described["link"] = event.link
    return described


def events_tool(provider: EventsProvider, *, limit: int = EVENTS_LIMIT) -> Tool:
    async def events(arguments: dict[str, Any], context: ToolContext) -> Any:
        start, end = time_range(arguments)

        async def compute() -> dict[str, Any]:
            answer = await provider.events(context.user_id, start, end, limit)
            result: dict[str, Any] = {
                "start": iso(start),
                "end": iso(end),
                "events": [_described(event) for event in answer.events],
                "calendars": answer.sources,
            }
            if answer.truncated:  # only the earliest are listed
                result["truncated"] = True
            return with_sources(
                result, answer.sources, answer.problems, kind="calendar", none_connected=NO_CALENDAR
            )

        return await cached(
            context.memory,
            EVENTS_CACHE_NAMESPACE,
            f"{iso(start)}/{iso(end)}",
            compute,
            keep=complete,
        )

    return Tool(
        EVENTS,
        "The user's calendar events between start and end (ISO 8601 date-times, UTC unless an offset is "
        "given) from every connected calendar, earliest first: each event's title, its start and end in "
        "UTC (or, for an all-day event, its days as start_date and the exclusive end_date), the time zone "
        "it was scheduled in, whether it is busy time, its location and link.",
        RANGE_SCHEMA,
        events,
    )
