"""`python -m router`: the public Chat and Account API."""

from __future__ import annotations

import argparse
import asyncio

from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2
from athena.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.server import MeshServer, Service, run
from mesh.telemetry import configure_logging, configure_tracing
from mesh.tokens import RemoteJwks, TokenVerifier
from router.account import AccountServicer
from router.chat import ChatServicer
from router.peers import Peers
from router.settings import RouterSettings

CHAT = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
ACCOUNT = account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name
AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
PUBLIC_API = (CHAT, ACCOUNT, AUTH)
"""What reflection shows through the edge: the three public services, whichever process serves them."""


def build_server(settings: RouterSettings, peers: Peers, verifier: TokenVerifier) -> MeshServer:
    return MeshServer(
        "router",
        settings,
        [
            Service(CHAT, ChatServicer(peers, settings), chat_pb2_grpc.add_ChatServiceServicer_to_server),
            Service(
                ACCOUNT,
                AccountServicer(peers, settings),
                account_pb2_grpc.add_AccountServiceServicer_to_server,
            ),
        ],
        verifier=verifier,
        edge_reflection_services=PUBLIC_API,
    )


async def serve(settings: RouterSettings) -> None:
    configure_logging("router", settings.log_level)
    configure_tracing("router", settings.otlp_endpoint)
    peers = Peers.connect(settings)
    verifier = TokenVerifier(
        RemoteJwks(settings.jwks_url), issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    await run(build_server(settings, peers, verifier), on_stop=peers.close)


def main() -> None:
    argparse.ArgumentParser(
        prog="python -m router", description=__doc__, epilog="Configured by ROUTER_* and ATHENA_* variables."
    ).parse_args()
    asyncio.run(serve(RouterSettings()))


if __name__ == "__main__":
    main()
