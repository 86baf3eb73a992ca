"""`athena.connections.v1.ConnectionsService` over `integrations.connections` (the caller is always the
token's subject)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import grpc
from athena.connections.v1 import connections_pb2, connections_pb2_grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from athena.uploads.v1 import uploads_pb2, uploads_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from integrations.calendars import Calendars, Event
from integrations.connections import Connection, Connections, Status
from integrations.file_references import PostgresFileReferences
from integrations.files import FileHit, Files
from integrations.health import UNITS, Health, Metric
from integrations.provider_api import Problem
from integrations.providers import Capability, Provider
from integrations.uploads import MAX_CHUNK_BYTES, Upload, UploadKind, Uploads, UploadState
from mesh.context import principal
from mesh.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = connections_pb2.DESCRIPTOR.services_by_name["ConnectionsService"].full_name
INTERNAL_SERVICE_NAME = integrations_pb2.DESCRIPTOR.services_by_name["IntegrationsService"].full_name
UPLOADS_SERVICE_NAME = uploads_pb2.DESCRIPTOR.services_by_name["UploadsService"].full_name

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


_UPLOAD_KINDS: dict[int, UploadKind] = {
    uploads_pb2.UPLOAD_KIND_APPLE_HEALTH_EXPORT: UploadKind.APPLE_HEALTH_EXPORT
}
_UPLOAD_KIND_PROTOS: dict[UploadKind, Any] = {kind: proto for proto, kind in _UPLOAD_KINDS.items()}
_UPLOAD_STATES = {
    UploadState.RECEIVING: uploads_pb2.UPLOAD_STATE_RECEIVING,
    UploadState.IMPORTING: uploads_pb2.UPLOAD_STATE_IMPORTING,
    UploadState.IMPORTED: uploads_pb2.UPLOAD_STATE_IMPORTED,
    UploadState.FAILED: uploads_pb2.UPLOAD_STATE_FAILED,
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


def upload_to_proto(upload: Upload) -> uploads_pb2.Upload:
    return uploads_pb2.Upload(
        id=upload.id,
        kind=_UPLOAD_KIND_PROTOS[upload.kind],
        file_name=upload.file_name,
        size_bytes=upload.size_bytes,
        received_bytes=upload.received_bytes,
        state=_UPLOAD_STATES[upload.state],
        status_message=upload.status_message,
        progress=upload.progress,
        records_imported=upload.records_imported,
        days_imported=upload.days_imported,
        created_at=_timestamp(upload.created_at),
        updated_at=_timestamp(upload.updated_at),
    )


def _date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(field, f"{value!r} is not a date (YYYY-MM-DD)") from None


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

    def __init__(
        self,
        connections: Connections,
        calendars: Calendars,
        files: Files,
        health: Health,
        uploads: Uploads,
        references: PostgresFileReferences | None = None,
    ) -> None:
        self._references = references
        self._connections = connections
        self._calendars = calendars
        self._files = files
        self._health = health
        self._uploads = uploads

    async def SearchFiles(
        self, request: integrations_pb2.SearchFilesRequest, context: Context
    ) -> integrations_pb2.SearchFilesResponse:
        found = await self._files.search(
            principal().user_id, request.query, request.limit, request.conversation_id
        )
        return integrations_pb2.SearchFilesResponse(
            files=[_file_hit(hit) for hit in found.files],
            sources=[provider.value for provider in found.sources],
            problems=[_problem(problem) for problem in found.problems],
        )

    async def ReadFile(
        self, request: integrations_pb2.ReadFileRequest, context: Context
    ) -> integrations_pb2.ReadFileResponse:
        read = await self._files.read(
            principal().user_id,
            Provider(request.provider),
            request.file_id,
            request.max_chars or 20_000,
            request.conversation_id,
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

    async def WearableStats(
        self, request: integrations_pb2.WearableStatsRequest, context: Context
    ) -> integrations_pb2.WearableStatsResponse:
        metric = Metric(request.metric)
        found = await self._health.stats(
            principal().user_id,
            metric,
            _date(request.start_date, "start_date"),
            _date(request.end_date, "end_date"),
        )
        return integrations_pb2.WearableStatsResponse(
            days=[
                integrations_pb2.WearableDay(
                    date=day.day.isoformat(), value=day.value, min=day.min, max=day.max, source=day.source
                )
                for day in found.days
            ],
            sources=found.sources,
            problems=[_problem(problem) for problem in found.problems],
            unit=UNITS[metric],
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
        user_id = principal().user_id
        uploaded = await self._uploads.purge(user_id)  # before the data key goes with the connections
        if self._references is not None:
            uploaded += await self._references.purge_user(user_id)
        purged = await self._connections.purge(user_id)
        return integrations_pb2.PurgeUserResponse(
            deleted_rows=purged.rows + uploaded,
            data_key_destroyed=purged.data_key,
            revoked_grants=purged.revoked,
        )


class UploadsServicer(uploads_pb2_grpc.UploadsServiceServicer):
    def __init__(self, uploads: Uploads) -> None:
        self._uploads = uploads

    async def CreateUpload(
        self, request: uploads_pb2.CreateUploadRequest, context: Context
    ) -> uploads_pb2.CreateUploadResponse:
        kind = _UPLOAD_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "is not a kind of upload this service takes")
        upload = await self._uploads.create(
            principal().user_id, kind, request.file_name, request.size_bytes, request.sha256
        )
        return uploads_pb2.CreateUploadResponse(
            upload=upload_to_proto(upload), max_chunk_bytes=MAX_CHUNK_BYTES
        )

    async def AppendChunk(
        self, request: uploads_pb2.AppendChunkRequest, context: Context
    ) -> uploads_pb2.AppendChunkResponse:
        upload = await self._uploads.append(
            principal().user_id, request.upload_id, request.offset, request.data, request.sha256
        )
        return uploads_pb2.AppendChunkResponse(upload=upload_to_proto(upload))

    async def GetUpload(
        self, request: uploads_pb2.GetUploadRequest, context: Context
    ) -> uploads_pb2.GetUploadResponse:
        upload = await self._uploads.get(principal().user_id, request.upload_id)
        return uploads_pb2.GetUploadResponse(upload=upload_to_proto(upload))

    async def ListUploads(
        self, request: uploads_pb2.ListUploadsRequest, context: Context
    ) -> uploads_pb2.ListUploadsResponse:
        found = await self._uploads.of_user(principal().user_id)
        return uploads_pb2.ListUploadsResponse(uploads=[upload_to_proto(upload) for upload in found])

    async def DeleteUpload(
        self, request: uploads_pb2.DeleteUploadRequest, context: Context
    ) -> uploads_pb2.DeleteUploadResponse:
        await self._uploads.delete(principal().user_id, request.upload_id)
        return uploads_pb2.DeleteUploadResponse()
