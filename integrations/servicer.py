"""`athena.connections.v1.ConnectionsService` over `integrations.connections` (the caller is always the
token's subject)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from athena.connections.v1 import connections_pb2, connections_pb2_grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from integrations.calendars import Calendars, Event
from integrations.connections import Connection, Connections, Status
from integrations.files import FileHit, Files
from integrations.provider_api import Problem
from integrations.providers import Capability, Provider
from mesh.context import principal
from mesh.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = connections_pb2.DESCRIPTOR.services_by_name["ConnectionsService"].full_name
INTERNAL_SERVICE_NAME = integrations_pb2.DESCRIPTOR.services_by_name["IntegrationsService"].full_name

_PROVIDERS: dict[int, Provider] = {
    connections_pb2.PROVIDER_GOOGLE: Provider.GOOGLE,
    connections_pb2.PROVIDER_MICROSOFT: Provider.MICROSOFT,
}
_PROVIDER_PROTOS: dict[Provider, Any] = {provider: proto for proto, provider in _PROVIDERS.items()}
_CAPABILITIES: dict[int, Capability] = {
    connections_pb2.CAPABILITY_CALENDAR: Capability.CALENDAR,
    connections_pb2.CAPABILITY_FILES: Capability.FILES,
    connections_pb2.CAPABILITY_HEALTH: Capability.HEALTH,
}
_CAPABILITY_PROTOS: dict[Capability, Any] = {capability: proto for proto, capability in _CAPABILITIES.items()}
_STATUSES = {
    Status.CONNECTED: connections_pb2.CONNECTION_STATUS_CONNECTED,
    Status.NEEDS_RECONNECT: connections_pb2.CONNECTION_STATUS_NEEDS_RECONNECT,
    Status.ERROR: connections_pb2.CONNECTION_STATUS_ERROR,
}


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _provider(value: int) -> Provider:
    provider = _PROVIDERS.get(value)
    if provider is None:
        raise InvalidArgument("provider", "is not a provider this service knows")
    return provider


def connection_to_proto(connection: Connection) -> connections_pb2.Connection:
    proto = connections_pb2.Connection(
        id=connection.id,
        provider=_PROVIDER_PROTOS[connection.provider],
        capabilities=[_CAPABILITY_PROTOS[c] for c in Capability if c in connection.capabilities],
        status=_STATUSES[connection.status],
        status_message=connection.status_message,
        account=connection.account,
        connected_at=_timestamp(connection.connected_at),
    )
    if connection.last_used_at is not None:
        proto.last_used_at.CopyFrom(_timestamp(connection.last_used_at))
    return proto


def _problem(problem: Problem) -> integrations_pb2.SourceProblem:
    return integrations_pb2.SourceProblem(
        provider=problem.provider.value, needs_reconnect=problem.needs_reconnect, message=problem.message
    )


def _event(event: Event) -> integrations_pb2.CalendarEvent:
    proto = integrations_pb2.CalendarEvent(
        provider=event.provider.value,
        id=event.id,
        title=event.title,
        all_day=event.all_day,
        time_zone=event.time_zone,
        busy=event.busy,
        location=event.location,
        link=event.link,
    )
    if event.start_date is not None and event.end_date is not None:
        proto.start_date, proto.end_date = event.start_date.isoformat(), event.end_date.isoformat()
    else:
        proto.start.CopyFrom(_timestamp(event.start))
        proto.end.CopyFrom(_timestamp(event.end))
    return proto


def _file_hit(hit: FileHit) -> integrations_pb2.FileHit:
    proto = integrations_pb2.FileHit(
        provider=hit.provider.value, id=hit.id, name=hit.name, mime_type=hit.mime_type, link=hit.link
    )
    if hit.modified_at is not None:
        proto.modified_at.CopyFrom(_timestamp(hit.modified_at))
    return proto


class ConnectionsServicer(connections_pb2_grpc.ConnectionsServiceServicer):
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    async def ListConnections(
        self, request: connections_pb2.ListConnectionsRequest, context: Context
    ) -> connections_pb2.ListConnectionsResponse:
        found = await self._connections.list(principal().user_id)
        return connections_pb2.ListConnectionsResponse(connections=[connection_to_proto(c) for c in found])

    async def BeginConnection(
        self, request: connections_pb2.BeginConnectionRequest, context: Context
    ) -> connections_pb2.BeginConnectionResponse:
        capabilities = [_CAPABILITIES[c] for c in request.capabilities if c in _CAPABILITIES]
        begun = await self._connections.begin(
            principal().user_id, _provider(request.provider), capabilities, request.redirect_uri
        )
        return connections_pb2.BeginConnectionResponse(
            authorization_url=begun.authorization_url,
            state=begun.state,
            expires_at=_timestamp(begun.expires_at),
        )

    async def CompleteConnection(
        self, request: connections_pb2.CompleteConnectionRequest, context: Context
    ) -> connections_pb2.CompleteConnectionResponse:
        connection = await self._connections.complete(
            principal().user_id, request.state, request.code, request.error, request.redirect_uri
        )
        return connections_pb2.CompleteConnectionResponse(connection=connection_to_proto(connection))

    async def Disconnect(
        self, request: connections_pb2.DisconnectRequest, context: Context
    ) -> connections_pb2.DisconnectResponse:
        revoked = await self._connections.disconnect(principal().user_id, _provider(request.provider))
        return connections_pb2.DisconnectResponse(revoked_at_provider=revoked)


class IntegrationsServicer(integrations_pb2_grpc.IntegrationsServiceServicer):
    """What the rest of the mesh asks: the agents' tools' data, and the erasure of a person's connections."""

    def __init__(self, connections: Connections, calendars: Calendars, files: Files) -> None:
        self._connections = connections
        self._calendars = calendars
        self._files = files

    async def SearchFiles(
        self, request: integrations_pb2.SearchFilesRequest, context: Context
    ) -> integrations_pb2.SearchFilesResponse:
        found = await self._files.search(principal().user_id, request.query, request.limit)
        return integrations_pb2.SearchFilesResponse(
            files=[_file_hit(hit) for hit in found.files],
            sources=[provider.value for provider in found.sources],
            problems=[_problem(problem) for problem in found.problems],
        )

    async def ReadFile(
        self, request: integrations_pb2.ReadFileRequest, context: Context
    ) -> integrations_pb2.ReadFileResponse:
        read = await self._files.read(
            principal().user_id, Provider(request.provider), request.file_id, request.max_chars or 20_000
        )
        hit = integrations_pb2.FileHit(
            provider=read.provider.value, id=read.id, name=read.name, mime_type=read.mime_type
        )
        return integrations_pb2.ReadFileResponse(file=hit, text=read.text, truncated=read.truncated)

    async def FreeBusy(
        self, request: integrations_pb2.FreeBusyRequest, context: Context
    ) -> integrations_pb2.FreeBusyResponse:
        found = await self._calendars.free_busy(
            principal().user_id, request.start.ToDatetime(UTC), request.end.ToDatetime(UTC)
        )
        return integrations_pb2.FreeBusyResponse(
            busy=[
                integrations_pb2.BusyBlock(start=_timestamp(block.start), end=_timestamp(block.end))
                for block in found.busy
            ],
            sources=[provider.value for provider in found.sources],
            problems=[_problem(problem) for problem in found.problems],
        )

    async def ListEvents(
        self, request: integrations_pb2.ListEventsRequest, context: Context
    ) -> integrations_pb2.ListEventsResponse:
        found = await self._calendars.events(
            principal().user_id, request.start.ToDatetime(UTC), request.end.ToDatetime(UTC), request.limit
        )
        return integrations_pb2.ListEventsResponse(
            events=[_event(event) for event in found.events],
            sources=[provider.value for provider in found.sources],
            problems=[_problem(problem) for problem in found.problems],
            truncated=found.truncated,
        )

    async def PurgeUser(
        self, request: integrations_pb2.PurgeUserRequest, context: Context
    ) -> integrations_pb2.PurgeUserResponse:
        purged = await self._connections.purge(principal().user_id)
        return integrations_pb2.PurgeUserResponse(
            deleted_rows=purged.rows, data_key_destroyed=purged.data_key, revoked_grants=purged.revoked
        )
