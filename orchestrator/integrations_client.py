"""The integrations service as the agents' tools need it: `ConnectedCalendars`, the `calendar_freebusy`
and `calendar_events` provider over every calendar the person connected, `ConnectedDrives` for
`file_search` and `file_read`, and `ConnectedHealth` for `wearable_stats`. Calls go through
`mesh.clients.call`, which forwards the person's token, request id and remaining deadline (so the service
reads their connections only)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc

from mesh.clients import call
from orchestrator.tools.calendar import BusyBlock, CalendarAnswer, CalendarEvent, EventsAnswer
from orchestrator.tools.drives import DriveFile, DriveSearch, DriveText
from orchestrator.tools.sources import SourceProblem
from orchestrator.tools.wearables import HealthAnswer, HealthDay


class ConnectedCalendars:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._integrations = integrations_pb2_grpc.IntegrationsServiceStub(channel)
        self._timeout = timeout

    async def free_busy(self, user_id: str, start: datetime, end: datetime) -> CalendarAnswer:
        request = integrations_pb2.FreeBusyRequest()
        request.start.FromDatetime(start)
        request.end.FromDatetime(end)
        answer = await call(self._integrations.FreeBusy, request, timeout_seconds=self._timeout)
        return CalendarAnswer(
            busy=[BusyBlock(b.start.ToDatetime(UTC), b.end.ToDatetime(UTC)) for b in answer.busy],
            sources=list(answer.sources),
            problems=[SourceProblem(p.provider, p.needs_reconnect, p.message) for p in answer.problems],
        )

    async def events(self, user_id: str, start: datetime, end: datetime, limit: int) -> EventsAnswer:
        request = integrations_pb2.ListEventsRequest(limit=limit)
        request.start.FromDatetime(start)
        request.end.FromDatetime(end)
        answer = await call(self._integrations.ListEvents, request, timeout_seconds=self._timeout)
        return EventsAnswer(
            events=[_event(e) for e in answer.events],
            sources=list(answer.sources),
            problems=[SourceProblem(p.provider, p.needs_reconnect, p.message) for p in answer.problems],
            truncated=answer.truncated,
        )


def _event(event: integrations_pb2.CalendarEvent) -> CalendarEvent:
    all_day = event.all_day
    return CalendarEvent(
        source=event.provider,
        title=event.title,
        start=None if all_day else event.start.ToDatetime(UTC),
        end=None if all_day else event.end.ToDatetime(UTC),
        start_date=date.fromisoformat(event.start_date) if all_day else None,
        end_date=date.fromisoformat(event.end_date) if all_day else None,
        time_zone=event.time_zone,
        busy=event.busy,
        location=event.location,
        link=event.link,
    )


def _drive_file(hit: integrations_pb2.FileHit) -> DriveFile:
    modified = hit.modified_at.ToDatetime(UTC) if hit.HasField("modified_at") else None
    return DriveFile(hit.provider, hit.id, hit.name, hit.mime_type, modified, hit.link)


class ConnectedDrives:
    """`file_search` and `file_read` over every drive the person connected."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 15.0) -> None:
        self._integrations = integrations_pb2_grpc.IntegrationsServiceStub(channel)
        self._timeout = timeout

    async def search(self, query: str, limit: int, conversation_id: str = "") -> DriveSearch:
        answer = await call(
            self._integrations.SearchFiles,
            integrations_pb2.SearchFilesRequest(query=query, limit=limit, conversation_id=conversation_id),
            timeout_seconds=self._timeout,
        )
        return DriveSearch(
            files=[_drive_file(hit) for hit in answer.files],
            sources=list(answer.sources),
            problems=[SourceProblem(p.provider, p.needs_reconnect, p.message) for p in answer.problems],
        )

    async def read(self, source: str, file_id: str, max_chars: int, conversation_id: str = "") -> DriveText:
        answer = await call(
            self._integrations.ReadFile,
            integrations_pb2.ReadFileRequest(
                provider=source, file_id=file_id, max_chars=max_chars, conversation_id=conversation_id
            ),
            timeout_seconds=self._timeout,
        )
        return DriveText(_drive_file(answer.file), answer.text, answer.truncated)


class ConnectedHealth:
    """`wearable_stats` over the person's connected Google Health data and imported Apple Health exports."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._integrations = integrations_pb2_grpc.IntegrationsServiceStub(channel)
        self._timeout = timeout

    async def stats(self, metric: str, start: date, end: date) -> HealthAnswer:
        answer = await call(
            self._integrations.WearableStats,
            integrations_pb2.WearableStatsRequest(
                metric=metric, start_date=start.isoformat(), end_date=end.isoformat()
            ),
            timeout_seconds=self._timeout,
        )
        return HealthAnswer(
            days=[
                HealthDay(date.fromisoformat(d.date), d.value, d.min, d.max, d.source) for d in answer.days
            ],
            unit=answer.unit,
            sources=list(answer.sources),
            problems=[SourceProblem(p.provider, p.needs_reconnect, p.message) for p in answer.problems],
        )
