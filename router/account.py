"""AccountService: what AthenaOS keeps about the caller, its export and its erasure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.connections.v1 import connections_pb2
from athena.identity.v1 import identity_pb2
from athena.integrations.v1 import integrations_pb2
from athena.memory.v1 import memory_pb2
from athena.notifications.v1 import notifications_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from mesh import clients
from mesh.clock import Clock
from mesh.context import principal
from router import export
from router.peers import Peers
from router.settings import RouterSettings

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
_SECTIONS = {"agent": "agents", "conversation": "conversations", "memory": "memories"}


def _as_dict(message: Message) -> dict[str, Any]:
    """Every field, defaults included: a disabled agent says `"enabled": false` rather than nothing."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, peers: Peers, settings: RouterSettings, clock: Clock) -> None:
        self._peers = peers
        self._settings = settings
        self._clock = clock

    def _timeout(self) -> float:
        return self._settings.peer_timeout_seconds

    async def ListMemories(
        self, request: account_pb2.ListMemoriesRequest, context: Context
    ) -> account_pb2.ListMemoriesResponse:
        response = await clients.call(
            self._peers.memories.ListMemories,
            memory_pb2.ListMemoriesRequest(
                page_size=request.page_size,
                page_token=request.page_token,
                include_history=request.include_history,
            ),
            timeout_seconds=self._timeout(),
        )
        return account_pb2.ListMemoriesResponse(
            memories=response.memories, next_page_token=response.next_page_token
        )

    async def ForgetMemory(
        self, request: account_pb2.ForgetMemoryRequest, context: Context
    ) -> account_pb2.ForgetMemoryResponse:
        await clients.call(
            self._peers.memories.Forget,
            memory_pb2.ForgetRequest(memory_id=request.memory_id),
            timeout_seconds=self._timeout(),
        )
        return account_pb2.ForgetMemoryResponse()

    async def CorrectMemory(
        self, request: account_pb2.CorrectMemoryRequest, context: Context
    ) -> account_pb2.CorrectMemoryResponse:
        response = await clients.call(
            self._peers.memories.CorrectMemory,
            memory_pb2.CorrectMemoryRequest(memory_id=request.memory_id, text=request.text),
            timeout_seconds=self._timeout(),
        )
        return account_pb2.CorrectMemoryResponse(memory=response.memory)

    async def GetMemoryHistory(
        self, request: account_pb2.GetMemoryHistoryRequest, context: Context
    ) -> account_pb2.GetMemoryHistoryResponse:
        response = await clients.call(
            self._peers.memories.GetMemoryHistory,
            memory_pb2.GetMemoryHistoryRequest(memory_id=request.memory_id),
            timeout_seconds=self._timeout(),
        )
        return account_pb2.GetMemoryHistoryResponse(versions=response.versions)

    async def GetMemorySettings(
        self, request: account_pb2.GetMemorySettingsRequest, context: Context
    ) -> account_pb2.GetMemorySettingsResponse:
        response = await clients.call(
            self._peers.memories.GetMemorySettings,
            memory_pb2.GetMemorySettingsRequest(),
            timeout_seconds=self._timeout(),
        )
        return account_pb2.GetMemorySettingsResponse(settings=response.settings)

    async def SetMemorySettings(
        self, request: account_pb2.SetMemorySettingsRequest, context: Context
    ) -> account_pb2.SetMemorySettingsResponse:
        response = await clients.call(
            self._peers.memories.SetMemorySettings,
            memory_pb2.SetMemorySettingsRequest(settings=request.settings),
            timeout_seconds=self._timeout(),
        )
        return account_pb2.SetMemorySettingsResponse(settings=response.settings)

    async def ExportData(
        self, request: account_pb2.ExportDataRequest, context: Context
    ) -> AsyncIterator[account_pb2.ExportDataResponse]:
        identity = await clients.call(
            self._peers.identity.ExportIdentity,
            identity_pb2.ExportIdentityRequest(),
            timeout_seconds=self._timeout(),
        )
        connected = await clients.call(
            self._peers.connections.ListConnections,
            connections_pb2.ListConnectionsRequest(),
            timeout_seconds=self._timeout(),
        )
        sections: dict[str, list[Any]] = {
            "agents": [],
            "conversations": [],
            "memories": [],
            "identities": [_as_dict(item) for item in identity.identities],
            "sessions": [_as_dict(item) for item in identity.sessions],
            # What each connection is (provider, capabilities, status, account, dates); never a token.
            "connections": [_as_dict(item) for item in connected.connections],
        }
        async for record in clients.stream(
            self._peers.user_data.ExportUserData, memory_pb2.ExportUserDataRequest()
        ):
            kind = record.WhichOneof("record")
            if kind is None:
                continue
            sections[_SECTIONS[kind]].append(_as_dict(getattr(record, kind)))
        sections["notifications"] = [_as_dict(item) async for item in self._notifications()]
        settings = await clients.call(
            self._peers.notifications.GetNotificationSettings,
            notifications_pb2.GetNotificationSettingsRequest(),
            timeout_seconds=self._timeout(),
        )
        sections["notification_settings"] = [_as_dict(settings.settings)]
        profile = _as_dict(identity.account)
        first = True
        async for chunk in export.chunked(export.document_parts(profile, sections, self._clock.now())):
            yield account_pb2.ExportDataResponse(
                chunk=chunk, content_type="application/json" if first else ""
            )
            first = False

    async def _notifications(self) -> AsyncIterator[notifications_pb2.Notification]:
        """Every notification of the caller, newest first, a page at a time."""
        token = ""
        while True:
            page = await clients.call(
                self._peers.notifications.ListNotifications,
                notifications_pb2.ListNotificationsRequest(page_size=100, page_token=token),
                timeout_seconds=self._timeout(),
            )
            for notification in page.notifications:
                yield notification
            token = page.next_page_token
            if not token:
                return

    async def DeleteAccount(
        self, request: account_pb2.DeleteAccountRequest, context: Context
    ) -> account_pb2.DeleteAccountResponse:
        caller = principal()
        purged = await clients.call(
            self._peers.user_data.PurgeUser, memory_pb2.PurgeUserRequest(), timeout_seconds=self._timeout()
        )
        disconnected = await clients.call(
            self._peers.integrations.PurgeUser,
            integrations_pb2.PurgeUserRequest(),
            timeout_seconds=self._timeout(),
        )
        # Then the sign-in itself: the account, its identities and every session (refresh tokens die here,
        # access tokens are revoked), and the receipt of it all, signed by auth.
        erased = await clients.call(
            self._peers.identity.EraseUser,
            identity_pb2.EraseUserRequest(
                purged={
                    "memory_data_keys": int(purged.data_key_destroyed),
                    "memory_rows": purged.deleted_rows,
                    "memory_cache_keys": purged.deleted_keys,
                    "integrations_data_keys": int(disconnected.data_key_destroyed),
                    "integrations_rows": disconnected.deleted_rows,
                    "integrations_revoked_grants": disconnected.revoked_grants,
                }
            ),
            timeout_seconds=self._timeout(),
        )
        log.info(
            "account deleted",
            extra={"user_id": caller.user_id, "erased": dict(erased.erased_counts)},
        )
        return account_pb2.DeleteAccountResponse(
            receipt=erased.receipt, erased=erased.erased_counts, erased_at=erased.erased_at
        )
