"""`python -m auth` as operators run it: migrate, serve (healthy, JWKS over HTTP, DevLogin), SIGTERM drain;
in prod it refuses to start without its signing keys or the KMS's keys."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth.keys import rotate_keys
from devstack.postgres import EmbeddedPostgres
from devstack.process import free_port
from mesh.kms import LocalKeyFile

ROOT = Path(__file__).resolve().parents[2]


def _env(postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ATHENA_ENV": "dev",
        "ATHENA_DATA_DIR": str(tmp_path),
        "ATHENA_KMS_KEYS_DIR": str(kms_keys_dir),
        "DATABASE_URL": postgres.url,
        "AUTH_DRAIN_SECONDS": "1",
        **extra,
    }


def test_migrate_command(postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "auth", "migrate"],
        cwd=ROOT,
        env=_env(postgres, kms_keys_dir, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "migration" in result.stdout


@pytest.mark.parametrize(
    ("missing", "message", "remedy"),
    [
        ("signing keys", "no signing keys", "rotate-keys"),
        ("kms keys", "no key-encryption keys", "python -m mesh.kms rotate"),
    ],
)
def test_serve_refuses_to_start_in_prod_without_keys(
    postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path, missing: str, message: str, remedy: str
) -> None:
    extra = {"ATHENA_ENV": "prod", "AUTH_PORT": str(free_port()), "AUTH_HTTP_PORT": str(free_port())}
    if missing == "kms keys":
        signing_keys = tmp_path / "auth-keys"
        rotate_keys(
            signing_keys, now=datetime.now(UTC), activation_delay=timedelta(0), retention=timedelta(hours=1)
        )
        extra |= {"AUTH_KEYS_DIR": str(signing_keys), "ATHENA_KMS_KEYS_DIR": str(tmp_path / "kms-keys")}
    else:
        LocalKeyFile.load(kms_keys_dir, create_if_empty=True)  # the deployment's, as a dev start made it
    result = subprocess.run(
        [sys.executable, "-m", "auth"],
        cwd=ROOT,
        env=_env(postgres, kms_keys_dir, tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert remedy in result.stderr


async def test_serve_until_sigterm(postgres: EmbeddedPostgres, kms_keys_dir: Path, tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = _env(postgres, kms_keys_dir, tmp_path, AUTH_PORT=str(port), AUTH_HTTP_PORT=str(http_port))
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
