"""Busy time and events from every calendar a person connected: Google Calendar (`freeBusy` and
`events.list` over the calendars of their calendar list) and Microsoft Graph (`calendarView`), merged.

Each provider is asked through `integrations.provider_api` (a current token, one refresh on refusal, a
short throttle waited out); whatever a provider cannot answer becomes a `Problem` for that provider while
the others still answer.

**All-day events** are civil dates, not instants. Google gives them as `start.date`/`end.date` (the end
exclusive) in the calendar's zone. Graph answers an all-day event's `start` and `end` as the midnights of
its dates whatever `Prefer: outlook.timezone` asks for, labelled with the preferred zone, and names the zone
it was scheduled in in `originalStartTimeZone` (often a Windows name such as "W. Europe Standard Time";
microsoftgraph/microsoft-graph-docs issues 1802 and 6003): its dates are the date part of `start.dateTime`
and `end.dateTime`, never those instants converted. As busy time, an all-day event blocks its days from
midnight to midnight in the zone it was scheduled in (the calendar's zone at Google, its
`originalStartTimeZone` at Microsoft; UTC when the provider names no zone we know).

Reading is bounded: at most `MAX_CALENDARS` Google calendars, `MAX_PAGES` pages per calendar, and for
events no more than the caller's limit (and one to tell it was reached) per calendar.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from integrations.connections import Connection, Connections
from integrations.provider_api import Problem, ProviderApi
from integrations.providers import Capability, Provider
from mesh.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_RANGE = timedelta(days=93)
MAX_CALENDARS = 50
"""Google's freeBusy takes at most 50 calendars (`calendarExpansionMax`); events read as many."""
MAX_PAGES = 20
DEFAULT_EVENTS = 100
MAX_EVENTS = 500
GOOGLE_CALENDARS_AT_ONCE = 4
"""Google calendars whose events are read at the same time."""
GOOGLE_PAGE = 250
"""Events asked of Google per page (its default)."""
GRAPH_PAGE = 100
NO_TITLE = "(no title)"
GRAPH_BUSY = frozenset({"busy", "tentative", "oof", "workingElsewhere"})
"""Graph's `showAs` values that are not free time."""
GRAPH_EVENT_FIELDS = "id,subject,start,end,isAllDay,isCancelled,showAs,location,webLink,originalStartTimeZone"


@dataclass(frozen=True, slots=True, order=True)
class Busy:
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class FreeBusy:
    busy: list[Busy]
    sources: list[Provider]
    problems: list[Problem]


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a calendar (one occurrence of a recurring one)."""

    provider: Provider
    id: str
    title: str
    start: datetime
    """When it starts: for an all-day event, the midnight of its first day in its zone (UTC without one)."""
    end: datetime
    """When it ends (exclusive): for an all-day event, the midnight after its last day in its zone."""
    start_date: date | None
    """An all-day event's first day, as its calendar shows it; None for an event at a time."""
    end_date: date | None
    """The day after an all-day event's last day."""
    time_zone: str
    """The IANA zone it was scheduled in, "" when the provider named none we know."""
    busy: bool
    location: str
    link: str
    focus_time: bool = False
    """The calendar marks it as focus time (Google's `eventType: "focusTime"`)."""

    @property
    def all_day(self) -> bool:
        return self.start_date is not None

    def order(self) -> tuple[datetime, bool, str, str, str]:
        """Its place in a merged list: by start, an all-day event at the start of its first day in UTC
        (before the events starting then)."""
        begins = self.start if self.start_date is None else datetime.combine(self.start_date, time(), UTC)
        return begins, not self.all_day, self.title, self.provider.value, self.id


def _all_day(
    provider: Provider,
    ident: str,
    title: str,
    first: date,
    after: date,
    zone_name: str,
    busy: bool,
    location: str,
    link: str,
) -> Event:
    """An all-day event from `first` to `after` (exclusive), its days from midnight to midnight in the zone
    it was scheduled in (UTC when we know none), as the module docstring says."""
    after = after if after > first else first + timedelta(days=1)
    zone = zone_named(zone_name)
    at = zone or UTC
    return Event(
        provider,
        ident,
        title,
        datetime.combine(first, time(), at).astimezone(UTC),
        datetime.combine(after, time(), at).astimezone(UTC),
        first,
        after,
        zone.key if zone else "",
        busy,
        location,
        link,
    )


@dataclass(frozen=True, slots=True)
class Events:
    events: list[Event]
    sources: list[Provider]
    problems: list[Problem]
    truncated: bool
    """Whether the calendars held more events than the limit (or more than could be read)."""


@dataclass(frozen=True, slots=True)
class _Listed:
    """The events a provider answered, and whether it held more than were read."""

    events: list[Event]
    more: bool


def merge(blocks: list[Busy]) -> list[Busy]:
    """Overlapping or touching blocks as one, by start."""
    merged: list[Busy] = []
    for block in sorted(blocks):
        if merged and block.start <= merged[-1].end:
            if block.end > merged[-1].end:
                merged[-1] = Busy(merged[-1].start, block.end)
        else:
            merged.append(block)
    return merged


def zone_named(name: str) -> ZoneInfo | None:
    """The zone an IANA name or a Windows one (Graph's "Pacific Standard Time", mapped by CLDR's table)
    names; None for one neither knows (Graph's "tzone://Microsoft/Custom", say)."""
    for candidate in (name, WINDOWS_TO_OLSON.get(name)):
        if not candidate:
            continue
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
            continue
    return None


def _check_range(start: datetime, end: datetime) -> None:
    if end <= start:
        raise InvalidArgument("end", "must be after start")
    if end - start > MAX_RANGE:
        raise InvalidArgument("end", f"the range may span at most {MAX_RANGE.days} days")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_google(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _parse_graph(value: Mapping[str, Any], fallback_zone: str) -> datetime:
    """A Graph `dateTimeTimeZone` ({"dateTime": "2026-12-02T09:00:00.0000000", "timeZone": "UTC"})."""
    text = str(value["dateTime"])
    if "." in text:  # seven fractional digits: more than fromisoformat takes
        whole, fraction = text.split(".", 1)
        text = f"{whole}.{fraction[:6]}"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    # A zone we cannot map is read as UTC (we ask Graph for UTC anyway).
    zone = zone_named(str(value.get("timeZone") or fallback_zone)) or UTC
    return moment.replace(tzinfo=zone).astimezone(UTC)


def _graph_date(value: Mapping[str, Any]) -> date:
    """The civil date of an all-day Graph event's start or end: the date part of its midnight."""
    return date.fromisoformat(str(value["dateTime"])[:10])


def _timed(
    provider: Provider,
    ident: str,
    title: str,
    begins: datetime,
    ends: datetime,
    zone_name: str,
    busy: bool,
    location: str,
    link: str,
    focus_time: bool = False,
) -> Event:
    """An event at a time (an end before its start read as its start), in the zone named if we know it."""
    zone = zone_named(zone_name)
    key = zone.key if zone else ""
    return Event(
        provider, ident, title, begins, max(ends, begins), None, None, key, busy, location, link, focus_time
    )


def _google_event(item: Mapping[str, Any], calendar_zone: str) -> Event | None:
    """An `events.list` item; None for a cancelled one (or one without a start)."""
    if item.get("status") == "cancelled":
        return None
    start, end = item.get("start") or {}, item.get("end") or {}
    ident, title = str(item["id"]), str(item.get("summary") or "").strip() or NO_TITLE
    busy = item.get("transparency") != "transparent"
    location, link = str(item.get("location") or ""), str(item.get("htmlLink") or "")
    if "date" in start:
        first = date.fromisoformat(start["date"])
        after = date.fromisoformat(end.get("date") or start["date"])
        return _all_day(Provider.GOOGLE, ident, title, first, after, calendar_zone, busy, location, link)
    if "dateTime" not in start:
        return None
    begins = _parse_google(start["dateTime"])
    ends = _parse_google(end["dateTime"]) if "dateTime" in end else begins
    zone_name = str(start.get("timeZone") or calendar_zone)
    focus = item.get("eventType") == "focusTime"
    return _timed(Provider.GOOGLE, ident, title, begins, ends, zone_name, busy, location, link, focus)


def _graph_event(item: Mapping[str, Any]) -> Event | None:
    """A `calendarView` item asked with `Prefer: outlook.timezone="UTC"`; None for a cancelled one."""
    if item.get("isCancelled"):
        return None
    zone_name = str(item.get("originalStartTimeZone") or "")
    ident, title = str(item["id"]), str(item.get("subject") or "").strip() or NO_TITLE
    busy = str(item.get("showAs") or "busy") in GRAPH_BUSY
    location = str((item.get("location") or {}).get("displayName") or "")
    link = str(item.get("webLink") or "")
    if item.get("isAllDay"):
        first, after = _graph_date(item["start"]), _graph_date(item["end"])
        return _all_day(Provider.MICROSOFT, ident, title, first, after, zone_name, busy, location, link)
    begins, ends = _parse_graph(item["start"], "UTC"), _parse_graph(item["end"], "UTC")
    return _timed(Provider.MICROSOFT, ident, title, begins, ends, zone_name, busy, location, link)


def _read_each_item(
    items: Any, parse: Callable[[Mapping[str, Any]], Event | None], provider: Provider
) -> list[Event]:
    events = []
    for item in items or ():
        try:
            event = parse(item)
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("an unreadable calendar event was skipped", extra={"provider": provider.value})
            continue
        if event is not None:
            events.append(event)
    return events


class Calendars:
    """Free/busy and events over the people's connected calendars."""

    def __init__(
        self,
        connections: Connections,
        http: httpx.AsyncClient,
        *,
        google_calendar_url: str = "https://www.googleapis.com/calendar/v3",
        graph_url: str = "https://graph.microsoft.com/v1.0",
    ) -> None:
        self._connections = connections
        self._api = ProviderApi(connections, http)
        self._google = google_calendar_url.rstrip("/")
        self._graph = graph_url.rstrip("/")

    async def free_busy(self, user_id: str, start: datetime, end: datetime) -> FreeBusy:
        _check_range(start, end)

        async def graph_busy(token: str, start: datetime, end: datetime) -> list[Busy]:
            listed = await self._graph_events(token, start, end, None)
            return [Busy(event.start, event.end) for event in listed.events if event.busy]

        readers = {Provider.GOOGLE: self._google_busy, Provider.MICROSOFT: graph_busy}

        async def busy_of(connection: Connection, token: str) -> list[Busy]:
            return await readers[connection.provider](token, start, end)

        read = await self._api.read_each(
            await self._connections.holding(user_id, Capability.CALENDAR), busy_of
        )
        busy = [
            Busy(max(b.start, start), min(b.end, end))
            for _, blocks in read.answers
            for b in blocks
            if b.end > start and b.start < end
        ]
        return FreeBusy(merge(busy), read.sources, read.problems)

    async def events(self, user_id: str, start: datetime, end: datetime, limit: int = 0) -> Events:
        """The events of every connected calendar overlapping [start, end), by start (`Event.order`), at
        most `limit` of them (0: `DEFAULT_EVENTS`), the earliest kept."""
        _check_range(start, end)
        if not 0 <= limit <= MAX_EVENTS:
            raise InvalidArgument("limit", f"must be between 0 and {MAX_EVENTS}")
        limit = limit or DEFAULT_EVENTS
        readers = {Provider.GOOGLE: self._google_events, Provider.MICROSOFT: self._graph_events}

        async def events_of(connection: Connection, token: str) -> _Listed:
            return await readers[connection.provider](token, start, end, limit)

        read = await self._api.read_each(
            await self._connections.holding(user_id, Capability.CALENDAR), events_of
        )
        merged = sorted((e for _, listed in read.answers for e in listed.events), key=Event.order)
        truncated = len(merged) > limit or any(listed.more for _, listed in read.answers)
        return Events(merged[:limit], read.sources, read.problems, truncated)

    async def _google_calendars(self, token: str, min_access_role: str) -> list[str]:
        """The ids of the calendars the person shows in their calendar list (at most `MAX_CALENDARS`;
        "primary" when the list is empty)."""
        ids: list[str] = []
        page: str | None = None
        for _ in range(MAX_PAGES):
            params = {
                "minAccessRole": min_access_role,
                "maxResults": "250",
                **({"pageToken": page} if page else {}),
            }
            listed = await self._api.get_json(
                "GET", f"{self._google}/users/me/calendarList", token, Provider.GOOGLE, params=params
            )
            ids += [
                str(item["id"]) for item in listed.get("items", []) if item.get("selected", True) is not False
            ]
            page = listed.get("nextPageToken")
            if not page:
                break
        return ids[:MAX_CALENDARS] or ["primary"]

    async def _google_busy(self, token: str, start: datetime, end: datetime) -> list[Busy]:
        ids = await self._google_calendars(token, "freeBusyReader")
        answer = await self._api.get_json(
            "POST",
            f"{self._google}/freeBusy",
            token,
            Provider.GOOGLE,
            json={
                "timeMin": _rfc3339(start),
                "timeMax": _rfc3339(end),
                "timeZone": "UTC",
                "items": [{"id": i} for i in ids],
            },
        )
        blocks = []
        for calendar in (answer.get("calendars") or {}).values():
            if calendar.get("errors"):
                log.info("a Google calendar gave no free/busy", extra={"errors": calendar["errors"]})
            blocks += [
                Busy(_parse_google(b["start"]), _parse_google(b["end"])) for b in calendar.get("busy", [])
            ]
        return blocks

    async def _google_events(self, token: str, start: datetime, end: datetime, limit: int) -> _Listed:
        """`events.list` of every calendar the person can read, a few at a time; the first failure (a
        refused token included) fails the provider once every calendar has answered."""
        ids = await self._google_calendars(token, "reader")
        gate = asyncio.Semaphore(GOOGLE_CALENDARS_AT_ONCE)

        async def one(calendar_id: str) -> _Listed:
            async with gate:
                return await self._google_calendar_events(token, calendar_id, start, end, limit)

        outcomes = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        listed = [outcome for outcome in outcomes if isinstance(outcome, _Listed)]
        return _Listed([e for one in listed for e in one.events], any(one.more for one in listed))

    async def _google_calendar_events(
        self, token: str, calendar_id: str, start: datetime, end: datetime, limit: int
    ) -> _Listed:
        url = f"{self._google}/calendars/{quote(calendar_id, safe='')}/events"
        params = {
            "timeMin": _rfc3339(start),
            "timeMax": _rfc3339(end),
            "singleEvents": "true",
            "orderBy": "startTime",
            "maxResults": str(min(limit + 1, GOOGLE_PAGE)),
        }
        events: list[Event] = []
        page: str | None = None
        for _ in range(MAX_PAGES):
            answer = await self._api.get_json(
                "GET", url, token, Provider.GOOGLE, params={**params, **({"pageToken": page} if page else {})}
            )
            zone = str(answer.get("timeZone") or "")
            parse = functools.partial(_google_event, calendar_zone=zone)
            events += _read_each_item(answer.get("items"), parse, Provider.GOOGLE)
            page = answer.get("nextPageToken")
            if not page or len(events) > limit:
                break
        return _Listed(events, bool(page))

    async def _graph_events(self, token: str, start: datetime, end: datetime, limit: int | None) -> _Listed:
        """`calendarView` in UTC, following `@odata.nextLink`; with a `limit`, no further than one event
        past it."""
        url: str | None = f"{self._graph}/me/calendarView"
        params: dict[str, str] | None = {
            "startDateTime": _rfc3339(start),
            "endDateTime": _rfc3339(end),
            "$select": GRAPH_EVENT_FIELDS,
            "$orderby": "start/dateTime",
            "$top": str(min(limit + 1, GRAPH_PAGE) if limit else GRAPH_PAGE),
        }
        events: list[Event] = []
        pages = 0
        while url is not None and pages < MAX_PAGES:
            pages += 1
            page = await self._api.get_json(
                "GET",
                url,
                token,
                Provider.MICROSOFT,
                params=params,
                headers={"Prefer": 'outlook.timezone="UTC"'},
            )
            events += _read_each_item(page.get("value"), _graph_event, Provider.MICROSOFT)
            url, params = page.get("@odata.nextLink"), None  # the next link carries the query
            if limit is not None and len(events) > limit:
                break
        return _Listed(events, url is not None)
