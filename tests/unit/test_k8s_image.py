"""The container image: how the Dockerfile builds it, and that every command the manifests run starts.

No Docker engine is needed: the Dockerfile is read as text, and each command the pods run
(`python -m <args> --help`, the image's entry point being `python -m`) is started with this interpreter,
which has the same package installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# k8s/ is deployment tooling, not an installed package: import it from the checkout.
from k8s.manifests import overlay

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/athenaos/athenaos"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    lines: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    result: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_the_image_is_built_in_two_stages_and_runs_unprivileged() -> None:
    builder, runtime = stages()
    assert builder[0].endswith(" AS builder")
    installs = [line for line in builder if "pip install" in line]
    assert installs
    assert all(" install ." in line and "-e" not in line.split() for line in installs), "not editable"
    assert "COPY gen/python gen/python" in builder, "generated code is part of the package"
    assert runtime[0] == "FROM ${PYTHON_IMAGE}"
    assert "USER 10001:10001" in runtime
    assert not [line for line in runtime if "apt-get" in line or "pip " in line], "no build tools at run time"
    assert any(line.startswith("COPY --from=builder /opt/athena /opt/athena") for line in runtime)
    (entrypoint,) = [line for line in runtime if line.startswith("ENTRYPOINT")]
    (command,) = [line for line in runtime if line.startswith("CMD")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["python", "-m"]
    assert json.loads(command.removeprefix("CMD")) == ["router"]


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "tests", "edge", "k8s"} <= ignored


def commands_run_by_pods() -> set[tuple[str, ...]]:
    """The argument lists of every container of the image, in both overlays."""
    found: set[tuple[str, ...]] = set()
    for name in ("dev", "prod"):
        for item in overlay(name):
            if item["kind"] not in ("Deployment", "StatefulSet"):
                continue
            spec = item["spec"]["template"]["spec"]
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                if container["image"].startswith(IMAGE + ":"):
                    assert "command" not in container, "the image's entry point (python -m) stays"
                    found.add(tuple(container["args"]))
    return found


def test_the_pods_run_the_four_services_and_their_migrations() -> None:
    commands = commands_run_by_pods()
    assert {("router",), ("orchestrator",), ("memory",), ("auth",)} <= commands
    assert {("memory", "migrate"), ("auth", "migrate")} <= commands


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """`python -m <args> --help` for every command the pods run, all at once, outside the checkout (the
    image imports the installed package, not sources in its working directory)."""
    workdir = tmp_path_factory.mktemp("image-workdir")
    commands = sorted(commands_run_by_pods() | {("auth", "rotate-keys")})
    processes = {
        command: subprocess.Popen(
            [sys.executable, "-m", *command, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
        )
        for command in commands
    }
    results = {}
    for command, process in processes.items():
        stdout, stderr = process.communicate(timeout=60)
        results[command] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def test_every_command_the_pods_run_starts(
    started: dict[tuple[str, ...], subprocess.CompletedProcess[str]],
) -> None:
    for command, result in started.items():
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "usage" in result.stdout.lower(), command
