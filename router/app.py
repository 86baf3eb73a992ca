"""The router, assembled: peers, per-user rate limits, and the public Chat and Account services."""

from __future__ import annotations

from dataclasses import dataclass

from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2
from athena.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.app import Assembly, Deps, ServiceApp
from mesh.server import Service
from router.account import AccountServicer
from router.chat import ChatServicer
from router.limits import Limiter, LimitStore
from router.peers import Peers
from router.redis_limits import RedisLimitStore
from router.settings import RouterSettings

CHAT = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
ACCOUNT = account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name
AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
PUBLIC_API = (CHAT, ACCOUNT, AUTH)
"""What reflection shows through the edge: the three public services, whichever process serves them."""


@dataclass(kw_only=True)
class RouterDeps(Deps):
    limit_store: LimitStore | None = None
    """Where the rate-limit counters of every replica meet; None: Redis at `settings.redis_url`."""


async def build(settings: RouterSettings, deps: RouterDeps) -> Assembly:
    peers = Peers.connect(settings, deps)
    store = deps.limit_store or RedisLimitStore(
        deps.redis(settings.redis_url, settings.redis_timeout_seconds)
    )
    limiter = Limiter(settings.limits(), store, deps.clock)
    return Assembly(
        services=[
            Service(
                CHAT, ChatServicer(peers, limiter, settings), chat_pb2_grpc.add_ChatServiceServicer_to_server
            ),
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
    description="AthenaOS router: the public ChatService and AccountService, routing chat turns to the "
    "orchestrator pool under per-user rate limits.",
    settings=RouterSettings,
    deps=RouterDeps,
    build=build,
)
