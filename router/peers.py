"""The router's peers: the orchestrator pool, the memory and auth services, and the Redis-compatible server
holding the rate-limit counters."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from athena.auth.v1 import auth_pb2_grpc
from athena.identity.v1 import identity_pb2_grpc
from athena.memory.v1 import memory_pb2_grpc
from athena.orchestrator.v1 import orchestrator_pb2_grpc

from mesh.clients import channel
from router.redis_limits import RedisLimitStore, connect
from router.settings import RouterSettings


@dataclass(frozen=True)
class Peers:
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
    memories: memory_pb2_grpc.MemoryServiceAsyncStub
    conversations: memory_pb2_grpc.ConversationServiceAsyncStub
    agents: memory_pb2_grpc.AgentServiceAsyncStub
    user_data: memory_pb2_grpc.UserDataServiceAsyncStub
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    identity: identity_pb2_grpc.IdentityServiceAsyncStub
    limit_store: RedisLimitStore
    channels: tuple[grpc.aio.Channel, ...]

    @classmethod
    def connect(cls, settings: RouterSettings) -> Peers:
        orchestrator = channel(settings.orchestrator_target)
        memory = channel(settings.memory_target)
        auth = channel(settings.auth_target)
        return cls(
            orchestrator=orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator),
            memories=memory_pb2_grpc.MemoryServiceStub(memory),
            conversations=memory_pb2_grpc.ConversationServiceStub(memory),
            agents=memory_pb2_grpc.AgentServiceStub(memory),
            user_data=memory_pb2_grpc.UserDataServiceStub(memory),
            auth=auth_pb2_grpc.AuthServiceStub(auth),
            identity=identity_pb2_grpc.IdentityServiceStub(auth),
            limit_store=RedisLimitStore(connect(settings.redis_url, settings.redis_timeout_seconds)),
            channels=(orchestrator, memory, auth),
        )

    async def close(self) -> None:
        for peer in self.channels:
            await peer.close(grace=None)
        await self.limit_store.close()
