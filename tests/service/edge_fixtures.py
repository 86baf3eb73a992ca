"""A real Envoy running a configuration rendered by `edge.envoy_config`, for the edge's service tests.

Imported explicitly by tests/service/test_edge*.py (not a conftest, so other suites are unaffected).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from devstack.process import ManagedProcess, port_open
from edge.envoy_config import EdgeConfig, render

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


@contextlib.asynccontextmanager
async def running_envoy(
    config: EdgeConfig, base: Path, bootstrap: dict[str, Any] | None = None
) -> AsyncIterator[None]:
    """Envoy running `config` (or `bootstrap`, a rendering of it a test changed) until the block ends."""
    config_path = base / "envoy.json"
    config_path.write_text(json.dumps(bootstrap or render(config)))
    assert ENVOY is not None
    envoy = ManagedProcess(
        "envoy",
        [ENVOY, "-c", str(config_path), "--use-dynamic-base-id", "--log-level", "warn"],
        base / "envoy.log",
        stop_timeout=5.0,
    )
    envoy.start()
    try:
        await asyncio.to_thread(envoy.wait_ready, lambda: port_open(config.listen_port), 30.0)
        yield
    finally:
        await asyncio.to_thread(envoy.stop)


async def wait_for_jwks(admin_url: str) -> None:
    """jwt_authn fetches the JWKS in the background once the listener is up; wait for the first success."""
    stat = "http.edge.jwt_authn.jwks_fetch_success"
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            stats = (await client.get(f"{admin_url}/stats", params={"filter": f"^{stat}$"})).text
            if stats.strip() and stats.strip() != f"{stat}: 0":
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"Envoy never fetched the JWKS: {stats}")
