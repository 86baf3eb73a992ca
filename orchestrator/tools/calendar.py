"""`calendar_freebusy`: busy blocks of the user's calendars in a time range.

Providers sit behind `CalendarProvider`: `ConnectedCalendars` (orchestrator/integrations_client.py) asks
the integrations service for every calendar the person connected (Google, Microsoft), and
`IcsFolderCalendar` reads iCalendar files from a folder (a local, single-person deployment). A calendar
that cannot answer is reported to the model as `orchestrator.tools.sources` says. Complete answers are
cached in memory's ephemeral store for five minutes.
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


def calendar_tool(provider: CalendarProvider) -> Tool:
    async def freebusy(arguments: dict[str, Any], context: ToolContext) -> Any:
        start = parse_time(arguments["start"], "start")
        end = parse_time(arguments["end"], "end")
        if end <= start:
            raise InvalidArgument("end", "must be after start")
        if end - start > MAX_RANGE:
            raise InvalidArgument("end", f"the range may span at most {MAX_RANGE.days} days")

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
        {
            "type": "object",
            "properties": {
                "start": {"type": "string", "minLength": 10, "maxLength": 40},
                "end": {"type": "string", "minLength": 10, "maxLength": 40},
            },
            "required": ["start", "end"],
            "additionalProperties": False,
        },
        freebusy,
    )
