"""The router's peers: the memory, auth and integrations services, as gRPC stubs."""

from __future__ import annotations

from dataclasses import dataclass

from athena.connections.v1 import connections_pb2_grpc
from athena.identity.v1 import identity_pb2_grpc
from athena.integrations.v1 import integrations_pb2_grpc
from athena.memory.v1 import memory_pb2_grpc
from athena.notifications.v1 import notifications_pb2_grpc

from mesh.app import Deps
from router.settings import RouterSettings


@dataclass(frozen=True)
class Peers:
    memories: memory_pb2_grpc.MemoryServiceAsyncStub
    conversations: memory_pb2_grpc.ConversationServiceAsyncStub
    agents: memory_pb2_grpc.AgentServiceAsyncStub
    user_data: memory_pb2_grpc.UserDataServiceAsyncStub
    notifications: notifications_pb2_grpc.NotificationsServiceAsyncStub
    identity: identity_pb2_grpc.IdentityServiceAsyncStub
    integrations: integrations_pb2_grpc.IntegrationsServiceAsyncStub
    connections: connections_pb2_grpc.ConnectionsServiceAsyncStub

    @classmethod
    def connect(cls, settings: RouterSettings, deps: Deps) -> Peers:
        """Stubs on channels opened through `deps` (closed when the router stops)."""
        memory = deps.channel(settings.memory_target)
        auth = deps.channel(settings.auth_target)
        integrations = deps.channel(settings.integrations_target)
        return cls(
            memories=memory_pb2_grpc.MemoryServiceStub(memory),
            conversations=memory_pb2_grpc.ConversationServiceStub(memory),
            agents=memory_pb2_grpc.AgentServiceStub(memory),
            user_data=memory_pb2_grpc.UserDataServiceStub(memory),
            notifications=notifications_pb2_grpc.NotificationsServiceStub(memory),
            identity=identity_pb2_grpc.IdentityServiceStub(auth),
            integrations=integrations_pb2_grpc.IntegrationsServiceStub(integrations),
            connections=connections_pb2_grpc.ConnectionsServiceStub(integrations),
        )
