"""Every process of the mesh runs gRPC the same way (`mesh.server.GRPC_EXPERIMENTS`): the services `make run`
starts, the tests and benchmarks the Makefile runs (the image and the manifests: test_k8s_*)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack.stack import Stack, StackConfig
from mesh.server import GRPC_EXPERIMENTS

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def test_the_makefile_exports_it_to_everything_it_runs() -> None:
    (value,) = re.findall(r"^export GRPC_EXPERIMENTS \?= (\S+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert value == GRPC_EXPERIMENTS


def test_the_dev_stack_starts_every_part_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    assert Stack(StackConfig(data_dir=tmp_path))._environment()["GRPC_EXPERIMENTS"] == GRPC_EXPERIMENTS
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")  # an operator's own choice wins (here: grpc's defaults)
    assert Stack(StackConfig(data_dir=tmp_path))._environment()["GRPC_EXPERIMENTS"] == ""
