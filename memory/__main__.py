"""`python -m memory [serve|migrate]`: run the memory service, or only apply its migrations."""

from __future__ import annotations

import argparse
import asyncio

from memory.app import SERVICE_METHODS, build_services, open_resources, openai_embedder
from memory.migrate import migrate
from memory.settings import MemorySettings
from mesh.server import MeshServer, run
from mesh.telemetry import configure_logging, configure_tracing
from mesh.tokens import RemoteJwks, TokenVerifier


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m memory",
        description="AthenaOS memory service: memories (pgvector), conversations, agents, user data. "
        "Configured by MEMORY_* variables (DATABASE_URL, REDIS_URL and OPENAI_BASE_URL are also read).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate"),
        default="serve",
        help="serve (default): apply migrations, then serve gRPC; migrate: apply migrations and exit",
    )
    return parser


async def serve(settings: MemorySettings) -> None:
    await migrate(
        settings.database_url, settings.embedding_dimension, wait_seconds=settings.startup_timeout_seconds
    )
    resources = await open_resources(settings)
    server = MeshServer(
        "memory",
        settings,
        build_services(settings, resources, openai_embedder(settings)),
        verifier=TokenVerifier(
            RemoteJwks(settings.jwks_url), issuer=settings.jwt_issuer, audience=settings.jwt_audience
        ),
        service_methods=SERVICE_METHODS,
        readiness=resources.ready,
    )
    await run(server, on_stop=resources.close)


def main() -> None:
    args = _parser().parse_args()
    settings = MemorySettings()
    configure_logging("memory", settings.log_level)
    if args.command == "migrate":
        asyncio.run(migrate(settings.database_url, settings.embedding_dimension))
        return
    configure_tracing("memory", settings.otlp_endpoint)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
