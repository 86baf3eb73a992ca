"""The integrations service as the agents' tools need it: `ConnectedCalendars`, the `calendar_freebusy`
provider over every calendar the person connected. Calls go through `mesh.clients.call`, which forwards
the person's token, request id and remaining deadline (so the service reads their connections only)."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc

from mesh.clients import call
from orchestrator.tools.calendar import BusyBlock, CalendarAnswer, CalendarProblem


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
            problems=[CalendarProblem(p.provider, p.needs_reconnect, p.message) for p in answer.problems],
        )
