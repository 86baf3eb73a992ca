"""Memory as the proactive agents need it, called for no user with the deployment's service key
(`mesh.clients.service_call`): `MemoryNotifier.notify` leaves a rule's notice for a person
(`NotifierService.Notify`), `MemoryNotifier.forget_cached` empties their tools' cached results of what
changed (`MemoryService.ForgetEphemeral`)."""

from __future__ import annotations

import grpc
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from athena.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from integrations.proactive import Notice
from mesh.clients import call, service_call


class MemoryNotifier:
    def __init__(self, channel: grpc.aio.Channel, service_key: str, *, timeout: float = 10.0) -> None:
        self._notifier = notifications_pb2_grpc.NotifierServiceStub(channel)
        self._memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self._credentials = service_call(service_key)["metadata"]
        self._timeout = timeout

    async def notify(self, user_id: str, notice: Notice) -> bool:
        answer = await call(
            self._notifier.Notify,
            notifications_pb2.NotifyRequest(
                user_id=user_id,
                agent_id=notice.agent_id,
                title=notice.title,
                body=notice.body,
                kind=notice.kind,
                dedupe_key=notice.dedupe_key,
                conversation_id=notice.conversation_id,
            ),
            timeout_seconds=self._timeout,
            metadata=self._credentials,
        )
        return bool(answer.created)

    async def forget_cached(self, user_id: str, namespaces: list[str]) -> int:
        answer = await call(
            self._memory.ForgetEphemeral,
            memory_pb2.ForgetEphemeralRequest(user_id=user_id, namespaces=namespaces),
            timeout_seconds=self._timeout,
            metadata=self._credentials,
        )
        return int(answer.deleted)
