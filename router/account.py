"""AccountService: what AthenaOS keeps about the caller, its export and its erasure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.identity.v1 import identity_pb2
from athena.memory.v1 import memory_pb2
from google.protobuf.json_format import MessageToDict

from mesh.clients import outgoing
from mesh.context import principal
from router import export, validation
from router.peers import Peers
from router.settings import RouterSettings

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
_SECTIONS = {"agent": "agents", "conversation": "conversations", "memory": "memories"}


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, peers: Peers, settings: RouterSettings) -> None:
        self._peers = peers
        self._settings = settings

    def _unary(self) -> dict[str, Any]:
        return outgoing(timeout=self._settings.peer_timeout_seconds)

    async def ListMemories(
        self, request: account_pb2.ListMemoriesRequest, context: Context
    ) -> account_pb2.ListMemoriesResponse:
        response = await self._peers.memories.ListMemories(
            memory_pb2.ListMemoriesRequest(
                page_size=validation.page_size(request.page_size),
                page_token=validation.page_token(request.page_token),
            ),
            **self._unary(),
        )
        return account_pb2.ListMemoriesResponse(
            memories=response.memories, next_page_token=response.next_page_token
        )

    async def ForgetMemory(
        self, request: account_pb2.ForgetMemoryRequest, context: Context
    ) -> account_pb2.ForgetMemoryResponse:
        await self._peers.memories.Forget(
            memory_pb2.ForgetRequest(memory_id=validation.object_id(request.memory_id, "memory_id")),
            **self._unary(),
        )
        return account_pb2.ForgetMemoryResponse()

    async def ExportData(
        self, request: account_pb2.ExportDataRequest, context: Context
    ) -> AsyncIterator[account_pb2.ExportDataResponse]:
        caller = principal()
        sections: dict[str, list[Any]] = {"agents": [], "conversations": [], "memories": []}
        async for record in self._peers.user_data.ExportUserData(
            memory_pb2.ExportUserDataRequest(), **outgoing()
        ):
            kind = record.WhichOneof("record")
            if kind is None:
                continue
            # Every field, defaults included: a disabled agent says `"enabled": false` rather than nothing.
            sections[_SECTIONS[kind]].append(
                MessageToDict(
                    getattr(record, kind),
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
            )
        profile = {"user_id": caller.user_id, "email": caller.email}
        first = True
        async for chunk in export.chunked(export.document_parts(profile, sections)):
            yield account_pb2.ExportDataResponse(
                chunk=chunk, content_type="application/json" if first else ""
            )
            first = False

    async def DeleteAccount(
        self, request: account_pb2.DeleteAccountRequest, context: Context
    ) -> account_pb2.DeleteAccountResponse:
        caller = principal()
        purged = await self._peers.user_data.PurgeUser(memory_pb2.PurgeUserRequest(), **self._unary())
        # Then the sign-in itself: the account, its identities and every session (refresh tokens die here).
        erased = await self._peers.identity.EraseUser(identity_pb2.EraseUserRequest(), **self._unary())
        log.info(
            "account deleted",
            extra={
                "user_id": caller.user_id,
                "deleted_rows": purged.deleted_rows,
                "deleted_keys": purged.deleted_keys,
                "identity_erased": erased.erased,
            },
        )
        return account_pb2.DeleteAccountResponse()
