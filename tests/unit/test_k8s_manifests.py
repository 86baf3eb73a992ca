"""The Kubernetes manifests as rendered by kustomize: valid objects, and the deployment rules of SPEC §7.

Each overlay is rendered once with kubectl's kustomize and checked offline: every object against the
Kubernetes schemas, then the rules a reviewer would check by hand (probes, resources, security contexts,
drain times, autoscaling, disruption budgets, headless Services, network policies, secrets).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

# k8s/ is deployment tooling, not an installed package: import it from the checkout.
from k8s.manifests import ROOT, Manifest, all_schema_errors, overlay, schema_errors

NAMESPACE = "athena"


@dataclass(frozen=True)
class MeshService:
    name: str
    prefix: str
    grpc_port: int
    http_port: int
    health_names: frozenset[str]


SERVICES = {
    service.name: service
    for service in (
        MeshService(
            "router",
            "ROUTER_",
            50051,
            9101,
            frozenset({"athena.chat.v1.ChatService", "athena.account.v1.AccountService"}),
        ),
        MeshService(
            "orchestrator",
            "ORCHESTRATOR_",
            50052,
            9102,
            frozenset({"athena.orchestrator.v1.OrchestratorService"}),
        ),
        MeshService(
            "memory",
            "MEMORY_",
            50053,
            9103,
            frozenset(
                f"athena.memory.v1.{name}"
                for name in ("MemoryService", "ConversationService", "AgentService", "UserDataService")
            ),
        ),
        MeshService("auth", "AUTH_", 50054, 9104, frozenset({"athena.auth.v1.AuthService"})),
        MeshService(
            "integrations",
            "INTEGRATIONS_",
            50055,
            9105,
            frozenset(
                {"athena.connections.v1.ConnectionsService", "athena.integrations.v1.IntegrationsService"}
            ),
        ),
        # No gRPC service of its own: probes ask the server's overall health ("").
        MeshService("webhooks", "WEBHOOKS_", 50056, 9106, frozenset({""})),
    )
}
SCALED = (*SERVICES, "edge")
"""Deployments with a HorizontalPodAutoscaler."""


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest) -> list[Manifest]:
    return overlay(request.param)


@pytest.fixture(scope="module")
def dev() -> list[Manifest]:
    return overlay("dev")


@pytest.fixture(scope="module")
def prod() -> list[Manifest]:
    return overlay("prod")


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {item["metadata"]["name"]: item for item in manifests if item["kind"] == kind}


def workloads(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {**of_kind(manifests, "Deployment"), **of_kind(manifests, "StatefulSet")}


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Manifest, *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def main_container(workload: Manifest) -> dict[str, Any]:
    first: dict[str, Any] = pod_spec(workload)["containers"][0]
    return first


def environment(container: Mapping[str, Any], manifests: list[Manifest]) -> dict[str, str]:
    """What the container's environment holds from ConfigMaps and literal values (not from Secrets)."""
    config_maps = of_kind(manifests, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


def secret_variables(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Variables set from a Secret key: name → (secret, key)."""
    return {
        variable["name"]: (
            variable["valueFrom"]["secretKeyRef"]["name"],
            variable["valueFrom"]["secretKeyRef"]["key"],
        )
        for variable in container.get("env", [])
        if "secretKeyRef" in variable.get("valueFrom", {})
    }


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels selectors are modelled"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


# --- every object is valid


def test_every_object_is_valid_for_kubernetes_1_33(rendered: list[Manifest]) -> None:
    assert all_schema_errors(rendered) == []
    assert {item.get("metadata", {}).get("namespace", NAMESPACE) for item in rendered} == {NAMESPACE}


def test_the_schema_check_rejects_a_misspelled_field(rendered: list[Manifest]) -> None:
    deployment = copy.deepcopy(of_kind(rendered, "Deployment")["router"])
    container = main_container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    assert schema_errors(deployment)


# --- per service: probes, resources, security, drain


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_services_have_native_grpc_probes_on_their_port_and_health_name(
    rendered: list[Manifest], name: str
) -> None:
    service = SERVICES[name]
    container = main_container(of_kind(rendered, "Deployment")[name])
    ports = {port["containerPort"] for port in container["ports"]}
    assert {service.grpc_port, service.http_port} <= ports
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container[kind]
        assert set(probe) - {"grpc"} <= {
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "initialDelaySeconds",
        }
        assert probe["grpc"]["port"] == service.grpc_port, kind
        expected = {"liveness"} if kind == "livenessProbe" else service.health_names
        assert probe["grpc"]["service"] in expected, kind
    env = environment(container, rendered)
    assert env[f"{service.prefix}HOST"] == "0.0.0.0"
    assert int(env[f"{service.prefix}PORT"]) == service.grpc_port
    assert int(env[f"{service.prefix}HTTP_PORT"]) == service.http_port


def parse_quantity(text: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, text
    number, unit = match.groups()
    return float(number) * units.get(unit, 1.0) if unit else float(number)


def test_every_container_has_requests_and_limits(rendered: list[Manifest]) -> None:
    for name, workload in workloads(rendered).items():
        for container in containers(workload):
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = parse_quantity(resources["requests"][resource])
                limit = parse_quantity(resources["limits"][resource])
                assert 0 < request <= limit, (name, container["name"], resource)


def test_prod_gives_every_mesh_container_as_much_memory_as_it_may_use(prod: list[Manifest]) -> None:
    for name in SCALED:
        resources = main_container(of_kind(prod, "Deployment")[name])["resources"]
        assert resources["requests"]["memory"] == resources["limits"]["memory"], name


def test_every_container_runs_non_root_on_a_read_only_filesystem(rendered: list[Manifest]) -> None:
    for name, workload in workloads(rendered).items():
        pod = pod_spec(workload)
        pod_context = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, name
        for container in containers(workload):
            context = {**pod_context, **container.get("securityContext", {})}
            where = (name, container["name"])
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] != 0, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_the_mesh_runs_as_user_10001_with_a_writable_tmp(rendered: list[Manifest]) -> None:
    deployments = of_kind(rendered, "Deployment")
    for name in SCALED:
        pod = pod_spec(deployments[name])
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in containers(deployments[name]):
            assert container["securityContext"]["runAsUser"] == 10001, (name, container["name"])
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], (name, container["name"])


def test_termination_grace_exceeds_the_drain_time(rendered: list[Manifest]) -> None:
    deployments = of_kind(rendered, "Deployment")
    drains = {}
    for name, service in SERVICES.items():
        deployment = deployments[name]
        drain = float(environment(main_container(deployment), rendered)[f"{service.prefix}DRAIN_SECONDS"])
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace >= drain + 5, name
        drains[name] = drain
    # Answers stream for up to a minute, through the router: both wait for them.
    assert drains["orchestrator"] >= 60
    assert drains["router"] >= drains["orchestrator"]


def test_rollouts_keep_full_capacity_and_spread_pods(rendered: list[Manifest]) -> None:
    for name in SCALED:
        deployment = of_kind(rendered, "Deployment")[name]
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0, name
        assert rolling["maxSurge"] >= 1, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        spread = pod_spec(deployment)["topologySpreadConstraints"]
        assert {item["topologyKey"] for item in spread} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        assert all(selects(item["labelSelector"], labels) for item in spread), name


def test_config_comes_from_config_maps_and_secrets_from_secrets(rendered: list[Manifest]) -> None:
    assert not of_kind(rendered, "Secret"), "secrets are created with kubectl, never rendered"
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|DATABASE_URL|REDIS_URL")
    for name, config_map in of_kind(rendered, "ConfigMap").items():
        for key in config_map.get("data", {}):
            if not key.endswith(".sh") and not key.endswith(".yaml"):
                assert not secretish.search(key), (name, key)
    for name, workload in workloads(rendered).items():
        for container in containers(workload):
            for variable in container.get("env", []):
                if secretish.search(variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), (name, variable["name"])
            if name in SERVICES:
                config_maps = [
                    source["configMapRef"]["name"]
                    for source in container["envFrom"]
                    if "configMapRef" in source
                ]
                assert [config_map.rsplit("-", 1)[0] for config_map in config_maps] == [
                    "athena-shared",
                    f"{name}-config",
                ]


def known_variables(settings: type[BaseModel], prefix: str) -> set[str]:
    """The environment variables `settings` reads: its fields' names (or aliases), and for a nested model
    (`INTEGRATIONS_GOOGLE__CLIENT_ID`) its own fields after the `__`, whose misspellings pydantic ignores
    too."""
    names: set[str] = set()
    for field_name, info in settings.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None)
        if choices:
            names.update(str(choice) for choice in choices)
            continue
        name = f"{prefix}{field_name.upper()}"
        names.add(name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names.update(known_variables(info.annotation, f"{name}__"))
    return names


def test_config_maps_name_only_settings_the_services_know(rendered: list[Manifest]) -> None:
    """A misspelt variable (ROUTER_DRAIN_SECOND, INTEGRATIONS_GOOGLE__REDIRECT_URI) would be ignored silently
    by the settings classes."""
    from auth.settings import AuthSettings
    from integrations.settings import IntegrationsSettings
    from memory.settings import MemorySettings
    from orchestrator.settings import OrchestratorSettings
    from router.settings import RouterSettings
    from webhooks.settings import WebhooksSettings

    classes: dict[str, type[BaseModel]] = {
        "router": RouterSettings,
        "orchestrator": OrchestratorSettings,
        "memory": MemorySettings,
        "auth": AuthSettings,
        "integrations": IntegrationsSettings,
        "webhooks": WebhooksSettings,
    }
    assert set(classes) == set(SERVICES)
    known = {
        service: known_variables(settings, SERVICES[service].prefix) for service, settings in classes.items()
    }
    assert "INTEGRATIONS_MICROSOFT__REDIRECT_URIS" in known["integrations"]
    assert "INTEGRATIONS_MICROSOFT__REDIRECT_URI" not in known["integrations"]
    everyone = set().union(*known.values()) | {"PYTHONUNBUFFERED", "GRPC_EXPERIMENTS"}
    deployments = of_kind(rendered, "Deployment")
    for service in SERVICES:
        container = main_container(deployments[service])
        for source in container["envFrom"]:
            if "configMapRef" not in source:
                continue
            data = of_kind(rendered, "ConfigMap")[source["configMapRef"]["name"]]["data"]
            shared = source["configMapRef"]["name"].startswith("athena-shared")
            for key in data:
                assert key in (everyone if shared else known[service]), (service, key)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_accepts_its_rendered_environment(
    rendered: list[Manifest], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import os

    module = importlib.import_module(f"{name}.settings")
    settings_class = getattr(module, f"{name.capitalize()}Settings")
    container = main_container(of_kind(rendered, "Deployment")[name])
    for key in list(os.environ):
        if key.startswith(
            ("ATHENA_", "ROUTER_", "ORCHESTRATOR_", "MEMORY_", "AUTH_", "INTEGRATIONS_", "OPENAI_", "OTEL_")
        ) or key in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(key)
    for key, value in environment(container, rendered).items():
        monkeypatch.setenv(key, value)
    for variable in secret_variables(container):
        monkeypatch.setenv(variable, "postgresql://athena:secret@postgres:5432/athena")
    settings = settings_class()
    service = SERVICES[name]
    assert (settings.host, settings.port, settings.http_port) == (
        "0.0.0.0",
        service.grpc_port,
        service.http_port,
    )
    assert (
        settings.drain_seconds + 5
        <= pod_spec(of_kind(rendered, "Deployment")[name])["terminationGracePeriodSeconds"]
    )
    assert settings.jwks_url == f"http://auth.{NAMESPACE}.svc.cluster.local:9104/.well-known/jwks.json"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_follows_the_one_revocation_list(rendered: list[Manifest], name: str) -> None:
    """Auth writes revoked access tokens to Redis and every service follows that list (`REDIS_URL`, or the
    service's own Redis variable where it has one): all read it from the same Secret key."""
    import importlib

    settings_class = getattr(importlib.import_module(f"{name}.settings"), f"{name.capitalize()}Settings")
    choices = {str(choice) for choice in settings_class.model_fields["redis_url"].validation_alias.choices}
    variables = secret_variables(main_container(of_kind(rendered, "Deployment")[name]))
    read = {variable: variables[variable] for variable in choices & set(variables)}
    assert read, f"{name} reads none of {sorted(choices)}"
    assert set(read.values()) == {("memory-datastores", "redis-url")}, name


def test_every_service_runs_grpc_as_the_mesh_does(rendered: list[Manifest]) -> None:
    from mesh.server import GRPC_EXPERIMENTS

    deployments = of_kind(rendered, "Deployment")
    for service in SERVICES:
        env = environment(main_container(deployments[service]), rendered)
        assert env.get("GRPC_EXPERIMENTS") == GRPC_EXPERIMENTS, service


def test_connected_accounts_come_back_to_the_public_origin(
    rendered: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each overlay's integrations accept exactly `<public origin>/connections` from both providers, the
    origin being the one auth's sign-in uses (AUTH_PUBLIC_ORIGIN), once their clients (the optional Secret
    integrations-oauth) are set."""
    import json
    import os

    from integrations.providers import Provider
    from integrations.settings import IntegrationsSettings

    deployments = of_kind(rendered, "Deployment")
    origin = environment(main_container(deployments["auth"]), rendered)["AUTH_PUBLIC_ORIGIN"]
    container = main_container(deployments["integrations"])
    assert {"secretRef": {"name": "integrations-oauth", "optional": True}} in container["envFrom"]
    env = environment(container, rendered)
    expected = f"{origin}/connections"
    for provider in ("GOOGLE", "MICROSOFT"):
        assert json.loads(env[f"INTEGRATIONS_{provider}__REDIRECT_URIS"]) == [expected], provider
    for key in list(os.environ):
        if key.startswith(("ATHENA_", "INTEGRATIONS_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for provider in ("GOOGLE", "MICROSOFT"):
        monkeypatch.setenv(f"INTEGRATIONS_{provider}__CLIENT_ID", f"{provider.lower()}-client")
        monkeypatch.setenv(f"INTEGRATIONS_{provider}__CLIENT_SECRET", "secret")
    offered = IntegrationsSettings().providers()
    assert set(offered) == {Provider.GOOGLE, Provider.MICROSOFT}
    for client in offered.values():
        assert client.redirect_uris == frozenset({expected})


# --- scaling and disruption


def test_every_scaled_deployment_has_a_cpu_autoscaler(rendered: list[Manifest]) -> None:
    autoscalers = of_kind(rendered, "HorizontalPodAutoscaler")
    targets = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in autoscalers.values()}
    assert set(targets) == set(SCALED)
    for name, hpa in targets.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["type"] == "Utilization"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        deployment = of_kind(rendered, "Deployment")[name]
        assert all("cpu" in container["resources"]["requests"] for container in containers(deployment))


def test_the_orchestrator_scales_up_at_once_and_down_slowly(rendered: list[Manifest]) -> None:
    behavior = of_kind(rendered, "HorizontalPodAutoscaler")["orchestrator"]["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert all(
        policy["type"] == "Pods" and policy["value"] == 1 for policy in behavior["scaleDown"]["policies"]
    )


def test_prod_runs_at_least_three_replicas_of_the_request_path(prod: list[Manifest]) -> None:
    for hpa in of_kind(prod, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["minReplicas"] >= 3


def test_every_deployment_has_a_disruption_budget(rendered: list[Manifest]) -> None:
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for name, deployment in of_kind(rendered, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [pdb for pdb in budgets.values() if selects(pdb["spec"]["selector"], labels)]
        assert len(matching) == 1, name
        assert matching[0]["spec"].get("maxUnavailable") == 1, name


# --- Services and client-side balancing


def test_peers_are_headless_services_resolved_by_full_name(rendered: list[Manifest]) -> None:
    services = of_kind(rendered, "Service")
    for name, mesh in SERVICES.items():
        service = services[name]
        assert service["spec"]["clusterIP"] == "None", f"{name}: clients balance over pod addresses"
        assert {port["port"] for port in service["spec"]["ports"]} == {mesh.grpc_port, mesh.http_port}
        deployment = of_kind(rendered, "Deployment")[name]
        assert selects(
            {"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"]
        )
    deployments = of_kind(rendered, "Deployment")
    router = environment(main_container(deployments["router"]), rendered)
    orchestrator = environment(main_container(deployments["orchestrator"]), rendered)
    suffix = f"{NAMESPACE}.svc.cluster.local"
    assert router["ROUTER_MEMORY_TARGET"] == f"dns:///memory.{suffix}:50053"
    assert router["ROUTER_AUTH_TARGET"] == f"dns:///auth.{suffix}:50054"
    assert router["ROUTER_INTEGRATIONS_TARGET"] == f"dns:///integrations.{suffix}:50055"
    assert orchestrator["ORCHESTRATOR_MEMORY_TARGET"] == f"dns:///memory.{suffix}:50053"
    assert orchestrator["ORCHESTRATOR_INTEGRATIONS_TARGET"] == f"dns:///integrations.{suffix}:50055"


def test_the_edge_is_exposed_by_a_load_balancer_in_prod_only(
    dev: list[Manifest], prod: list[Manifest]
) -> None:
    assert of_kind(dev, "Service")["edge"]["spec"]["type"] == "ClusterIP"
    assert of_kind(prod, "Service")["edge"]["spec"]["type"] == "LoadBalancer"


# --- migrations and keys


@pytest.mark.parametrize(
    ("name", "database_variable"),
    [
        ("memory", "MEMORY_DATABASE_URL"),
        ("auth", "AUTH_DATABASE_URL"),
        ("integrations", "INTEGRATIONS_DATABASE_URL"),
    ],
)
def test_migrations_run_before_the_server_starts(
    rendered: list[Manifest], name: str, database_variable: str
) -> None:
    deployment = of_kind(rendered, "Deployment")[name]
    (migrate,) = pod_spec(deployment)["initContainers"]
    server = main_container(deployment)
    assert migrate["args"] == [name, "migrate"]
    assert migrate["image"] == server["image"]
    assert secret_variables(migrate)[database_variable] == secret_variables(server)[database_variable]
    assert migrate["envFrom"] == [source for source in server["envFrom"] if "configMapRef" in source]


def test_auth_reads_its_signing_keys_from_a_read_only_secret(rendered: list[Manifest]) -> None:
    deployment = of_kind(rendered, "Deployment")["auth"]
    container = main_container(deployment)
    keys_dir = environment(container, rendered)["AUTH_KEYS_DIR"]
    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == keys_dir]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "auth-signing-keys"
    assert volumes[mount["name"]]["secret"]["defaultMode"] == 0o440


def test_memory_reads_the_vapid_key_from_a_read_only_secret(rendered: list[Manifest]) -> None:
    """Every memory replica signs Web Push with the one key browsers subscribed with: the Secret
    memory-vapid-key, never a key made in a pod (a dev start would make one under its own data dir)."""
    deployment = of_kind(rendered, "Deployment")["memory"]
    container = main_container(deployment)
    env = environment(container, rendered)
    key_file = PurePosixPath(env["MEMORY_VAPID_KEY_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert mount["readOnly"] is True
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "memory-vapid-key"
    assert secret["defaultMode"] == 0o440
    assert env["MEMORY_VAPID_SUBJECT"].startswith(("mailto:", "https://"))


@pytest.mark.parametrize("name", ["memory", "auth", "integrations"])
def test_sealing_services_read_the_kms_keys_from_a_read_only_secret(
    rendered: list[Manifest], name: str
) -> None:
    """Memory, auth and integrations wrap data keys with the local KMS's keys, the same in every replica:
    the Secret athena-kms-keys, never a key made in a pod. Their migrations get the keys exactly when they
    use them (memory's and auth's encrypt existing rows: `apply_migrations` takes the KMS; integrations'
    only shape the schema)."""
    import importlib
    import inspect

    deployment = of_kind(rendered, "Deployment")[name]
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    (migrate,) = pod_spec(deployment)["initContainers"]
    migrations_seal = (
        "kms" in inspect.signature(importlib.import_module(f"{name}.migrate").apply_migrations).parameters
    )
    assert migrations_seal == (name != "integrations")
    for container in (migrate, main_container(deployment)):
        env = environment(container, rendered)
        assert env["ATHENA_KMS"] == "local"
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == env["ATHENA_KMS_KEYS_DIR"]]
        if container is migrate and not migrations_seal:
            assert mounts == [], f"{name}: its migrations need no keys"
            continue
        (mount,) = mounts
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == "athena-kms-keys"
        assert volumes[mount["name"]]["secret"]["defaultMode"] == 0o440


def referenced_secrets(manifests: list[Manifest]) -> dict[str, bool]:
    """Every Secret the pods use → whether it is required (not `optional`)."""
    found: dict[str, bool] = {}

    def note(name: str, optional: bool | None) -> None:
        found[name] = found.get(name, False) or not optional

    for workload in workloads(manifests).values():
        for container in containers(workload):
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    note(reference["name"], reference.get("optional"))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    note(source["secretRef"]["name"], source["secretRef"].get("optional"))
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                note(volume["secret"]["secretName"], volume["secret"].get("optional"))
    return found


def test_dev_secrets_are_all_created_by_the_script(dev: list[Manifest]) -> None:
    script = (ROOT / "overlays" / "dev" / "create-secrets.sh").read_text()
    created = set(re.findall(r"^\s*create ([a-z0-9-]+)", script, flags=re.MULTILINE))
    required = {name for name, needed in referenced_secrets(dev).items() if needed}
    assert required <= created
    assert set(referenced_secrets(dev)) >= created


def test_dev_databases_are_the_in_cluster_postgres(dev: list[Manifest]) -> None:
    """Every `database-url` the dev pods read is created from the in-cluster PostgreSQL's URL."""
    script = (ROOT / "overlays" / "dev" / "create-secrets.sh").read_text().replace("\\\n", " ")
    database_secrets = {
        secret
        for workload in workloads(dev).values()
        for container in containers(workload)
        for secret, key in secret_variables(container).values()
        if key == "database-url"
    }
    assert database_secrets == {"memory-datastores", "auth-database", "integrations-database"}
    for secret in database_secrets:
        (command,) = re.findall(rf"^\s*create {secret} .*$", script, flags=re.MULTILINE)
        assert '--from-literal=database-url="$database_url"' in command, secret
    assert re.search(r'^database_url="postgresql://athena:[^"]*@postgres\.', script, flags=re.MULTILINE)


def test_dev_valkey_keeps_the_event_bus_across_a_restart(dev: list[Manifest]) -> None:
    """The event bus's streams and consumer groups survive a restart of the dev cluster's Valkey: an
    append-only file fsynced every second, in a directory on a persistent volume claim, and no eviction of
    keys without a TTL (the streams have none) when memory runs short."""
    valkey = workloads(dev)["valkey"]
    assert valkey["kind"] == "StatefulSet"
    (container,) = containers(valkey)
    arguments = container["args"]
    options = dict(zip(arguments[::2], arguments[1::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in {"everysec", "always"}
    assert options["--maxmemory-policy"] in {"noeviction", "volatile-ttl", "volatile-lru", "volatile-lfu"}
    mounts = {mount["mountPath"].rstrip("/"): mount["name"] for mount in container["volumeMounts"]}
    data_volume = mounts[options["--dir"].rstrip("/")]
    claims = {claim["metadata"]["name"] for claim in valkey["spec"].get("volumeClaimTemplates", [])}
    assert data_volume in claims
    assert data_volume not in {volume["name"] for volume in pod_spec(valkey).get("volumes", [])}


def test_every_secret_is_documented(rendered: list[Manifest]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Secrets", 1)[1].split("\n## ", 1)[0]
    for name in referenced_secrets(rendered):
        assert f"`{name}`" in section, name


# --- network policies


@dataclass(frozen=True)
class Endpoint:
    """Something that sends or receives traffic: a pod (with labels) in a namespace, or an address."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


OUTSIDERS = (
    Endpoint("kube-dns", "10.96.0.10", "kube-system", {"k8s-app": "kube-dns"}),
    Endpoint("prometheus", "10.244.9.9", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
    Endpoint("other-namespace", "10.244.8.8", "default", {"app.kubernetes.io/name": "router"}),
    Endpoint("internet", "203.0.113.10"),
    Endpoint("cloud-metadata", "169.254.169.254"),
    Endpoint("managed-datastore", "10.100.0.5"),
)


def endpoints(manifests: list[Manifest]) -> list[Endpoint]:
    pods = [
        Endpoint(name, f"10.244.0.{index + 1}", NAMESPACE, workload["spec"]["template"]["metadata"]["labels"])
        for index, (name, workload) in enumerate(sorted(workloads(manifests).items()))
    ]
    return [*pods, *OUTSIDERS]


def peer_matches(peer: Mapping[str, Any], other: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": other.namespace or ""}
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif other.namespace != NAMESPACE:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def admits(
    policies: list[Manifest], pod: Endpoint, direction: str, other: Endpoint, port: int, protocol: str
) -> bool:
    """Whether the policies of `pod` let traffic to/from `other` on `port` through in `direction`."""
    if not pod.is_pod or pod.namespace != NAMESPACE:
        return True  # not governed by these policies
    policy_type = "Ingress" if direction == "ingress" else "Egress"
    peers_key = "from" if direction == "ingress" else "to"
    applying = [
        policy
        for policy in policies
        if selects(policy["spec"]["podSelector"], pod.labels) and policy_type in policy["spec"]["policyTypes"]
    ]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get(direction) or []:
            peers = rule.get(peers_key)
            ports = rule.get("ports")
            peer_ok = not peers or any(peer_matches(peer, other) for peer in peers)
            port_ok = not ports or any(
                item.get("port") == port and item.get("protocol", "TCP") == protocol for item in ports
            )
            if peer_ok and port_ok:
                return True
    return False


PROBED_PORTS = [
    *(
        (port, "TCP")
        for port in (443, 4317, 5432, 6379, 8080, 8090, 9902, 13133, 50051, 50052, 50053, 50054, 50055, 50056)
    ),
    *((port, "TCP") for port in (9101, 9102, 9103, 9104, 9105, 9106)),
    (53, "UDP"),
    (53, "TCP"),
]


def allowed_flows(manifests: list[Manifest]) -> set[tuple[str, str, int, str]]:
    """Every (source, destination, port, protocol) the policies allow where one side is in the namespace."""
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    everything = endpoints(manifests)
    flows = set()
    for source in everything:
        for destination in everything:
            if source == destination or NAMESPACE not in (source.namespace, destination.namespace):
                continue
            for port, protocol in PROBED_PORTS:
                if admits(policies, source, "egress", destination, port, protocol) and admits(
                    policies, destination, "ingress", source, port, protocol
                ):
                    flows.add((source.name, destination.name, port, protocol))
    return flows


CALL_GRAPH = {
    ("edge", "router", 50051),
    ("edge", "orchestrator", 50052),
    ("edge", "auth", 50054),
    ("edge", "auth", 9104),
    ("edge", "integrations", 50055),
    # provider notifications under /webhooks/, plain HTTP to the webhooks service, which calls only Redis
    ("edge", "webhooks", 9106),
    ("edge", "memory", 50053),
    ("router", "memory", 50053),
    ("router", "auth", 50054),
    ("router", "auth", 9104),
    ("router", "integrations", 50055),
    ("orchestrator", "integrations", 50055),
    ("orchestrator", "memory", 50053),
    ("orchestrator", "auth", 9104),
    ("memory", "auth", 9104),
    ("integrations", "auth", 9104),
    # the proactive agents' notifications (NotifierService)
    ("integrations", "memory", 50053),
    # the model API (chat, embeddings), the identity providers and the connected accounts' providers:
    # public addresses on 443
    ("orchestrator", "internet", 443),
    ("memory", "internet", 443),
    ("auth", "internet", 443),
    ("integrations", "internet", 443),
    # the public listener, from anywhere
    *((outsider.name, "edge", 8080) for outsider in OUTSIDERS),
    # Prometheus scrapes the metrics ports
    *(
        ("prometheus", name, port)
        for name, port in (("router", 9101), ("orchestrator", 9102), ("memory", 9103))
    ),
    ("prometheus", "auth", 9104),
    ("prometheus", "integrations", 9105),
    ("prometheus", "webhooks", 9106),
    ("prometheus", "edge", 9902),
    # spans, over OTLP/gRPC, from every service and the edge to the collector (which exports nowhere yet)
    *((name, "otel-collector", 4317) for name in (*SERVICES, "edge")),
}
OVERLAY_GRAPH = {
    "dev": {
        ("memory", "postgres", 5432),
        ("auth", "postgres", 5432),
        ("memory", "valkey", 6379),
        ("orchestrator", "valkey", 6379),
        ("router", "valkey", 6379),
        ("auth", "valkey", 6379),
        ("integrations", "postgres", 5432),
        ("integrations", "valkey", 6379),
        ("webhooks", "valkey", 6379),
        ("orchestrator", "offline-model", 8090),
        ("memory", "offline-model", 8090),
    },
    "prod": {
        ("memory", "managed-datastore", 5432),
        ("memory", "managed-datastore", 6379),
        ("orchestrator", "managed-datastore", 6379),
        ("router", "managed-datastore", 6379),
        ("auth", "managed-datastore", 5432),
        ("auth", "managed-datastore", 6379),
        ("integrations", "managed-datastore", 5432),
        ("integrations", "managed-datastore", 6379),
        ("webhooks", "managed-datastore", 6379),
    },
}


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_network_policies_allow_exactly_the_call_graph(
    name: str, dev: list[Manifest], prod: list[Manifest]
) -> None:
    manifests = dev if name == "dev" else prod
    pods = [endpoint.name for endpoint in endpoints(manifests) if endpoint.namespace == NAMESPACE]
    dns = {(pod, "kube-dns", 53, protocol) for pod in pods for protocol in ("UDP", "TCP")}
    expected = {(*edge, "TCP") for edge in CALL_GRAPH | OVERLAY_GRAPH[name]} | dns
    flows = allowed_flows(manifests)
    assert flows - expected == set(), "allowed beyond the call graph"
    assert expected - flows == set(), "call graph edges not allowed"


def test_the_namespace_denies_everything_by_default(rendered: list[Manifest]) -> None:
    policies = of_kind(rendered, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name in (*SCALED,):
        policy = policies[name]["spec"]
        assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": name}}
        assert policy["policyTypes"] == ["Ingress", "Egress"]


def test_only_the_edge_reaches_the_orchestrator_and_only_callers_reach_memory_and_integrations(
    rendered: list[Manifest],
) -> None:
    flows = allowed_flows(rendered)
    assert {
        source for source, destination, port, _ in flows if destination == "integrations" and port != 9105
    } == {"edge", "router", "orchestrator"}
    assert {
        source for source, destination, port, _ in flows if destination == "orchestrator" and port != 9102
    } == {"edge"}
    assert {
        source for source, destination, port, _ in flows if destination == "memory" and port == 50053
    } == {
        "edge",
        "router",
        "orchestrator",
        "integrations",  # the proactive agents' notifications
    }
    assert not [flow for flow in flows if flow[1] == "cloud-metadata"]


def test_only_the_edge_reaches_the_webhooks_and_they_reach_only_redis(rendered: list[Manifest]) -> None:
    flows = allowed_flows(rendered)
    assert {source for source, destination, _, _ in flows if destination == "webhooks"} == {
        "edge",
        "prometheus",
    }
    assert {destination for source, destination, _, _ in flows if source == "webhooks"} <= {
        "valkey",
        "managed-datastore",
        "kube-dns",
        "otel-collector",
    }


def rule_ports(policy: Manifest) -> Iterator[int]:
    for direction in ("ingress", "egress"):
        for rule in policy["spec"].get(direction) or []:
            for item in rule.get("ports", []):
                yield item["port"]


def test_policies_name_numeric_ports(rendered: list[Manifest]) -> None:
    for policy in of_kind(rendered, "NetworkPolicy").values():
        assert all(isinstance(port, int) for port in rule_ports(policy)), policy["metadata"]["name"]


# --- integrations: connected accounts' clients, uploads, egress (issue 15)


def test_connection_redirects_are_https_in_prod_and_loopback_http_in_dev(
    dev: list[Manifest], prod: list[Manifest]
) -> None:
    import json

    for manifests, scheme_and_host in ((prod, "https://athena.example.com"), (dev, "http://localhost:8080")):
        env = environment(main_container(of_kind(manifests, "Deployment")["integrations"]), manifests)
        for provider in ("GOOGLE", "MICROSOFT"):
            assert json.loads(env[f"INTEGRATIONS_{provider}__REDIRECT_URIS"]) == [
                f"{scheme_and_host}/connections"
            ]
        assert not any(key.endswith(("__CLIENT_ID", "__CLIENT_SECRET")) for key in env), (
            "OAuth clients come from the Secret integrations-oauth"
        )


def integrations_objects(manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The object store the integrations service makes from its rendered environment."""
    import os

    from integrations.objects import from_settings
    from integrations.settings import IntegrationsSettings

    for key in list(os.environ):
        if key.startswith(("ATHENA_", "INTEGRATIONS_", "AWS_")):
            monkeypatch.delenv(key)
    for key, value in environment(
        main_container(of_kind(manifests, "Deployment")["integrations"]), manifests
    ).items():
        monkeypatch.setenv(key, value)
    return from_settings(IntegrationsSettings().objects)


def test_dev_keeps_uploads_on_a_volume_of_their_own(
    dev: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    from integrations.objects import LocalObjectStore

    store = integrations_objects(dev, monkeypatch)
    assert isinstance(store, LocalObjectStore)
    root = re.fullmatch(r"LocalObjectStore\(root='(.+)'\)", repr(store))
    assert root is not None
    deployment = of_kind(dev, "Deployment")["integrations"]
    mounts = {mount["mountPath"]: mount for mount in main_container(deployment)["volumeMounts"]}
    mount = mounts[root.group(1)]
    assert not mount.get("readOnly")
    assert "subPath" not in mount
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert of_kind(dev, "PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One node mounts a ReadWriteOnce volume: one replica, and a rollout's surge pod on the same node.
    autoscaler = of_kind(dev, "HorizontalPodAutoscaler")["integrations"]
    assert autoscaler["spec"]["maxReplicas"] == 1
    (term,) = pod_spec(deployment)["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])


def test_prod_keeps_uploads_in_s3_with_the_service_accounts_role(
    prod: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    from integrations.objects import S3ObjectStore

    store = integrations_objects(prod, monkeypatch)
    assert isinstance(store, S3ObjectStore)
    assert repr(store) == (
        "S3ObjectStore(bucket='athena-uploads', prefix='', endpoint_url=None, region='eu-west-1')"
    )
    account = of_kind(prod, "ServiceAccount")["integrations"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/athena-integrations", role)
    deployment = of_kind(prod, "Deployment")["integrations"]
    assert pod_spec(deployment)["serviceAccountName"] == "integrations"
    for container in containers(deployment):
        names = {*environment(container, prod), *secret_variables(container)}
        assert not {name for name in names if name.startswith("AWS_") and "KEY" in name}, (
            "AWS credentials come from the role (IRSA), never from keys"
        )


@pytest.mark.parametrize(
    ("address", "reachable"),
    [
        ("203.0.113.10", True),
        ("142.250.180.10", True),
        ("2001:4860:4802:32::a", True),
        ("10.1.2.3", False),
        ("172.16.5.4", False),
        ("172.31.255.254", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fd00:ec2::254", False),
        ("fe80::1", False),
    ],
)
def test_integrations_opens_443_to_public_addresses_only(
    rendered: list[Manifest], address: str, reachable: bool
) -> None:
    policies = list(of_kind(rendered, "NetworkPolicy").values())
    labels = of_kind(rendered, "Deployment")["integrations"]["spec"]["template"]["metadata"]["labels"]
    integrations = Endpoint("integrations", "10.244.0.1", NAMESPACE, labels)
    outside = Endpoint("outside", address)
    assert admits(policies, integrations, "egress", outside, 443, "TCP") is reachable
    for port in (80, 22, 8443, 5432):
        assert not admits(policies, integrations, "egress", Endpoint("public", "203.0.113.10"), port, "TCP")


FQDN_COMPONENT = ROOT / "components" / "integrations-fqdn-egress"


@pytest.fixture(scope="module")
def prod_with_fqdn_egress(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The prod overlay with the optional component, as an operator enables it in their overlay."""
    import os

    from k8s.manifests import build

    directory = tmp_path_factory.mktemp("prod-fqdn")
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{os.path.relpath(ROOT / 'overlays' / 'prod', directory)}]\n"
        f"components: [{os.path.relpath(FQDN_COMPONENT, directory)}]\n"
    )
    return build(directory)


def test_the_fqdn_component_holds_integrations_to_the_providers_and_the_bucket(
    prod: list[Manifest], prod_with_fqdn_egress: list[Manifest]
) -> None:
    from urllib.parse import urlsplit

    from integrations.settings import GoogleSettings, MicrosoftSettings

    manifests = prod_with_fqdn_egress
    assert all_schema_errors(item for item in manifests if item["kind"] != "CiliumNetworkPolicy") == []
    (policy,) = of_kind(manifests, "CiliumNetworkPolicy").values()
    assert policy["apiVersion"] == "cilium.io/v2"
    labels = of_kind(manifests, "Deployment")["integrations"]["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["endpointSelector"], labels)
    dns, web = policy["spec"]["egress"]
    assert dns["toPorts"][0]["rules"]["dns"] == [{"matchPattern": "*"}]
    assert web["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}]}]
    named = {item["matchName"] for item in web["toFQDNs"]}

    env = environment(main_container(of_kind(prod, "Deployment")["integrations"]), prod)
    bucket, region = env["INTEGRATIONS_OBJECTS__BUCKET"], env["INTEGRATIONS_OBJECTS__REGION"]
    provider_urls = [
        value
        for settings in (GoogleSettings(), MicrosoftSettings())
        for name, value in settings.model_dump().items()
        if name.endswith("_url")
    ]
    assert named == {
        *(str(urlsplit(url).hostname) for url in provider_urls),
        "health.googleapis.com",
        f"{bucket}.s3.{region}.amazonaws.com",
        f"s3.{region}.amazonaws.com",
        f"sts.{region}.amazonaws.com",
    }
    # The NetworkPolicy no longer opens 443 to every public address (Cilium allows the union of policies);
    # everything else stays as in prod.
    without = allowed_flows(prod) - {("integrations", "internet", 443, "TCP")}
    assert allowed_flows(manifests) == without
    readme = (ROOT / "README.md").read_text().split("## Network policies", 1)[1].split("\n## ", 1)[0]
    assert "components/integrations-fqdn-egress" in readme


# --- observability: the collector, the Prometheus Operator component (issue 18)

OPERATOR_COMPONENT = ROOT / "components" / "prometheus-operator"


@pytest.fixture(scope="module")
def prod_with_prometheus_operator(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    import os

    from k8s.manifests import build

    directory = tmp_path_factory.mktemp("prod-with-prometheus-operator")
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"namespace: {NAMESPACE}\n"
        f"resources: [{os.path.relpath(ROOT / 'overlays' / 'prod', directory)}]\n"
        f"components: [{os.path.relpath(OPERATOR_COMPONENT, directory)}]\n"
    )
    return build(directory)


def test_every_service_and_the_edge_send_spans_to_the_collector(rendered: list[Manifest]) -> None:
    flows = allowed_flows(rendered)
    assert {source for source, destination, _, _ in flows if destination == "otel-collector"} == {
        *SERVICES,
        "edge",
    }
    assert not [flow for flow in flows if flow[0] == "otel-collector" and flow[1] != "kube-dns"]
    for service in SERVICES:
        env = environment(main_container(of_kind(rendered, "Deployment")[service]), rendered)
        assert (
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector.{NAMESPACE}.svc.cluster.local:4317"
        )
    collector = of_kind(rendered, "Service")["otel-collector"]["spec"]["ports"]
    assert [(port["port"], port["appProtocol"]) for port in collector] == [(4317, "grpc")]
    config = of_kind(rendered, "ConfigMap")
    (collector_config,) = [item for name, item in config.items() if name.startswith("otel-collector-config")]
    pipeline = yaml.safe_load(collector_config["data"]["collector.yaml"])["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]


def test_the_prometheus_rule_is_the_rule_file_rendered(prod_with_prometheus_operator: list[Manifest]) -> None:
    from k8s.render_rules import OUTPUT, RULES, rendered_text

    assert OUTPUT.read_text(encoding="utf-8") == rendered_text(), "stale: run `python -m k8s.render_rules`"
    manifests = prod_with_prometheus_operator
    (rule,) = of_kind(manifests, "PrometheusRule").values()
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    monitors = of_kind(manifests, "PodMonitor")
    deployments = of_kind(manifests, "Deployment")
    scraped: dict[str, set[tuple[int, str]]] = {}
    for monitor in monitors.values():
        for name, deployment in deployments.items():
            if not selects_expressions(monitor["spec"]["selector"], pod_labels(deployment)):
                continue
            ports = {port["name"]: port["containerPort"] for port in main_container(deployment)["ports"]}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                if endpoint["port"] in ports:
                    scraped.setdefault(name, set()).add((ports[endpoint["port"]], endpoint["path"]))
    services = {name: {(mesh.http_port, "/metrics")} for name, mesh in SERVICES.items()}
    assert scraped == {**services, "edge": {(9902, "/stats/prometheus")}}
    core = [item for item in manifests if item["apiVersion"] != "monitoring.coreos.com/v1"]
    assert all_schema_errors(core) == []


def test_the_render_rules_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    from k8s.render_rules import main

    stale = tmp_path / "prometheus-rules.yaml"
    stale.write_text("{}\n")
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0
    assert main(["--check", "--out", str(stale)]) == 0


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects_expressions(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """`selects`, with `In` expressions too (the PodMonitors use them)."""
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return selects({"matchLabels": selector.get("matchLabels", {})}, labels)
