"""The router, assembled: peers and the public ChatService (all but Chat, which the orchestrator serves) and
AccountService."""

from __future__ import annotations

from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.connections.v1 import connections_pb2
from athena.notifications.v1 import notifications_pb2
from athena.uploads.v1 import uploads_pb2

from mesh.app import Assembly, Deps, ServiceApp
from mesh.server import Service
from router.account import AccountServicer
from router.chat import ChatServicer
from router.peers import Peers
from router.settings import RouterSettings

CHAT = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
ACCOUNT = account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name
AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
CONNECTIONS = connections_pb2.DESCRIPTOR.services_by_name["ConnectionsService"].full_name
UPLOADS = uploads_pb2.DESCRIPTOR.services_by_name["UploadsService"].full_name
NOTIFICATIONS = notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"].full_name
PUBLIC_API = (CHAT, ACCOUNT, AUTH, CONNECTIONS, UPLOADS, NOTIFICATIONS)
"""What reflection shows through the edge: the public services, whichever process serves them."""


async def build(settings: RouterSettings, deps: Deps) -> Assembly:
    peers = Peers.connect(settings, deps)
    return Assembly(
        services=[
            Service(CHAT, ChatServicer(peers, settings), chat_pb2_grpc.add_ChatServiceServicer_to_server),
            Service(
                ACCOUNT,
                AccountServicer(peers, settings, deps.clock),
                account_pb2_grpc.add_AccountServiceServicer_to_server,
            ),
        ],
        edge_reflection_services=PUBLIC_API,
    )


ROUTER = ServiceApp(
    name="router",
    description="AthenaOS router: the public ChatService (agents and conversations; the edge routes Chat "
    "to the orchestrator) and AccountService.",
    settings=RouterSettings,
    deps=Deps,
    build=build,
)
