"""What the tests of the AWS adapters share (mesh.kms_aws, integrations.objects' S3 store): moto's server
on a loopback port, and an environment in which boto3's credential chain finds only dummy keys.

Imported explicitly by tests/service/test_kms_aws.py and test_object_store.py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.process import ManagedProcess, free_port, port_open


@contextlib.contextmanager
def running_moto(base: Path) -> Iterator[str]:
    """moto's server (every service it emulates: KMS, S3) on a free loopback port (its endpoint URL),
    stopped at the end whatever happens."""
    port = free_port()
    server = ManagedProcess(
        name="moto",
        argv=[sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)],
        log_path=base / "moto.log",
    )
    server.start()
    try:
        server.wait_ready(lambda: port_open(port), timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials in the environment, and nothing else boto3's chain could find: no profile or
    config file, no web identity, no container or instance metadata, no endpoint override (no request
    leaves loopback)."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KMS",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
