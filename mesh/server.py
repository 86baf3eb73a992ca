"""The one way every AthenaOS service starts and stops.

`MeshServer` builds a `grpc.aio` server with the interceptors of `mesh.interceptors` (plus OpenTelemetry's
outside them and `mesh.validation`'s inside them),
`grpc.health.v1` with a status per service name, server reflection, keepalive and `max_connection_age`
options, and the HTTP side port (`/metrics`). `drain` stops it: health flips to NOT_SERVING first, then
in-flight calls get `drain_seconds` to finish. Services do not build it themselves: `mesh.app` does, from
what a service's `build` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from mesh.http import HttpSidePort
from mesh.interceptors import (
    AccessLogInterceptor,
    AuthInterceptor,
    CallContextInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    TracingInterceptor,
    WrappedOnce,
)
from mesh.quiet import Quiet
from mesh.requests import RequestReader
from mesh.settings import ServiceSettings
from mesh.telemetry import tracing_on
from mesh.tokens import TokenVerifier
from mesh.validation import ValidationInterceptor, shared_validator

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME
REFLECTION_SERVICE = reflection.SERVICE_NAME


def untraced(method: str) -> bool:
    """The calls that get no span while tracing: health checks (Envoy's every 2 s, the kubelet's probes)
    and reflection, none of which is anyone's work (each would be a trace of its own)."""
    return method.startswith((f"/{HEALTH_SERVICE}/", "/grpc.reflection."))


EDGE_REFLECTION_HEADER = "x-athena-edge-reflection"
"""Envoy sets this on reflection calls it forwards, so the router can present the whole public API."""
ALWAYS_PUBLIC = (HEALTH_SERVICE, REFLECTION_SERVICE)
LIVENESS = "liveness"
"""Health name that says only "the process works": SERVING from start to drain, whatever the readiness
check says, so a liveness probe does not restart a pod whose database is down (readiness handles that)."""


@dataclass(frozen=True)
class Service:
    """A servicer with the generated function that registers it and its full proto service name."""

    name: str
    servicer: Any
    register: Callable[[Any, grpc.aio.Server], None]


ReadinessCheck = Callable[[], Awaitable[bool]]


GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
"""What every process of the mesh runs gRPC with, as the `GRPC_EXPERIMENTS` environment variable (read once,
when grpc is imported: it is set where processes start, in `devstack`, the Makefile, the Dockerfile and
`k8s/base/config/shared.env`). grpcio 1.85 carries TCP on its EventEngine by default, whose threads
hand every read and write on before grpc.aio's own poller thread and the event loop see it; with the
EventEngine client, listener and endpoints turned off, grpc's older I/O path carries them instead.
Measured, grpc.aio on uvloop, loopback: a unary call's client CPU 162-199 µs against 202-254, its round
trip 375-476 µs against 462-545; a stream of 21 messages' client CPU 0.33-0.55 ms against 0.62-0.84.
A later grpcio that drops these experiments ignores the names (it logs them as unknown)."""


class MeshServer:
    """One service process's gRPC server and HTTP side port."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        services: Sequence[Service],
        *,
        verifier: TokenVerifier,
        public_methods: Iterable[str] = (),
        service_methods: Iterable[str] = (),
        http_routes: Iterable[web.RouteDef] = (),
        edge_reflection_services: Sequence[str] = (),
        readiness: ReadinessCheck | None = None,
        quiet: Quiet | None = None,
    ) -> None:
        self.name = name
        self.quiet = quiet or Quiet()
        self.settings = settings
        self.services = list(services)
        self.verifier = verifier
        self._public = (*ALWAYS_PUBLIC, *public_methods)
        self._service_methods = tuple(service_methods)
        self._edge_reflection = list(edge_reflection_services)
        self._readiness = readiness
        self._readiness_task: asyncio.Task[None] | None = None
        self._draining = False
        self.health = HealthServicer()
        self.http = HttpSidePort(settings.host, settings.http_port, http_routes)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def service_names(self) -> list[str]:
        return [service.name for service in self.services]

    def _options(self) -> list[tuple[str, int]]:
        s = self.settings
        return [
            ("grpc.so_reuseport", 0),  # two servers on one port is a misconfiguration, not load balancing
            ("grpc.keepalive_time_ms", int(s.keepalive_time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.max_connection_age_ms", int(s.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_seconds * 1000)),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            # A client may hold this many calls open on one connection; Envoy opens another connection
            # when it needs more, and a misbehaving client cannot pile up calls without bound.
            ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ]

    async def start(self) -> None:
        interceptors = [
            RequestReader(self.settings.request_read_timeout_seconds),
            *([TracingInterceptor(untraced)] if tracing_on() else []),
            CallContextInterceptor(self.quiet),
            AccessLogInterceptor(),
            MetricsInterceptor(),
            ErrorInterceptor(),
            AuthInterceptor(
                self.verifier,
                self._public,
                self._service_methods,
                self.settings.service_key.get_secret_value() if self.settings.service_key else None,
            ),
            ValidationInterceptor(shared_validator()),
        ]
        server = grpc.aio.server(interceptors=[WrappedOnce(interceptors)], options=self._options())
        for service in self.services:
            service.register(service.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [*self.service_names, HEALTH_SERVICE, REFLECTION_SERVICE]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            _Reflection(names, [*self._edge_reflection, HEALTH_SERVICE, REFLECTION_SERVICE]), server
        )
        self.port = server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        await server.start()
        self._server = server
        await self.http.start()
        await self._set_health(serving=True)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        if self._readiness is not None:
            self._readiness_task = asyncio.create_task(self._watch_readiness(), name=f"{self.name}-readiness")
        log.info(
            "serving",
            extra={
                "grpc_port": self.port,
                "http_port": self.http.port,
                "services": self.service_names,
                "grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", ""),
            },
        )

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def _watch_readiness(self) -> None:
        assert self._readiness is not None
        serving = True
        while not self._draining:
            try:
                ready = await self._readiness()
            except Exception:  # a failing check means not ready, never a dead watcher
                log.exception("readiness check failed")
                ready = False
            if ready != serving and not self._draining:
                serving = ready
                await self._set_health(serving=ready)
                log.warning("health changed", extra={"serving": ready})
            await asyncio.sleep(self.settings.readiness_interval_seconds)

    async def drain(self) -> None:
        """NOT_SERVING first, so health-checking balancers stop sending; then let calls finish."""
        if self._server is None or self._draining:
            return
        self._draining = True
        log.info("draining", extra={"grace_seconds": self.settings.drain_seconds})
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.settings.drain_seconds)
        await self.http.stop()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


class _Reflection(ReflectionServicer):  # type: ignore[misc]
    """Lists this server's services; through the edge (marked by Envoy's header), the public API instead."""

    def __init__(self, own: Sequence[str], through_edge: Sequence[str]) -> None:
        super().__init__(own)
        self._edge = ReflectionServicer(through_edge) if len(through_edge) > 2 else None

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterable[reflection_pb2.ServerReflectionResponse]:
        via_edge = any(key == EDGE_REFLECTION_HEADER for key, _ in context.invocation_metadata() or ())
        if via_edge and self._edge is not None:
            responses = self._edge.ServerReflectionInfo(request_iterator, context)
        else:
            responses = super().ServerReflectionInfo(request_iterator, context)
        async for response in responses:
            yield response
