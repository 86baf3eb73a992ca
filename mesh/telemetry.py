"""JSON logs and OpenTelemetry tracing, configured once per process."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from mesh.context import current_call


class _RequestIdFilter(logging.Filter):
    """Stamps every record with the current call's request id, so logs of one turn can be joined."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            call = current_call.get()
            record.request_id = call.request_id if call else None
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


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    """A tracer provider exporting to `otlp_endpoint`. Without one tracing is off: no provider is set,
    `tracing_on()` is false, and servers and channels install no tracing interceptor, so a call pays
    nothing for spans nobody would see."""
    if not otlp_endpoint:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"athena-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)


def tracing_on() -> bool:
    """Whether `configure_tracing` set up an exporting provider in this process."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)
