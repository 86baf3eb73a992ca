"""`calendar_freebusy`: busy blocks of the user's calendars in a time range; `calendar_events`: the events
themselves (titles, times, all-day days, places), earliest first.

Providers sit behind `CalendarProvider` and `EventsProvider`: `ConnectedCalendars`
(orchestrator/integrations_client.py) asks the integrations service for every calendar the person
connected (Google, Microsoft) and serves both, and `IcsFolderCalendar` reads iCalendar files from a folder
(a local, single-person deployment: free/busy only). Both tools take the same range (`start`, `end`). A
calendar that cannot answer is reported to the model as `orchestrator.tools.sources` says. Complete answers
are cached in memory's ephemeral store for five minutes, per person and range.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

from dateutil.rrule import rrulestr  # type: ignore[import-untyped]
from icalendar import Calendar

from mesh.errors import InvalidArgument
from orchestrator.tools.ephemeral import cached
from orchestrator.tools.registry import Tool, ToolContext
from orchestrator.tools.sources import SourceProblem, complete, with_sources

log = logging.getLogger(__name__)

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
    """The calendars that answered ("google", "microsoft", "calendar files")."""
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


class IcsFolderCalendar:
    """Every `.ics` file directly in `folder`, for every user (a local, single-person deployment).

    Events marked transparent or cancelled are free time. Recurring events are expanded (RRULE, RDATE-less,
    EXDATE honoured); floating times and all-day dates are read as UTC. Bounded: at most `max_files` files
    of `max_file_bytes` each and `max_blocks` blocks per answer.
    """

    def __init__(
        self,
        folder: Path,
        *,
        max_files: int = 100,
        max_file_bytes: int = 5 * 1024 * 1024,
        max_blocks: int = 500,
    ) -> None:
        self._folder = folder
        self._max_files = max_files
        self._max_file_bytes = max_file_bytes
        self._max_blocks = max_blocks

    async def free_busy(self, user_id: str, start: datetime, end: datetime) -> CalendarAnswer:
        return CalendarAnswer(await asyncio.to_thread(self._busy, start, end), ["calendar files"])

    def _busy(self, start: datetime, end: datetime) -> list[BusyBlock]:
        blocks: list[BusyBlock] = []
        files = sorted(self._folder.glob("*.ics"))[: self._max_files] if self._folder.is_dir() else []
        for path in files:
            if path.stat().st_size > self._max_file_bytes:
                log.warning("calendar file too large, skipped", extra={"path": str(path)})
                continue
            try:
                calendar = Calendar.from_ical(path.read_bytes())
            except ValueError:
                log.warning("calendar file is not valid iCalendar, skipped", extra={"path": str(path)})
                continue
            for event in calendar.walk("VEVENT"):
                blocks.extend(_event_blocks(event, start, end, self._max_blocks))
        return merge(blocks)[: self._max_blocks]


def _as_utc(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return datetime.combine(value, time(), tzinfo=UTC)


def _event_blocks(event: Any, start: datetime, end: datetime, limit: int) -> list[BusyBlock]:
    if str(event.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT":
        return []
    if str(event.get("STATUS", "")).upper() == "CANCELLED":
        return []
    if event.get("DTSTART") is None:
        return []
    raw_start = event.decoded("DTSTART")
    first = _as_utc(raw_start)
    if event.get("DTEND") is not None:
        duration = _as_utc(event.decoded("DTEND")) - first
    elif event.get("DURATION") is not None:
        duration = event.decoded("DURATION")
    else:
        duration = timedelta(days=1) if not isinstance(raw_start, datetime) else timedelta(0)
    if duration <= timedelta(0):
        return []
    if event.get("RRULE") is None:
        starts = [first]
    else:
        try:
            rule = rrulestr(event["RRULE"].to_ical().decode(), dtstart=first)
        except ValueError:
            log.warning(
                "unreadable RRULE, only the first occurrence counts", extra={"uid": str(event.get("UID"))}
            )
            rule = None
        excluded = _exdates(event)
        starts = [first] if rule is None else []
        for moment in rule.xafter(start - duration, count=limit, inc=False) if rule is not None else ():
            if moment >= end:
                break
            if moment not in excluded:
                starts.append(moment)
    return [
        BusyBlock(moment, moment + duration)
        for moment in starts
        if moment < end and moment + duration > start
    ]


def _exdates(event: Any) -> set[datetime]:
    value = event.get("EXDATE")
    if value is None:
        return set()
    entries = value if isinstance(value, list) else [value]
    return {_as_utc(item.dt) for entry in entries for item in entry.dts}


def merge(blocks: list[BusyBlock]) -> list[BusyBlock]:
    """Overlapping or touching blocks as one, sorted by start."""
    merged: list[BusyBlock] = []
    for block in sorted(blocks):
        if merged and block.start <= merged[-1].end:
            if block.end > merged[-1].end:
                merged[-1] = BusyBlock(merged[-1].start, block.end)
        else:
            merged.append(block)
    return merged


def parse_time(value: str, field: str) -> datetime:
    """ISO 8601 date-time ("Z" or offset; naive means UTC) or date, as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidArgument(field, "must be an ISO 8601 date-time such as 2025-03-01T09:00:00Z") from exc
    return _as_utc(moment).astimezone(UTC)


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
