"""The rendered Envoy configuration: what it routes, how it treats streams, and that Envoy accepts it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import walk

from edge.envoy_config import (
    ACCOUNT_SERVICE,
    AUTH_SERVICE,
    CHAT_SERVICE,
    CONNECTIONS_SERVICE,
    CONTENT_SECURITY_POLICY,
    EDGE_REFLECTION_HEADER,
    NOTIFICATIONS_SERVICE,
    OTEL_CLUSTER,
    SERVICE_WORKER_TRUSTED_TYPES_POLICY,
    UPLOADS_SERVICE,
    WEBHOOKS_PREFIX,
    EdgeConfig,
    built_web_files,
    main,
    render,
    trace_sampling_from,
)
from memory.settings import MemorySettings
from mesh.settings import ServiceSettings

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
GRPC_PATHS = {f"/{CHAT_SERVICE}/Chat": "orchestrator"}
GRPC_PREFIXES = {
    f"/{CHAT_SERVICE}/": "router",
    f"/{ACCOUNT_SERVICE}/": "router",
    f"/{AUTH_SERVICE}/": "auth",
    f"/{CONNECTIONS_SERVICE}/": "integrations",
    f"/{UPLOADS_SERVICE}/": "integrations",
    f"/{NOTIFICATIONS_SERVICE}/": "memory",
    "/grpc.health.v1.Health/": "router",
    "/grpc.reflection.v1alpha.ServerReflection/": "router",
    "/grpc.reflection.v1.ServerReflection/": "router",
}


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>AthenaOS</title>")
    (root / "assets" / "app-1a2b.js").write_text("export {};")
    (root / "assets" / "app-1a2b.css").write_text("body {}")
    (root / "favicon.svg").write_text("<svg/>")
    (root / ".DS_Store").write_text("junk")
    return root


@pytest.fixture(params=["local", "kubernetes"])
def bootstrap(request: pytest.FixtureRequest, web_root: Path) -> dict[str, Any]:
    config = EdgeConfig.for_target(request.param, namespace="athena")
    return render(dataclasses.replace(config, web_root=web_root))


def edge_manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = [item for item in bootstrap["static_resources"]["listeners"] if item["name"] == "edge"]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def jwt_authn(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The edge's jwt_authn filter configuration (providers and rules)."""
    (jwt,) = [
        f for f in edge_manager(bootstrap)["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn"
    ]
    config: dict[str, Any] = jwt["typed_config"]
    return config


def edge_routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = edge_manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def test_filters_run_grpc_web_then_cors_then_jwt_then_router(bootstrap: dict[str, Any]) -> None:
    names = [item["name"] for item in edge_manager(bootstrap)["http_filters"]]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]


INTERNAL_SERVICES = (
    "athena.memory.v1.MemoryService",
    "athena.memory.v1.ConversationService",
    "athena.memory.v1.AgentService",
    "athena.memory.v1.UserDataService",
    "athena.notifications.v1.NotifierService",
    "athena.orchestrator.v1.OrchestratorService",
    "athena.integrations.v1.IntegrationsService",
    "athena.identity.v1.IdentityService",
)


def test_no_internal_service_is_reached_but_the_orchestrator_for_the_chat_stream(
    bootstrap: dict[str, Any],
) -> None:
    rendered = json.dumps(bootstrap)
    for internal in INTERNAL_SERVICES:
        assert internal not in rendered
    clusters = {cluster["name"] for cluster in bootstrap["static_resources"]["clusters"]}
    routed = {node["cluster"] for node in walk(edge_routes(bootstrap)) if "cluster" in node}
    assert routed <= {"router", "orchestrator", "auth", "integrations", "memory", "webhooks"} <= clusters
    # Memory serves internal services too: only NotificationsService's prefix leads there.
    to_memory = [
        route["match"]
        for route in edge_routes(bootstrap)
        if route.get("route", {}).get("cluster") == "memory"
    ]
    assert to_memory == [{"prefix": f"/{NOTIFICATIONS_SERVICE}/"}]
    to_orchestrator = [
        route["match"]
        for route in edge_routes(bootstrap)
        if route.get("route", {}).get("cluster") == "orchestrator"
    ]
    assert to_orchestrator == [{"path": f"/{CHAT_SERVICE}/Chat"}]


def test_only_the_public_services_health_and_reflection_are_routed(bootstrap: dict[str, Any]) -> None:
    grpc_routes = [
        route
        for route in edge_routes(bootstrap)
        if "route" in route and route["name"] not in {"cors_preflight", "webhooks"}
    ]
    prefixes = {r["match"]["prefix"]: r["route"]["cluster"] for r in grpc_routes if "prefix" in r["match"]}
    paths = {r["match"]["path"]: r["route"]["cluster"] for r in grpc_routes if "path" in r["match"]}
    assert prefixes == GRPC_PREFIXES
    assert paths == GRPC_PATHS
    # The method's own route comes before its service's, which would take it otherwise.
    names = [route["name"] for route in grpc_routes]
    assert names.index(f"/{CHAT_SERVICE}/Chat") < names.index(CHAT_SERVICE)
    assert edge_routes(bootstrap)[-1] == {
        "name": "not_found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}},
    }


def test_reflection_calls_are_marked_for_the_router(bootstrap: dict[str, Any]) -> None:
    reflection = [route for route in edge_routes(bootstrap) if "Reflection" in route["name"]]
    assert len(reflection) == 2
    for route in reflection:
        (header,) = route["request_headers_to_add"]
        assert header["header"] == {"key": EDGE_REFLECTION_HEADER, "value": "1"}
        assert header["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"


def test_tokens_are_required_for_chat_account_connections_uploads_and_notifications_only(
    bootstrap: dict[str, Any],
) -> None:
    config = jwt_authn(bootstrap)
    rules = {rule["match"]["prefix"]: rule.get("requires") for rule in config["rules"]}
    assert rules == {
        f"/{CHAT_SERVICE}/": {"provider_name": "athena"},
        f"/{ACCOUNT_SERVICE}/": {"provider_name": "athena"},
        f"/{CONNECTIONS_SERVICE}/": {"provider_name": "athena"},
        f"/{UPLOADS_SERVICE}/": {"provider_name": "athena"},
        f"/{NOTIFICATIONS_SERVICE}/": {"provider_name": "athena"},
    }
    provider = config["providers"]["athena"]
    assert provider["issuer"] == "athenaos"
    assert provider["audiences"] == ["athenaos-api"]
    assert provider["forward"] is True
    assert provider["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    assert provider["remote_jwks"]["http_uri"]["uri"].endswith(":9104/.well-known/jwks.json")
    assert provider["remote_jwks"]["async_fetch"]["fast_listener"] is True
    assert provider["jwt_cache_config"] == {"jwt_cache_size": 1024}


def test_verified_tokens_are_cached_unless_the_cache_is_turned_off() -> None:
    def provider(config: EdgeConfig) -> dict[str, Any]:
        return cast(dict[str, Any], jwt_authn(render(config))["providers"]["athena"])

    assert provider(EdgeConfig(jwt_cache_size=50))["jwt_cache_config"] == {"jwt_cache_size": 50}
    assert "jwt_cache_config" not in provider(EdgeConfig(jwt_cache_size=0))


def test_cors_lets_browsers_read_grpc_errors(bootstrap: dict[str, Any]) -> None:
    vhost = edge_manager(bootstrap)["route_config"]["virtual_hosts"][0]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    exposed = {item.strip() for item in policy["expose_headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    allowed = {item.strip() for item in policy["allow_headers"].split(",")}
    assert {"content-type", "authorization", "x-grpc-web", "grpc-timeout"} <= allowed
    assert [m["exact"] for m in policy["allow_origin_string_match"]] == [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
    ]


def test_grpc_routes_let_streams_run_and_retry_only_unprocessed_calls(bootstrap: dict[str, Any]) -> None:
    grpc_routes = [route for route in edge_routes(bootstrap) if route["match"].get("prefix") in GRPC_PREFIXES]
    assert len(grpc_routes) == len(GRPC_PREFIXES)
    for route in grpc_routes:
        action = route["route"]
        assert action["timeout"] == "0s"
        assert action["idle_timeout"] == "300s"
        assert action["retry_policy"]["num_retries"] == 1
        assert set(action["retry_policy"]["retry_on"].split(",")) == {
            "unavailable",
            "connect-failure",
            "refused-stream",
        }
    assert edge_manager(bootstrap)["stream_idle_timeout"] == "300s"


def test_grpc_upstreams_speak_http2_and_are_health_checked(bootstrap: dict[str, Any]) -> None:
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    for name, service in (("router", CHAT_SERVICE), ("auth", AUTH_SERVICE)):
        cluster = clusters[name]
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert "http2_protocol_options" in options["explicit_http_config"]
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": service}
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        assert thresholds["max_requests"] >= 10_000
    assert "typed_extension_protocol_options" not in clusters["auth_jwks"]


def test_webhooks_go_to_the_webhooks_http_port_with_no_token_and_no_cors(bootstrap: dict[str, Any]) -> None:
    """Providers' servers POST their notifications under /webhooks/: plain HTTP/1.1 to the service's HTTP
    port, before the web app's routes and the 404s, and no jwt_authn rule covers the prefix (the service
    verifies each provider's own way)."""
    routes = edge_routes(bootstrap)
    names = [route["name"] for route in routes]
    (route,) = [route for route in routes if route["name"] == "webhooks"]
    assert route["match"] == {"prefix": WEBHOOKS_PREFIX}
    assert route["route"]["cluster"] == "webhooks"
    assert "retry_policy" not in route["route"]
    assert route["typed_per_filter_config"]["envoy.filters.http.cors"]["disabled"] is True
    assert names.index("webhooks") < names.index("not_found")
    assert all(names.index("webhooks") < i for i, name in enumerate(names) if name.startswith("web:"))
    assert not any(
        WEBHOOKS_PREFIX.startswith(rule["match"]["prefix"]) for rule in jwt_authn(bootstrap)["rules"]
    )
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    webhooks = clusters["webhooks"]
    assert "typed_extension_protocol_options" not in webhooks  # HTTP/1.1, not gRPC
    address = webhooks["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["port_value"] == 9106
    assert address["socket_address"]["address"] in {"127.0.0.1", "webhooks.athena.svc.cluster.local"}


def test_admin_is_bound_to_loopback(bootstrap: dict[str, Any]) -> None:
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_kubernetes_resolves_every_pod_of_the_headless_services() -> None:
    bootstrap = render(EdgeConfig.for_target("kubernetes", namespace="athena"))
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    router = clusters["router"]
    assert router["cluster_type"]["name"] == "envoy.clusters.dns"
    assert router["cluster_type"]["typed_config"]["all_addresses_in_single_endpoint"] is False
    assert router["lb_policy"] == "ROUND_ROBIN"
    address = router["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "router.athena.svc.cluster.local", "port_value": 50051}
    listeners = {item["name"]: item for item in bootstrap["static_resources"]["listeners"]}
    assert listeners["edge"]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"
    ]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_local_upstreams_are_static_loopback_addresses() -> None:
    bootstrap = render(EdgeConfig())
    for cluster in bootstrap["static_resources"]["clusters"]:
        assert cluster["type"] == "STATIC"
    assert [item["name"] for item in bootstrap["static_resources"]["listeners"]] == ["edge"]


def test_every_web_app_file_is_served_with_its_content_type(web_root: Path) -> None:
    routes = {
        route["match"]["path"]: route
        for route in edge_routes(render(EdgeConfig(web_root=web_root)))
        if "direct_response" in route and "path" in route["match"]
    }
    assert set(routes) == {
        "/",
        "/connections",
        "/index.html",
        "/assets/app-1a2b.js",
        "/assets/app-1a2b.css",
        "/favicon.svg",
    }

    def header(path: str, name: str) -> str:
        (value,) = [
            h["header"]["value"]
            for h in routes[path]["response_headers_to_add"]
            if h["header"]["key"] == name
        ]
        return str(value)

    # The app's pages are its index.html: `/connections` is where providers send a person back.
    for page in ("/", "/connections"):
        assert routes[page]["direct_response"]["body"] == {"filename": str(web_root.resolve() / "index.html")}
        assert header(page, "content-type") == "text/html; charset=utf-8"
        assert header(page, "cache-control") == "no-cache"
    assert header("/assets/app-1a2b.js", "content-type") == "text/javascript; charset=utf-8"
    assert "immutable" in header("/assets/app-1a2b.js", "cache-control")
    assert header("/assets/app-1a2b.css", "content-type") == "text/css; charset=utf-8"
    assert header("/favicon.svg", "content-type") == "image/svg+xml"


def test_the_installable_app_s_files_are_served_with_their_types_and_revalidated() -> None:
    """The manifest, its icons and the service worker, as every build names them (build-files.json): the
    manifest with its own type (Chromium installs from nothing else), the worker as JavaScript from the
    root (its scope is the whole app, so no Service-Worker-Allowed), and all of them `no-cache`, so a new
    build reaches installed apps at their next start."""
    names = built_web_files()
    config = EdgeConfig(web_root=Path("/nowhere"), web_root_in_envoy=Path("/srv/web"), web_files=names)
    routes = {
        r["match"]["path"]: route_headers(r)
        for r in edge_routes(render(config))
        if r["name"].startswith("web:")
    }
    expected = {
        "/manifest.webmanifest": "application/manifest+json",
        "/sw.js": "text/javascript; charset=utf-8",
        "/icon-192.png": "image/png",
        "/icon-512.png": "image/png",
        "/icon-maskable-512.png": "image/png",
    }
    for path, content_type in expected.items():
        assert routes[path]["content-type"] == content_type, path
        assert routes[path]["cache-control"] == "no-cache", path
        assert "service-worker-allowed" not in routes[path], path


def test_the_page_may_load_its_manifest_and_worker_and_make_one_trusted_url() -> None:
    policy = csp_directives(CONTENT_SECURITY_POLICY)
    assert policy["manifest-src"] == ["'self'"]
    assert policy["worker-src"] == ["'self'"]
    assert policy["require-trusted-types-for"] == ["'script'"]
    # One named policy (the one edge/web/src/pwa.ts creates for "/sw.js"), never duplicates or 'none'.
    assert policy["trusted-types"] == [SERVICE_WORKER_TRUSTED_TYPES_POLICY]


def csp_directives(policy: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (part.split() for part in policy.split(";") if part.strip())}


def route_headers(route: dict[str, Any]) -> dict[str, str]:
    return {h["header"]["key"]: h["header"]["value"] for h in route.get("response_headers_to_add", ())}


def test_every_web_app_file_carries_the_browser_security_headers(bootstrap: dict[str, Any]) -> None:
    web = [route for route in edge_routes(bootstrap) if route["name"].startswith("web:")]
    assert {route["match"]["path"] for route in web} >= {
        "/",
        "/connections",
        "/index.html",
        "/assets/app-1a2b.js",
    }
    for route in web:
        headers = route_headers(route)
        policy = csp_directives(headers["content-security-policy"])
        assert policy["default-src"] == ["'none'"]
        assert policy["script-src"] == ["'self'"]
        assert policy["style-src"] == ["'self'"]
        assert policy["connect-src"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["base-uri"] == policy["form-action"] == policy["object-src"] == ["'none'"]
        sources = {source for values in policy.values() for source in values}
        assert not sources & {"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:", "blob:"}, sources
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["x-content-type-options"] == "nosniff"
        features = dict(item.split("=", 1) for item in headers["permissions-policy"].split(", "))
        assert {"camera", "microphone", "geolocation", "payment"} <= features.keys()
        assert set(features.values()) == {"()"}


def test_the_placeholder_page_carries_the_same_headers(tmp_path: Path, web_root: Path) -> None:
    built = {r["match"].get("path"): r for r in edge_routes(render(EdgeConfig(web_root=web_root)))}
    placeholder = {
        r["match"].get("path"): r for r in edge_routes(render(EdgeConfig(web_root=tmp_path / "no")))
    }
    assert "frame-ancestors 'none'" in route_headers(placeholder["/"]).get("content-security-policy", "")
    assert route_headers(placeholder["/"]) == route_headers(built["/"])


def test_api_replies_get_no_page_headers(bootstrap: dict[str, Any]) -> None:
    """gRPC, gRPC-web and the 404s answer programs, not pages: their headers stay what CORS needs."""
    for route in edge_routes(bootstrap):
        if not route["name"].startswith("web:"):
            assert "content-security-policy" not in route_headers(route), route["name"]


def test_web_files_can_be_served_from_where_envoy_finds_them(web_root: Path) -> None:
    config = EdgeConfig(web_root=web_root, web_root_in_envoy=Path("/srv/web"))
    bodies = [r["direct_response"]["body"] for r in edge_routes(render(config)) if r["name"] == "web:/"]
    assert bodies == [{"filename": "/srv/web/index.html"}]


def test_named_web_files_are_routed_without_a_build(web_root: Path, tmp_path: Path) -> None:
    """For a deployment whose image holds the build: the same routes as a listing of the build would give,
    made from the file names alone."""
    names = ("index.html", "assets/app-1a2b.js", "assets/app-1a2b.css", "favicon.svg")
    named = EdgeConfig(web_root=tmp_path / "missing", web_root_in_envoy=Path("/srv/web"), web_files=names)
    listed = EdgeConfig(web_root=web_root, web_root_in_envoy=Path("/srv/web"))
    assert edge_routes(render(named)) == edge_routes(render(listed))


@pytest.mark.parametrize(
    "names", [("app.js",), ("index.html", "../secret"), ("index.html", "/etc/passwd"), ("index.html", ".env")]
)
def test_named_web_files_are_plain_files_of_the_web_root_with_an_index(names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"index\.html|web root"):
        render(EdgeConfig(web_root_in_envoy=Path("/srv/web"), web_files=names))


def test_without_a_built_web_app_the_root_says_so(tmp_path: Path) -> None:
    routes = edge_routes(render(EdgeConfig(web_root=tmp_path / "missing")))
    for page in ("/", "/connections"):
        (root,) = [route for route in routes if route["match"].get("path") == page]
        assert "not built" in root["direct_response"]["body"]["inline_string"]


def test_a_web_file_too_large_to_serve_is_refused(web_root: Path) -> None:
    (web_root / "assets" / "huge.js").write_bytes(b"x" * (4 * 1024 * 1024 + 1))
    with pytest.raises(ValueError, match=r"huge\.js"):
        render(EdgeConfig(web_root=web_root))


def test_the_command_line_reads_flags_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATHENA_EDGE_PORT", "8181")
    monkeypatch.setenv("ATHENA_EDGE_ROUTER_HOST", "10.0.0.5")
    out = tmp_path / "envoy.json"
    main(["--out", str(out), "--admin-port", "9911", "--router-port", "6000", "--web-root", str(tmp_path)])
    bootstrap = json.loads(out.read_text())
    manager = edge_manager(bootstrap)
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8181}
    assert bootstrap["admin"]["address"]["socket_address"]["port_value"] == 9911
    policy = manager["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert [m["exact"] for m in policy["allow_origin_string_match"]] == [
        "http://127.0.0.1:8181",
        "http://localhost:8181",
    ]
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters["router"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "10.0.0.5", "port_value": 6000}


@pytest.mark.skipif(ENVOY is None, reason="envoy is not installed")
@pytest.mark.parametrize(
    ("target", "tracing"),
    [
        ("local", []),
        ("local", ["--otlp-endpoint", "http://127.0.0.1:4317", "--trace-sampling", "0.25"]),
        ("kubernetes", []),
    ],
)
def test_envoy_accepts_the_rendered_configuration(
    target: str, tracing: list[str], tmp_path: Path, web_root: Path
) -> None:
    out = tmp_path / f"{target}.yaml"
    main(
        [
            "--out",
            str(out),
            "--target",
            target,
            "--namespace",
            "athena",
            "--web-root",
            str(web_root),
            *tracing,
        ]
    )
    assert ENVOY is not None
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(out), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_envoy_opens_another_connection_before_a_service_would_refuse_streams(
    bootstrap: dict[str, Any],
) -> None:
    """1,000 streaming answers once filled one connection to the orchestrator past the 512 calls a
    service accepts per connection: the newest were refused (REFUSED_STREAM), twice with the retry."""
    limit = ServiceSettings.model_fields["max_concurrent_streams"].default
    for cluster in bootstrap["static_resources"]["clusters"]:
        options = cluster.get("typed_extension_protocol_options")
        if options is None or cluster["name"] == OTEL_CLUSTER:  # the collector is no service of ours
            continue
        http2 = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
        assert http2["http2_protocol_options"]["max_concurrent_streams"] < limit, cluster["name"]


def test_a_watched_notification_stream_beats_before_the_edge_would_reset_it() -> None:
    heartbeat = MemorySettings.model_fields["notifications_heartbeat_seconds"].default
    assert heartbeat * 2 < EdgeConfig().stream_idle_timeout_seconds


def test_tracing_is_off_without_a_collector_and_follows_the_services_sampler_with_one() -> None:
    assert "tracing" not in edge_manager(render(EdgeConfig()))
    assert OTEL_CLUSTER not in {c["name"] for c in render(EdgeConfig())["static_resources"]["clusters"]}
    bootstrap = render(EdgeConfig(otlp_endpoint="http://collector.example:4318", trace_sampling=0.1))
    tracing = edge_manager(bootstrap)["tracing"]
    assert tracing["random_sampling"] == {"value": 10.0}
    assert tracing["operation"] == "%ROUTE_NAME%"
    assert tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert tracing["provider"]["typed_config"]["service_name"] == "athena-edge"
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    address = clusters[OTEL_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"
    ]
    assert address["socket_address"] == {"address": "collector.example", "port_value": 4318}
    # The browser may send the trace it started.
    policy = edge_manager(bootstrap)["route_config"]["virtual_hosts"][0]["typed_per_filter_config"][
        "envoy.filters.http.cors"
    ]
    assert "traceparent" in policy["allow_headers"].split(", ")
    # The services' sampler variables, translated.
    assert trace_sampling_from({}) is None
    assert trace_sampling_from({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}) == 0.0
    assert (
        trace_sampling_from({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}) == 0.5
    )
    assert trace_sampling_from({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}) == 1.0


def test_kubernetes_edge_traces_to_the_collector_service() -> None:
    bootstrap = render(EdgeConfig.for_target("kubernetes", namespace="athena"))
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    address = clusters[OTEL_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"
    ]
    assert address["socket_address"] == {
        "address": "otel-collector.athena.svc.cluster.local",
        "port_value": 4317,
    }
