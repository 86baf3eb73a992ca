"""Busy time from every calendar a person connected: Google Calendar (`freeBusy` over the calendars of
their calendar list) and Microsoft Graph (`calendarView`, events not shown as free), merged.

Each provider is asked through `integrations.provider_api` (a current token, one refresh on refusal, a
short throttle waited out); whatever a provider cannot answer becomes a `Problem` for that provider while
the others still answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from integrations.connections import Connection, Connections
from integrations.provider_api import Problem, ProviderApi
from integrations.providers import Capability, Provider
from mesh.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_RANGE = timedelta(days=93)
MAX_CALENDARS = 50
"""Google's freeBusy takes at most 50 calendars (`calendarExpansionMax`)."""
MAX_PAGES = 20
GRAPH_BUSY = frozenset({"busy", "tentative", "oof", "workingElsewhere"})
"""Graph's `showAs` values that are not free time."""


@dataclass(frozen=True, slots=True, order=True)
class Busy:
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class FreeBusy:
    busy: list[Busy]
    sources: list[Provider]
    problems: list[Problem]


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
    zone_name = str(value.get("timeZone") or fallback_zone)
    try:
        zone = ZoneInfo(zone_name) if zone_name != "UTC" else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC  # a Windows zone name we cannot map: read as UTC (we ask Graph for UTC anyway)
    return moment.replace(tzinfo=zone).astimezone(UTC)


class Calendars:
    """Free/busy over the people's connected calendars."""

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
        if end <= start:
            raise InvalidArgument("end", "must be after start")
        if end - start > MAX_RANGE:
            raise InvalidArgument("end", f"the range may span at most {MAX_RANGE.days} days")
        readers = {Provider.GOOGLE: self._google_busy, Provider.MICROSOFT: self._graph_busy}

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

    async def _google_busy(self, token: str, start: datetime, end: datetime) -> list[Busy]:
        ids: list[str] = []
        page: str | None = None
        for _ in range(MAX_PAGES):
            params = {
                "minAccessRole": "freeBusyReader",
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
        ids = ids[:MAX_CALENDARS] or ["primary"]
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

    async def _graph_busy(self, token: str, start: datetime, end: datetime) -> list[Busy]:
        url: str | None = f"{self._graph}/me/calendarView"
        params: dict[str, str] | None = {
            "startDateTime": _rfc3339(start),
            "endDateTime": _rfc3339(end),
            "$select": "start,end,showAs,isAllDay,isCancelled",
            "$top": "100",
        }
        blocks: list[Busy] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page = await self._api.get_json(
                "GET",
                url,
                token,
                Provider.MICROSOFT,
                params=params,
                headers={"Prefer": 'outlook.timezone="UTC"'},
            )
            for event in page.get("value", []):
                if event.get("isCancelled") or event.get("showAs", "busy") not in GRAPH_BUSY:
                    continue
                blocks.append(Busy(_parse_graph(event["start"], "UTC"), _parse_graph(event["end"], "UTC")))
            url, params = page.get("@odata.nextLink"), None  # the next link carries the query
        return blocks
