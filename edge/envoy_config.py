"""Render the Envoy bootstrap of the AthenaOS edge, for local runs and for Kubernetes, from one source.

The edge is the only way into the mesh. One listener serves the web app, gRPC-web (HTTP/1.1 and HTTP/2)
and native gRPC over h2c, so browsers and grpcurl use the same port. Its HTTP filters run in this order:

    grpc_web  →  cors  →  jwt_authn  →  router

grpc_web comes first so that the other filters see plain gRPC; cors comes before jwt_authn so that the
replies jwt_authn sends itself (401, which gRPC clients see as UNAUTHENTICATED) still carry CORS headers
and reach the browser's code. Only the public services are routed (`PUBLIC_SERVICES`); every other path,
internal services included, gets a 404, which gRPC clients see as UNIMPLEMENTED. Every file of the web app
is served with the browser's security headers (`WEB_SECURITY_HEADERS`: a strict Content-Security-Policy
and its companions); API replies, which no browser renders as a page, keep only what CORS needs.

With an OTLP collector configured (`otlp_endpoint`), Envoy's OpenTelemetry tracer is the mesh's head
sampler: it keeps the trace id of a `traceparent` the caller sent (the web app starts one per chat turn),
decides whether the request is traced (`trace_sampling`), records its span if so, and passes W3C trace
context with its decision on to the services, which follow it.

`render(EdgeConfig(...))` returns the bootstrap as a dict; the command line writes it as JSON, which is
also YAML, so the file may be named `.json` or `.yaml`:

    python -m edge.envoy_config --out var/envoy.json
    python -m edge.envoy_config --out envoy.yaml --target kubernetes --namespace athena
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

Target = Literal["local", "kubernetes"]
"""Where the rendered Envoy runs: on loopback beside the services, or in a cluster beside their Services."""

CHAT_SERVICE = "athena.chat.v1.ChatService"
ACCOUNT_SERVICE = "athena.account.v1.AccountService"
AUTH_SERVICE = "athena.auth.v1.AuthService"
CONNECTIONS_SERVICE = "athena.connections.v1.ConnectionsService"
UPLOADS_SERVICE = "athena.uploads.v1.UploadsService"
NOTIFICATIONS_SERVICE = "athena.notifications.v1.NotificationsService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")

ROUTER_CLUSTER = "router"
ORCHESTRATOR_CLUSTER = "orchestrator"
AUTH_CLUSTER = "auth"
INTEGRATIONS_CLUSTER = "integrations"
WEBHOOKS_CLUSTER = "webhooks"
MEMORY_CLUSTER = "memory"
JWKS_CLUSTER = "auth_jwks"
ADMIN_CLUSTER = "envoy_admin"
OTEL_CLUSTER = "otel_collector"
EDGE_SERVICE_NAME = "athena-edge"
"""service.name of the edge's spans (the services are athena-<service>)."""

PUBLIC_SERVICES: Mapping[str, str] = {
    CHAT_SERVICE: ROUTER_CLUSTER,
    ACCOUNT_SERVICE: ROUTER_CLUSTER,
    AUTH_SERVICE: AUTH_CLUSTER,
    CONNECTIONS_SERVICE: INTEGRATIONS_CLUSTER,
    UPLOADS_SERVICE: INTEGRATIONS_CLUSTER,
    NOTIFICATIONS_SERVICE: MEMORY_CLUSTER,
}
"""The only application services the edge routes, each to its cluster. Internal services are never here:
memory serves NotificationsService beside internal ones (memory's, NotifierService), and only the public
service's prefix leads there. Every route streams (`timeout: 0s`, an idle timeout), so
WatchNotifications stays open as long as its heartbeats (30 s) come within `stream_idle_timeout_seconds`."""

STREAMED_METHODS: Mapping[str, str] = {f"/{CHAT_SERVICE}/Chat": ORCHESTRATOR_CLUSTER}
"""Methods routed apart from the rest of their service: the chat stream goes straight to the orchestrator,
which serves it, so an answer's text crosses one Python process between the model and the client."""

TOKEN_REQUIRED = (CHAT_SERVICE, ACCOUNT_SERVICE, CONNECTIONS_SERVICE, UPLOADS_SERVICE, NOTIFICATIONS_SERVICE)
"""Services whose calls need a valid access token at the edge; login RPCs, health and reflection do not."""

WEBHOOKS_PREFIX = "/webhooks/"
"""Provider notifications (Microsoft Graph, Google channels, Google Health), routed as plain HTTP to the
webhooks service's HTTP port. No access token: no jwt_authn rule names this prefix, and each notification is
verified by the service as its provider documents."""
WEBHOOKS_TIMEOUT = "10s"
"""Graph wants an answer within 3 s (validation: 10 s); the service answers in a few Redis round trips."""

UPSTREAM_STREAMS_PER_CONNECTION = 500
"""Calls Envoy multiplexes on one connection to a service before it opens another; below the services'
own limit per connection (`ServiceSettings.max_concurrent_streams`)."""

EDGE_REFLECTION_HEADER = "x-athena-edge-reflection"
"""Added to reflection calls, so the router lists the public API instead of its own services."""

JWKS_PATH = "/.well-known/jwks.json"
JWT_PROVIDER = "athena"
DEFAULT_WEB_ROOT = Path(__file__).resolve().parent / "web" / "dist"
WEB_BUILD_FILES = Path(__file__).resolve().parent / "web" / "build-files.json"
"""The files `node build.mjs` writes into the build, as a JSON list; the build fails when it writes others,
so a configuration rendered from this list (Kubernetes: `web_files`) matches every build of the sources."""
MAX_WEB_FILE_BYTES = 4 * 1024 * 1024
APP_PAGES = ("/", "/connections")
"""Addresses of the web app's own pages, each answered with its index.html (the app shows the page the
address names). `/connections` is where the providers send a person back after connecting an account (the
redirect URI registered with them), with `code` and `state` in the query, which routing ignores."""

CORS_ALLOW_HEADERS = (
    "content-type",
    "authorization",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "x-request-id",
    "traceparent",
    "tracestate",
)
CORS_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id")

CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".wasm": "application/wasm",
}

SERVICE_WORKER_TRUSTED_TYPES_POLICY = "athena-service-worker"
"""The one Trusted Types policy the page may create: it turns "/sw.js", and nothing else, into the
TrustedScriptURL that `navigator.serviceWorker.register` requires under the policy below."""

CONTENT_SECURITY_POLICY = "; ".join(
    (
        # Nothing unless allowed below: no fonts, media, frames or workers but ours from anywhere.
        "default-src 'none'",
        # The bundle and the stylesheet, from this origin only: no inline <script>, event handler or
        # style attribute, no eval. (index.html has none; the app styles through the CSSOM, which this
        # does not restrict.)
        "script-src 'self'",
        "style-src 'self'",
        # The app's icons; `data:` for images the app may inline.
        "img-src 'self' data:",
        # gRPC-web calls go to the page's own origin (the edge serves both).
        "connect-src 'self'",
        # The web app manifest (installing the app) and the service worker (sw.js: the shell offline,
        # Web Push), both from this origin.
        "manifest-src 'self'",
        "worker-src 'self'",
        "base-uri 'none'",
        # The app's forms are handled by script (or `method=dialog`): none may navigate anywhere.
        "form-action 'none'",
        # No site may frame the app (clickjacking); X-Frame-Options says the same to older browsers.
        "frame-ancestors 'none'",
        "object-src 'none'",
        # DOM sinks (innerHTML, script.src, ...) take no strings: the app builds every node with
        # createElement and textContent (edge/web/src/dom.ts), and a regression fails loudly. One policy
        # exists, and makes one URL: registering the service worker is such a sink (edge/web/src/pwa.ts).
        "require-trusted-types-for 'script'",
        f"trusted-types {SERVICE_WORKER_TRUSTED_TYPES_POLICY}",
    )
)
"""The web app's Content-Security-Policy: only its own script and style run, it talks to its own origin
only, and nothing injected into the page runs (no 'unsafe-inline', no 'unsafe-eval')."""

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "attribution-reporting",
        "autoplay",
        "browsing-topics",
        "camera",
        "clipboard-read",
        "clipboard-write",
        "compute-pressure",
        "display-capture",
        "encrypted-media",
        "fullscreen",
        "gamepad",
        "geolocation",
        "gyroscope",
        "hid",
        "identity-credentials-get",
        "idle-detection",
        "join-ad-interest-group",
        "local-fonts",
        "magnetometer",
        "microphone",
        "midi",
        "otp-credentials",
        "payment",
        "picture-in-picture",
        "publickey-credentials-create",
        "publickey-credentials-get",
        "run-ad-auction",
        "screen-wake-lock",
        "serial",
        "storage-access",
        "sync-xhr",
        "usb",
        "window-management",
        "xr-spatial-tracking",
    )
)
"""Every powerful feature the app does not use, denied to the page and to anything it could embed. Only
names Chromium recognises: an unknown one is logged in the console on every page load."""

WEB_SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    # Page addresses (conversation ids, the OIDC `code` before the app removes it) go to no one.
    "referrer-policy": "no-referrer",
    "permissions-policy": PERMISSIONS_POLICY,
    "x-frame-options": "DENY",
    # A page the app opens, or that opened it, gets no handle on its window (sign-in is a redirect, not
    # a popup, so nothing needs one).
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-content-type-options": "nosniff",
}
"""Sent with every file of the web app (`_file_route`), the placeholder page included."""

PLACEHOLDER_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>AthenaOS</title></head><body>'
    "<h1>AthenaOS</h1><p>The web app is not built. Build it in <code>edge/web</code>, then render the "
    "Envoy configuration again.</p></body></html>\n"
)


UPSTREAM_FAILURE_FLAGS = ("UF", "UH", "URX", "UO", "UC", "UR", "LR")
"""Response flags of a reply Envoy made because the upstream was unreachable, full, or reset the call
before answering (connection failure, no healthy host, retries exhausted, overflow, terminated, reset)."""
UPSTREAM_UNAVAILABLE = "AthenaOS is unavailable for a moment; try again"
UPSTREAM_TIMEOUT = "AthenaOS took too long to answer; try again"


@dataclass(frozen=True)
class EdgeConfig:
    """Everything that differs between edges; the defaults are a local run on the standard ports."""

    listen_host: str = "127.0.0.1"
    """Address of the listener for browsers and gRPC clients ("0.0.0.0" in a container)."""
    listen_port: int = 8080
    """Port of that listener."""
    admin_port: int = 9901
    """Envoy's admin interface; it is always bound to 127.0.0.1, never reachable from outside."""
    router_host: str = "127.0.0.1"
    """The router: an IP address (a STATIC cluster) or a DNS name (STRICT_DNS: each address it resolves
    to, such as each pod behind a headless Service, is a host of its own, balanced round robin)."""
    router_port: int = 50051
    """The router's gRPC port (ChatService but Chat, AccountService)."""
    orchestrator_host: str = "127.0.0.1"
    """The orchestrator pool, like `router_host`: the chat stream (`ChatService/Chat`) goes straight to it."""
    orchestrator_port: int = 50052
    """The orchestrator's gRPC port."""
    auth_host: str = "127.0.0.1"
    """The auth service, like `router_host`."""
    auth_port: int = 50054
    """The auth service's gRPC port (AuthService)."""
    auth_http_port: int = 9104
    """The auth service's HTTP port, which serves the JWKS at /.well-known/jwks.json."""
    integrations_host: str = "127.0.0.1"
    """The integrations service (ConnectionsService, UploadsService), like `router_host`."""
    integrations_port: int = 50055
    """The integrations service's gRPC port."""
    webhooks_host: str = "127.0.0.1"
    """The webhooks service, like `router_host`: `/webhooks/` goes to its HTTP port."""
    webhooks_http_port: int = 9106
    """The webhooks service's HTTP port (the webhooks and /metrics; only `/webhooks/` is routed)."""
    memory_host: str = "127.0.0.1"
    """The memory service (NotificationsService only), like `router_host`."""
    memory_port: int = 50053
    """The memory service's gRPC port."""
    allowed_origins: tuple[str, ...] = ("http://127.0.0.1:8080", "http://localhost:8080")
    """Browser origins allowed to call through CORS, compared exactly (scheme, host and port)."""
    jwt_issuer: str = "athenaos"
    """`iss` that access tokens must carry."""
    jwt_audiences: tuple[str, ...] = ("athenaos-api",)
    """`aud` values of which access tokens must carry one."""
    jwks_cache_seconds: int = 300
    """How long Envoy keeps the JWKS before fetching it again: a new signing key must be published in the
    JWKS at least this long before tokens are signed with it."""
    jwt_cache_size: int = 1024
    """Verified access tokens each Envoy worker keeps (least recently used go first; 0: none). A token met
    again skips its signature check and JSON parsing until it expires (Envoy checks the expiry of a cached
    token at every use); each service still verifies the token itself. Measured: 9-10 % of Envoy's CPU
    per chat turn (a user's token is the same for every call until it is refreshed)."""
    web_root: Path = DEFAULT_WEB_ROOT
    """Built web app: one route per file, listed when rendering unless `web_files` names them. Without
    `web_files` and without `index.html` there, `/` answers a placeholder page."""
    web_root_in_envoy: Path | None = None
    """Where Envoy finds the same files when it runs elsewhere (a container); None → `web_root`."""
    web_files: tuple[str, ...] | None = None
    """The build's files (`/`-separated paths relative to the web root), for a rendering made where the
    build is not (Kubernetes: the edge image holds it; see `built_web_files`); None → list `web_root`."""
    ops_port: int | None = None
    """A listener on all interfaces exposing only Envoy's /ready and /stats/prometheus, for Kubernetes
    probes and scrapers (the admin interface stays on loopback); None → no such listener."""
    stream_idle_timeout_seconds: int = 300
    """A stream (a chat answer included) with no bytes in either direction for this long is reset."""
    cors_max_age_seconds: int = 86400
    """How long browsers may cache a preflight answer."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector ("http://host:4317") for the edge's spans; None: Envoy records no span (a
    `traceparent` received still goes on to the services unchanged)."""
    trace_sampling: float = 1.0
    """Fraction of requests the edge traces (the services' `OTEL_TRACES_SAMPLER_ARG`); 1.0 traces all but
    those whose `traceparent` says "not sampled". A caller's "sampled" does not force a trace: a client
    cannot make the mesh trace more than this."""

    @classmethod
    def for_target(cls, target: Target, *, namespace: str | None = None) -> EdgeConfig:
        """Defaults for `target`. In Kubernetes upstreams are the headless Services `router` and `auth`,
        qualified with `namespace` when given."""
        if target == "local":
            return cls()
        suffix = f".{namespace}.svc.cluster.local" if namespace else ""
        return cls(
            listen_host="0.0.0.0",
            router_host=f"router{suffix}",
            orchestrator_host=f"orchestrator{suffix}",
            auth_host=f"auth{suffix}",
            integrations_host=f"integrations{suffix}",
            webhooks_host=f"webhooks{suffix}",
            memory_host=f"memory{suffix}",
            ops_port=9902,
            otlp_endpoint=f"http://otel-collector{suffix}:4317",
        )


def render(config: EdgeConfig) -> dict[str, Any]:
    """The complete Envoy v3 bootstrap for `config`."""
    listeners = [_edge_listener(config)]
    clusters = [
        _grpc_cluster(ROUTER_CLUSTER, config.router_host, config.router_port, health_service=CHAT_SERVICE),
        _grpc_cluster(
            ORCHESTRATOR_CLUSTER,
            config.orchestrator_host,
            config.orchestrator_port,
            health_service=CHAT_SERVICE,
        ),
        _grpc_cluster(AUTH_CLUSTER, config.auth_host, config.auth_port, health_service=AUTH_SERVICE),
        _cluster(JWKS_CLUSTER, config.auth_host, config.auth_http_port),
        _grpc_cluster(
            INTEGRATIONS_CLUSTER,
            config.integrations_host,
            config.integrations_port,
            health_service=CONNECTIONS_SERVICE,
        ),
        _cluster(WEBHOOKS_CLUSTER, config.webhooks_host, config.webhooks_http_port),
        _grpc_cluster(
            MEMORY_CLUSTER, config.memory_host, config.memory_port, health_service=NOTIFICATIONS_SERVICE
        ),
    ]
    if config.ops_port is not None:
        listeners.append(_ops_listener(config.ops_port))
        clusters.append(_cluster(ADMIN_CLUSTER, "127.0.0.1", config.admin_port))
    if config.otlp_endpoint:
        clusters.append(_otlp_cluster(config.otlp_endpoint))
    return {
        "node": {"id": "athena-edge", "cluster": "athena-edge"},
        "admin": {"address": _socket_address("127.0.0.1", config.admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50_000,
                    },
                }
            ]
        },
    }


def _edge_listener(config: EdgeConfig) -> dict[str, Any]:
    idle = f"{config.stream_idle_timeout_seconds}s"
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "edge",
        # AUTO: HTTP/1.1 for gRPC-web, HTTP/2 (h2c prior knowledge) for gRPC-web and native gRPC.
        "codec_type": "AUTO",
        "use_remote_address": True,
        "generate_request_id": True,
        "preserve_external_request_id": True,
        "always_set_request_id_in_response": True,
        # Routing and the JWT rules see the same normalised path: no `..` or `%2E` tricks past either.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "stream_idle_timeout": idle,
        # A request must arrive whole in time (a body that never ends gets 408, not a held stream); the
        # services refuse it sooner themselves (mesh.requests). Answers, streams included, are not bound.
        "request_headers_timeout": "10s",
        "request_timeout": "30s",
        "max_request_headers_kb": 96,
        "common_http_protocol_options": {
            "idle_timeout": "3600s",
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 2048,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "access_log": [_stdout_access_log()],
        # jwt_authn answers 403 for a token of another audience (PERMISSION_DENIED to gRPC clients) and 401
        # for every other bad token; nothing else here replies 403, so all bad tokens are UNAUTHENTICATED.
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 403, "runtime_key": "athena_edge.jwt_forbidden"},
                            }
                        }
                    },
                    "status_code": 401,
                },
                # Envoy's own words for an upstream it could not reach name its internals ("upstream
                # connect error or disconnect/reset before headers. reset reason: ..."): clients read
                # ours instead, with the status unchanged (UNAVAILABLE).
                {
                    "filter": {"response_flag_filter": {"flags": list(UPSTREAM_FAILURE_FLAGS)}},
                    "body": {"inline_string": UPSTREAM_UNAVAILABLE},
                },
                {
                    "filter": {"response_flag_filter": {"flags": ["UT"]}},
                    "body": {"inline_string": UPSTREAM_TIMEOUT},
                },
            ]
        },
        "route_config": _route_config(config),
        "http_filters": _http_filters(config),
    }
    if config.otlp_endpoint:
        manager["tracing"] = _tracing(config)
    return {
        "name": "edge",
        "address": _socket_address(config.listen_host, config.listen_port),
        "per_connection_buffer_limit_bytes": 256 * 1024,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _tracing(config: EdgeConfig) -> dict[str, Any]:
    """Envoy's OpenTelemetry tracer, exporting over OTLP/gRPC to `OTEL_CLUSTER`. Each request is traced
    when `random_sampling` picks it and its `traceparent` (kept: the trace id stays the caller's) is not
    marked unsampled; the decision goes upstream in the `traceparent` it sends
    (tests/service/test_edge_tracing.py)."""
    return {
        "random_sampling": {"value": round(100.0 * config.trace_sampling, 4)},
        # Spans are named after the route (a public service, the chat method, a file of the web app, a
        # 404): a bounded set of names, where a request's path could be anything a client sends.
        "operation": "%ROUTE_NAME%",
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTEL_CLUSTER}, "timeout": "1s"},
                "service_name": EDGE_SERVICE_NAME,
            },
        },
    }


def trace_sampling_from(env: Mapping[str, str]) -> float | None:
    """The edge's `trace_sampling` equivalent to the services' OTEL_TRACES_SAMPLER and
    OTEL_TRACES_SAMPLER_ARG (the SDK's names), or None when they do not say (then every request is traced,
    as the SDK's default parentbased_always_on would)."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower().removeprefix("parentbased_")
    if sampler == "always_on":
        return 1.0
    if sampler == "always_off":
        return 0.0
    if sampler == "traceidratio":
        argument = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        return min(1.0, max(0.0, float(argument))) if argument else 1.0
    return None


def _otlp_cluster(endpoint: str) -> dict[str, Any]:
    """The collector named by an OTLP endpoint URL ("http://otel-collector:4317"), spoken to over h2c."""
    parts = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if not parts.hostname:
        raise ValueError(f"otlp_endpoint {endpoint!r} names no host")
    cluster = _cluster(OTEL_CLUSTER, parts.hostname, parts.port or 4317)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return cluster


def _stdout_access_log() -> dict[str, Any]:
    fields = {
        "time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "protocol": "%PROTOCOL%",
        "status": "%RESPONSE_CODE%",
        # From trailers, else headers (trailers-only replies, Envoy's own replies).
        "grpc_status": "%GRPC_STATUS_NUMBER%",
        "duration_ms": "%DURATION%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "user_agent": "%REQ(USER-AGENT)%",
    }
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": fields},
        },
    }


def _http_filters(config: EdgeConfig) -> list[dict[str, Any]]:
    return [
        _filter("envoy.filters.http.grpc_web", "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb", {}),
        _filter("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors", {}),
        _filter(
            "envoy.filters.http.jwt_authn",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            _jwt_authn(config),
        ),
        _filter(
            "envoy.filters.http.router",
            "envoy.extensions.filters.http.router.v3.Router",
            {"suppress_envoy_headers": True},
        ),
    ]


def _filter(name: str, type_name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": f"type.googleapis.com/{type_name}", **body}}


def _jwt_authn(config: EdgeConfig) -> dict[str, Any]:
    jwks_host = _url_host(config.auth_host)
    provider = {
        "issuer": config.jwt_issuer,
        "audiences": list(config.jwt_audiences),
        "remote_jwks": {
            "http_uri": {
                "uri": f"http://{jwks_host}:{config.auth_http_port}{JWKS_PATH}",
                "cluster": JWKS_CLUSTER,
                "timeout": "2s",
            },
            "cache_duration": f"{config.jwks_cache_seconds}s",
            # Envoy listens at once and fetches in the background, so it may start before auth.
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "2s"},
            "retry_policy": {
                "num_retries": 3,
                "retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"},
            },
        },
        # The services verify the token again and scope data to its subject: keep the header.
        "forward": True,
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "require_expiration": True,
        "clock_skew_seconds": 30,
    }
    if config.jwt_cache_size > 0:
        provider["jwt_cache_config"] = {"jwt_cache_size": config.jwt_cache_size}
    # Paths no rule matches need no token. CORS preflights never get here: the cors filter answers them.
    rules = [
        {"match": {"prefix": f"/{service}/"}, "requires": {"provider_name": JWT_PROVIDER}}
        for service in TOKEN_REQUIRED
    ]
    return {"providers": {JWT_PROVIDER: provider}, "rules": rules}


def _route_config(config: EdgeConfig) -> dict[str, Any]:
    routes = [
        _preflight_route(),
        *(_grpc_route(path, cluster, config, exact=True) for path, cluster in STREAMED_METHODS.items()),
        *(_grpc_route(service, cluster, config) for service, cluster in PUBLIC_SERVICES.items()),
        _grpc_route(HEALTH_SERVICE, ROUTER_CLUSTER, config),
        *(
            _grpc_route(service, ROUTER_CLUSTER, config, add_headers={EDGE_REFLECTION_HEADER: "1"})
            for service in REFLECTION_SERVICES
        ),
        _webhooks_route(),
        *_web_routes(config),
        *_not_found_routes(config),
    ]
    cors_policy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in config.allowed_origins],
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": ", ".join(CORS_ALLOW_HEADERS),
        "expose_headers": ", ".join(CORS_EXPOSE_HEADERS),
        "max_age": str(config.cors_max_age_seconds),
        "allow_credentials": False,
        # Envoy answers every preflight itself; one from a foreign origin gets no CORS headers.
        "forward_not_matching_preflights": False,
    }
    return {
        "name": "athena",
        "max_direct_response_body_size_bytes": MAX_WEB_FILE_BYTES,
        "virtual_hosts": [
            {
                "name": "athena",
                "domains": ["*"],
                "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy},
                "routes": routes,
            }
        ],
    }


def _preflight_route() -> dict[str, Any]:
    """Every CORS preflight, whatever its path. The cors filter skips direct-response routes, so preflights
    need a route of their own; it answers all of them itself (`forward_not_matching_preflights` is off),
    so the cluster named here is never called."""
    present = {"present_match": True}
    return {
        "name": "cors_preflight",
        "match": {
            "prefix": "/",
            "headers": [
                {"name": ":method", "string_match": {"exact": "OPTIONS"}},
                {"name": "origin", **present},
                {"name": "access-control-request-method", **present},
            ],
        },
        "route": {"cluster": ROUTER_CLUSTER, "timeout": "5s"},
    }


def _webhooks_route() -> dict[str, Any]:
    """`/webhooks/...` to the webhooks service: POSTs from the providers' servers (no browser, so no CORS),
    no token, not retried (a provider retries on its own terms)."""
    return {
        "name": "webhooks",
        "match": {"prefix": WEBHOOKS_PREFIX},
        "route": {"cluster": WEBHOOKS_CLUSTER, "timeout": WEBHOOKS_TIMEOUT},
        "typed_per_filter_config": {
            "envoy.filters.http.cors": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def _not_found_routes(config: EdgeConfig) -> list[dict[str, Any]]:
    """404 for every other path: gRPC clients see UNIMPLEMENTED. The cors filter skips direct responses,
    so each allowed origin gets its CORS headers from a route of its own, and browsers can read the error."""
    body = {"inline_string": "not found\n"}
    routes = [
        {
            "name": f"not_found:{origin}",
            "match": {"prefix": "/", "headers": [{"name": "origin", "string_match": {"exact": origin}}]},
            "direct_response": {"status": 404, "body": body},
            "response_headers_to_add": _headers(
                {
                    "access-control-allow-origin": origin,
                    "access-control-expose-headers": ", ".join(CORS_EXPOSE_HEADERS),
                    "vary": "origin",
                }
            ),
        }
        for origin in config.allowed_origins
    ]
    routes.append(
        {"name": "not_found", "match": {"prefix": "/"}, "direct_response": {"status": 404, "body": body}}
    )
    return routes


def _headers(headers: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in headers.items()
    ]


def _grpc_route(
    target: str,
    cluster: str,
    config: EdgeConfig,
    *,
    exact: bool = False,
    add_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The route of a service (`target` its full name) or, `exact`, of one method (`target` its path)."""
    route: dict[str, Any] = {
        "name": target,
        "match": {"path": target} if exact else {"prefix": f"/{target}/"},
        "route": {
            "cluster": cluster,
            # Streams (chat answers, exports) have no overall limit, only an idle one; the caller's
            # grpc-timeout still applies.
            "timeout": "0s",
            "idle_timeout": f"{config.stream_idle_timeout_seconds}s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            # Only what the upstream never started to process: Envoy retries solely before it has sent
            # any response downstream, so a stream is never replayed half-way.
            "retry_policy": {
                "retry_on": "unavailable,connect-failure,refused-stream",
                "num_retries": 1,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                            "PreviousHostsPredicate"
                        },
                    }
                ],
                "host_selection_retry_max_attempts": 3,
            },
        },
    }
    if add_headers:
        route["request_headers_to_add"] = _headers(add_headers)
    return route


def built_web_files(listing: Path = WEB_BUILD_FILES) -> tuple[str, ...]:
    """The files every build of the web app consists of (`WEB_BUILD_FILES`)."""
    names = json.loads(listing.read_text(encoding="utf-8"))
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise ValueError(f"{listing} must be a JSON list of file names")
    return tuple(names)


def _web_files(config: EdgeConfig) -> list[PurePosixPath] | None:
    """The web app's files relative to its root, sorted; None when there is no build to serve."""
    if config.web_files is not None:
        files = sorted(PurePosixPath(name) for name in config.web_files)
        for name in files:
            if name.is_absolute() or any(part.startswith(".") for part in name.parts):
                raise ValueError(f"{name}: web files are plain paths inside the web root, none hidden")
        if PurePosixPath("index.html") not in files:
            raise ValueError("the web app's files have no index.html")
        return files
    root = config.web_root
    if not (root / "index.html").is_file():
        return None
    listed: list[PurePosixPath] = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = PurePosixPath(file.relative_to(root).as_posix())
        if any(part.startswith(".") for part in relative.parts):
            continue
        size = file.stat().st_size
        if size > MAX_WEB_FILE_BYTES:
            raise ValueError(f"{file} is {size} bytes; the edge serves files up to {MAX_WEB_FILE_BYTES}")
        listed.append(relative)
    return listed


def _web_routes(config: EdgeConfig) -> list[dict[str, Any]]:
    files = _web_files(config)
    if files is None:
        page = {"inline_string": PLACEHOLDER_PAGE}
        pages: tuple[str, ...] = (*APP_PAGES, "/index.html")
        return [_file_route(path, page, CONTENT_TYPES[".html"], "no-cache") for path in pages]
    served_from = config.web_root_in_envoy or config.web_root.resolve()
    routes: list[dict[str, Any]] = []
    for relative in files:
        body = {"filename": str(served_from / relative)}
        content_type = CONTENT_TYPES.get(relative.suffix.lower(), "application/octet-stream")
        # Bundles under assets/ carry a content hash in their names; everything else may change.
        immutable = relative.parts[0] == "assets" and len(relative.parts) > 1
        cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
        url = "/" + urllib.parse.quote(relative.as_posix())
        paths = (*APP_PAGES, url) if relative == PurePosixPath("index.html") else (url,)
        routes.extend(_file_route(path, body, content_type, cache) for path in paths)
    return routes


def _file_route(path: str, body: Mapping[str, str], content_type: str, cache: str) -> dict[str, Any]:
    headers = {"content-type": content_type, "cache-control": cache, **WEB_SECURITY_HEADERS}
    return {
        "name": f"web:{path}",
        "match": {"path": path},
        "direct_response": {"status": 200, "body": dict(body)},
        "response_headers_to_add": _headers(headers),
    }


def _ops_listener(port: int) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"match": {"path": path}, "route": {"cluster": ADMIN_CLUSTER, "timeout": "5s"}}
        for path in ("/ready", "/stats/prometheus")
    ]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "ops",
        "codec_type": "AUTO",
        "route_config": {
            "name": "ops",
            "virtual_hosts": [{"name": "ops", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            _filter("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router", {})
        ],
    }
    return {
        "name": "ops",
        "address": _socket_address("0.0.0.0", port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _grpc_cluster(name: str, host: str, port: int, *, health_service: str) -> dict[str, Any]:
    cluster = _cluster(name, host, port)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    # Below what each service accepts on one connection (`<SERVICE>_MAX_CONCURRENT_STREAMS`,
                    # 512), so Envoy opens another connection first: with 1,000 answers streaming, a
                    # connection filled past the server's limit had its newest streams refused.
                    "max_concurrent_streams": UPSTREAM_STREAMS_PER_CONNECTION,
                }
            },
        }
    }
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "2s",
            "no_traffic_interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": health_service},
        }
    ]
    cluster["circuit_breakers"] = {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": 10_000,
                "max_pending_requests": 10_000,
                "max_requests": 10_000,
                "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 10},
            }
        ]
    }
    return cluster


def _cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A cluster of one address: STATIC for an IP, else STRICT_DNS with one host per resolved address
    (a headless Service's pods), balanced round robin."""
    cluster: dict[str, Any] = {
        "name": name,
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": 256 * 1024,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}],
        },
    }
    if _is_ip(host):
        cluster["type"] = "STATIC"
    else:
        # STRICT_DNS: every address the name resolves to is a host of its own.
        cluster["cluster_type"] = {
            "name": "envoy.clusters.dns",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
                "dns_refresh_rate": "5s",
                "dns_lookup_family": "V4_PREFERRED",
                "all_addresses_in_single_endpoint": False,
            },
        }
    return cluster


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


UPSTREAM_FIELDS = (
    "router_host",
    "router_port",
    "orchestrator_host",
    "orchestrator_port",
    "auth_host",
    "auth_port",
    "auth_http_port",
    "integrations_host",
    "integrations_port",
    "webhooks_host",
    "webhooks_http_port",
)


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m edge.envoy_config",
        description="Write the Envoy bootstrap of the AthenaOS edge as JSON (also valid YAML). "
        "Each flag falls back to the variable in brackets, then to the target's default.",
    )
    add = parser.add_argument
    add("--out", required=True, type=Path, help="file to write; '-' for stdout")
    add(
        "--target",
        choices=get_args(Target),
        default=env("ATHENA_EDGE_TARGET", "local"),
        help="[ATHENA_EDGE_TARGET]",
    )
    add("--namespace", default=env("ATHENA_EDGE_NAMESPACE"), help="of the Services [ATHENA_EDGE_NAMESPACE]")
    add("--listen-host", default=env("ATHENA_EDGE_HOST"), help="[ATHENA_EDGE_HOST]")
    add("--port", type=int, default=env("ATHENA_EDGE_PORT"), help="[ATHENA_EDGE_PORT] 8080")
    add("--admin-port", type=int, default=env("ATHENA_EDGE_ADMIN_PORT"), help="[ATHENA_EDGE_ADMIN_PORT] 9901")
    add(
        "--ops-port",
        type=int,
        default=env("ATHENA_EDGE_OPS_PORT"),
        help="/ready and /stats/prometheus; 0: none [ATHENA_EDGE_OPS_PORT] 9902 in Kubernetes",
    )
    for field in UPSTREAM_FIELDS:
        variable = f"ATHENA_EDGE_{field.upper()}"
        kind = int if field.endswith("_port") else str
        add(f"--{field.replace('_', '-')}", type=kind, default=env(variable), help=f"[{variable}]")
    add(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        help="repeatable [ATHENA_EDGE_ALLOWED_ORIGINS, comma-separated] the edge's loopback origins",
    )
    add("--jwt-issuer", default=env("ATHENA_JWT_ISSUER"), help="[ATHENA_JWT_ISSUER] athenaos")
    add("--jwt-audience", action="append", dest="jwt_audiences", help="repeatable [ATHENA_JWT_AUDIENCE]")
    add(
        "--otlp-endpoint",
        default=env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="OTLP/gRPC collector for the edge's spans; '' for none [OTEL_EXPORTER_OTLP_ENDPOINT]",
    )
    add(
        "--trace-sampling",
        type=float,
        default=trace_sampling_from(os.environ),
        help="fraction of unsampled requests traced [OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG] 1.0",
    )
    add(
        "--web-root",
        type=Path,
        default=env("ATHENA_EDGE_WEB_ROOT"),
        help="built web app [ATHENA_EDGE_WEB_ROOT]",
    )
    add(
        "--web-root-in-envoy",
        type=Path,
        default=env("ATHENA_EDGE_WEB_ROOT_IN_ENVOY"),
        help="where Envoy finds the web app, if elsewhere [ATHENA_EDGE_WEB_ROOT_IN_ENVOY]",
    )
    return parser


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def config_from_args(argv: Sequence[str] | None = None) -> tuple[EdgeConfig, Path]:
    """The configuration and output path named by the command line and the ATHENA_* variables."""
    args = _parser().parse_args(argv)
    config = EdgeConfig.for_target(args.target, namespace=args.namespace)
    given = {
        "listen_host": args.listen_host,
        "listen_port": args.port,
        "admin_port": args.admin_port,
        **{field: getattr(args, field) for field in UPSTREAM_FIELDS},
        "jwt_issuer": args.jwt_issuer,
        "web_root": args.web_root.resolve() if args.web_root else None,
        "web_root_in_envoy": args.web_root_in_envoy,
    }
    changes: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if args.ops_port is not None:
        changes["ops_port"] = args.ops_port or None
    if args.otlp_endpoint is not None:
        changes["otlp_endpoint"] = args.otlp_endpoint or None
    if args.trace_sampling is not None:
        changes["trace_sampling"] = args.trace_sampling
    port = changes.get("listen_port", config.listen_port)
    origins = args.allowed_origins or _env_list("ATHENA_EDGE_ALLOWED_ORIGINS")
    changes["allowed_origins"] = tuple(origins or (f"http://127.0.0.1:{port}", f"http://localhost:{port}"))
    audiences = args.jwt_audiences or _env_list("ATHENA_JWT_AUDIENCE")
    if audiences:
        changes["jwt_audiences"] = tuple(audiences)
    return dataclasses.replace(config, **changes), args.out


def main(argv: Sequence[str] | None = None) -> None:
    """Render and write the bootstrap named by the command line."""
    config, out = config_from_args(argv)
    text = json.dumps(render(config), indent=2) + "\n"
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
