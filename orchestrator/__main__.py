"""`python -m orchestrator`: load the agent catalog, seed it into memory, then serve OrchestratorService."""

from __future__ import annotations

import argparse
import asyncio
import logging

from mesh.clients import channel, service_call
from mesh.errors import AthenaError
from mesh.server import MeshServer, run
from mesh.telemetry import configure_logging, configure_tracing
from mesh.tokens import RemoteJwks, TokenVerifier
from orchestrator.app import build_runner
from orchestrator.catalog import Catalog, CatalogSync
from orchestrator.memory_client import GrpcMemoryGateway
from orchestrator.service import service
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")


def _parser() -> argparse.ArgumentParser:
    lines = []
    for name, field in OrchestratorSettings.model_fields.items():
        env = f"ORCHESTRATOR_{name.upper()}"
        alias = getattr(field.validation_alias, "choices", None)
        if alias:
            env = " / ".join(str(choice) for choice in alias)
        lines.append(f"  {env}: {(field.description or '').splitlines()[0] if field.description else ''}")
    return argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="AthenaOS orchestrator: runs agent turns (prompt, memory recall, streaming model calls, "
        "tools, handoffs) for the router. Configured by environment variables.",
        epilog="environment:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


async def serve(settings: OrchestratorSettings) -> None:
    catalog = Catalog.load(settings.catalog_path)
    memory_channel = channel(settings.memory_target)
    memory = GrpcMemoryGateway(memory_channel, timeout=settings.memory_timeout_seconds)
    runner = build_runner(settings, memory, catalog=catalog)
    server = MeshServer(
        "orchestrator",
        settings,
        [service(runner)],
        verifier=TokenVerifier(
            RemoteJwks(settings.jwks_url), issuer=settings.jwt_issuer, audience=settings.jwt_audience
        ),
    )

    async def sync_catalog() -> None:
        if settings.service_key is None:
            log.warning("ATHENA_SERVICE_KEY is unset: the agent catalog is not synced to memory")
            return
        metadata = service_call(settings.service_key.get_secret_value())["metadata"]
        try:
            await CatalogSync(memory, catalog, metadata=metadata).run()
        except AthenaError as exc:
            # Memory keeps the catalog of the last successful sync: serve with it rather than not at all.
            log.error(
                "memory refused the agent catalog; serving with the catalog it has",
                extra={"error": exc.message},
            )

    async def close() -> None:
        await runner.wait_background()
        await memory_channel.close(grace=None)

    await run(server, on_start=sync_catalog, on_stop=close)


def main() -> None:
    _parser().parse_args()
    settings = OrchestratorSettings()
    configure_logging("orchestrator", settings.log_level)
    configure_tracing("orchestrator", settings.otlp_endpoint)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
