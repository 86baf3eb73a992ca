"""The router's peers: the memory and auth services, as gRPC stubs."""

from __future__ import annotations

from dataclasses import dataclass

from athena.identity.v1 import identity_pb2_grpc
from athena.memory.v1 import memory_pb2_grpc

from mesh.app import Deps
from router.settings import RouterSettings


@dataclass(frozen=True)
class Peers:
    memories: memory_pb2_grpc.MemoryServiceAsyncStub
    conversations: memory_pb2_grpc.ConversationServiceAsyncStub
    agents: memory_pb2_grpc.AgentServiceAsyncStub
    user_data: memory_pb2_grpc.UserDataServiceAsyncStub
    identity: identity_pb2_grpc.IdentityServiceAsyncStub

    @classmethod
    def connect(cls, settings: RouterSettings, deps: Deps) -> Peers:
        """Stubs on channels opened through `deps` (closed when the router stops)."""
        memory = deps.channel(settings.memory_target)
        auth = deps.channel(settings.auth_target)
        return cls(
            memories=memory_pb2_grpc.MemoryServiceStub(memory),
            conversations=memory_pb2_grpc.ConversationServiceStub(memory),
            agents=memory_pb2_grpc.AgentServiceStub(memory),
            user_data=memory_pb2_grpc.UserDataServiceStub(memory),
            identity=identity_pb2_grpc.IdentityServiceStub(auth),
        )
