"""JSON logs and OpenTelemetry tracing, configured once per process.

Tracing is off unless `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector (OTLP/gRPC). When it is on:

- spans go to that collector through a batch processor; the standard variables apply as the SDK reads them:
  `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`: a trace the caller
  sampled, a `traceparent` with the sampled flag, is kept), `OTEL_SERVICE_NAME` (default `athena-<service>`),
  `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`;
- every gRPC call a server serves is a SERVER span (`mesh.interceptors.TracingInterceptor`), child of the
  `traceparent` its caller sent: channels add the current span's to every call they make
  (`mesh.clients`); there is no CLIENT span per peer call (the caller's span, the model call's or the
  tool's, is the parent), which keeps a hop at one span. asyncpg and redis-py are instrumented for the
  whole process: every query and Redis command made while serving a call is a child span of it. A model
  call is one CLIENT span after the GenAI conventions (`mesh.genai`), whose context its HTTP request
  carries (`mesh.model_api`): no HTTP span below it (the same request twice);
- a client span without a parent (a query of a maintenance loop, a readiness ping, the revocation feed's
  blocking read every half second) is not recorded: traces start where work for someone starts;
- every JSON log line written inside a span carries `trace_id` and `span_id`.

Off (also with `OTEL_SDK_DISABLED=true`), no provider is set, `tracing_on()` is false, nothing is
instrumented and no interceptor is installed, so a call pays nothing for spans nobody would see.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import default_getter, default_setter
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.trace import Link, Span, SpanKind, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from pythonjsonlogger.json import JsonFormatter

from mesh.context import current_call

_W3C = TraceContextTextMapPropagator()


class _RequestIdFilter(logging.Filter):
    """Stamps every record with the current call's request id, so logs of one turn can be joined."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            call = current_call.get()
            record.request_id = call.request_id if call else None
        return True


class _TraceIdFilter(logging.Filter):
    """Stamps a record written inside a recorded span with its `trace_id` and `span_id` (lowercase hex, as
    in `traceparent`), so a trace's log lines can be found from the trace and the other way round."""

    def filter(self, record: logging.LogRecord) -> bool:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


def configure_logging(service: str, level: str) -> None:
    """JSON lines on stderr: timestamp, level, logger, message, service and the record's extras."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiohttp.access", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_capture_message_content = False


def capturing_message_content() -> bool:
    """Whether model calls' spans record what was said (`mesh.genai`; see `configure_tracing`)."""
    return _capture_message_content


def configure_tracing(
    service: str, otlp_endpoint: str | None, *, capture_message_content: bool = False
) -> None:
    """A tracer provider exporting to `otlp_endpoint` (see the module's docstring); nothing without one.
    `capture_message_content` (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT) lets model calls' spans
    record what people said and were answered."""
    if not otlp_endpoint or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    global _capture_message_content  # process-wide, like the tracer provider itself
    _capture_message_content = capture_message_content
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over our default name (Resource.create would let
    # attributes given here win over both).
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": f"athena-{service}"})
    provider = TracerProvider(resource=resource, sampler=RootedByWork())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _untraced_transaction_boundaries()
    RedisInstrumentor().instrument()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_TraceIdFilter())


TRANSACTION_BOUNDARIES = ("BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION", "END")
"""Statements that get no span of their own (`_untraced_transaction_boundaries`)."""


def _untraced_transaction_boundaries() -> None:
    """Statements opening or ending a transaction get no span: its other statements are spans, and the
    boundaries were a third of a turn's database spans, each costing the service tens of microseconds
    (created, then exported) on the turn's path. memory's BEGIN also carries the row-level-security user
    as a literal (`memory.database`), which a span would otherwise show. Wraps `Connection.execute`
    around the asyncpg instrumentation's own wrapper (asyncpg's `Transaction` executes through it too)."""
    import wrapt
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    async def execute(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        query = args[0] if args else kwargs.get("query", "")
        if isinstance(query, str) and query.lstrip()[:17].upper().startswith(TRANSACTION_BOUNDARIES):
            with suppress_instrumentation():
                return await wrapped(*args, **kwargs)
        return await wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper("asyncpg.connection", "Connection.execute", execute)


class RootedByWork(sampling.Sampler):
    """The sampler `OTEL_TRACES_SAMPLER` names (the SDK's own choice from the environment), except that a
    CLIENT span without a parent is dropped (see the module's docstring)."""

    def __init__(self) -> None:
        self._configured = sampling._get_from_env_or_default()  # what TracerProvider() would choose

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self._configured.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RootedByWork{{{self._configured.get_description()}}}"


_TRACERS: dict[tuple[object, str], trace.Tracer] = {}


def tracer(name: str) -> trace.Tracer:
    """The tracer `name` of the current provider, made once (`trace.get_tracer` builds a new one, with its
    instrumentation scope, at every call: a tenth of a span's cost)."""
    provider = trace.get_tracer_provider()
    found = _TRACERS.get((provider, name))
    if found is None:
        found = _TRACERS[(provider, name)] = provider.get_tracer(name)
    return found


def tracing_on() -> bool:
    """Whether `configure_tracing` set up an exporting provider in this process."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def inject_trace_context(carrier: MutableMapping[str, str]) -> None:
    """Adds the current span's `traceparent` (and `tracestate`) to `carrier`, when there is one: a message
    handed on through a queue or a stream carries where it came from."""
    _W3C.inject(carrier, setter=default_setter)


def link_from(carrier: Mapping[str, str]) -> list[Link]:
    """A link to the span whose context `carrier` carries (see `inject_trace_context`); none without one.
    Work taken from a stream starts a trace of its own and links to the publisher's: one publisher's trace
    would otherwise grow with every consumer, redelivery and dead letter."""
    parent = trace.get_current_span(_W3C.extract(carrier, getter=default_getter)).get_span_context()
    return [Link(parent)] if parent.is_valid else []


_GRPC_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
"""The statuses that make a server span an error (OpenTelemetry's RPC conventions for gRPC servers): the
others are answers to the caller's request, not failures of the service."""


class ServerSpan:
    """The span of one served call (`server_span`)."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def ended_with(self, status: str, code: int) -> None:
        """Records the call's final status: its `grpc.StatusCode` name and number."""
        self._span.set_attribute("rpc.grpc.status_code", code)
        if status in _GRPC_ERRORS:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, status))


@contextmanager
def server_span(method: str, carrier: Mapping[str, str]) -> Iterator[ServerSpan]:
    """The SERVER span of a gRPC call to `method` ("/package.Service/Method"), current inside the block,
    child of the `traceparent` in `carrier` (the call's metadata) when there is one."""
    service, _, name = method.lstrip("/").rpartition("/")
    parent = _W3C.extract(carrier, getter=default_getter) if carrier else None
    with tracer("athena.mesh").start_as_current_span(
        method,
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield ServerSpan(span)


def outgoing_trace_context() -> tuple[tuple[str, str], ...]:
    """The current span's `traceparent` (and `tracestate`) as gRPC metadata for a call made now; none
    outside a recorded span (nor while tracing is off: a model request pays one check)."""
    if not tracing_on():
        return ()
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, setter=default_setter)
    return tuple(carrier.items())


@contextmanager
def traced(
    name: str,
    kind: SpanKind,
    *,
    attributes: Mapping[str, Any] | None = None,
    remote_parent: Mapping[str, str] | None = None,
    linked_from: Mapping[str, str] | None = None,
    new_trace: bool = False,
) -> Iterator[Span | None]:
    """A span around the block, current inside it; None (and nothing else done, nothing read) while tracing
    is off. `remote_parent`: headers whose `traceparent` names the parent (a request arriving over HTTP);
    `linked_from`: a carrier (see `inject_trace_context`) whose span this one links to; `new_trace`: a root
    even inside another span (work taken from a stream, `linked_from` its entry)."""
    if not tracing_on():
        yield None
        return
    if new_trace:
        parent: otel_context.Context | None = otel_context.Context()
    elif remote_parent is not None:
        parent = _W3C.extract(remote_parent, getter=default_getter)
    else:
        parent = None
    links = link_from(linked_from) if linked_from is not None else ()
    with tracer("athena.mesh").start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, links=links, record_exception=False
    ) as span:
        yield span
