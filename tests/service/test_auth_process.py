"""`python -m auth` as operators run it: migrate, serve (healthy, JWKS over HTTP, DevLogin), SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.postgres import EmbeddedPostgres
from devstack.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env(postgres: EmbeddedPostgres, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ATHENA_ENV": "dev",
        "ATHENA_DATA_DIR": str(tmp_path),
        "DATABASE_URL": postgres.url,
        "AUTH_DRAIN_SECONDS": "1",
        **extra,
    }


def test_migrate_command(postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "auth", "migrate"],
        cwd=ROOT,
        env=_env(postgres, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "migration" in result.stdout


def test_serve_refuses_to_start_in_prod_without_keys(postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    env = _env(
        postgres, tmp_path, ATHENA_ENV="prod", AUTH_PORT=str(free_port()), AUTH_HTTP_PORT=str(free_port())
    )
    result = subprocess.run(
        [sys.executable, "-m", "auth"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no signing keys" in result.stderr
    assert "rotate-keys" in result.stderr


async def test_serve_until_sigterm(postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = _env(postgres, tmp_path, AUTH_PORT=str(port), AUTH_HTTP_PORT=str(http_port))
    log_path = tmp_path / "auth.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "auth", "serve", cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(150):
                try:
                    answer = await health.Check(
                        health_pb2.HealthCheckRequest(service="athena.auth.v1.AuthService"), timeout=1
                    )
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert process.returncode is None, log_path.read_text()
                await asyncio.sleep(0.1)
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            session = (await stub.DevLogin(auth_pb2.DevLoginRequest(email="process@example.com"))).session
            assert session.access_token
        async with httpx.AsyncClient() as client:
            jwks = (await client.get(f"http://127.0.0.1:{http_port}/.well-known/jwks.json")).json()
        assert len(jwks["keys"]) == 1
        assert list((tmp_path / "auth-keys").glob("*.pem"))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0, log_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
