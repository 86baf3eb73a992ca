"""A tiny OTLP/gRPC trace receiver: where `make run`, the benchmarks and the tracing tests send spans when no
collector is at hand.

It serves opentelemetry-proto's `TraceService/Export` on loopback and either keeps every span it receives
(`OtlpSink(keep=True)`, for a test to read) or only counts them (the benchmark's sink: what receiving costs
is not what is measured). It is not a collector: nothing is stored, forwarded or shown.

    python -m devstack.otlp_sink --port 4317      # counts; prints the count each 10 s and when stopped

and point the mesh at it: `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 make run`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as received, with the `service.name` of the process that sent it."""

    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_span_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return {attribute.key: _value(attribute.value) for attribute in self.span.attributes}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, kind) if kind else None


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """The receiver's servicer: counts the spans of every export, and keeps them when `keep`."""

    def __init__(self, *, keep: bool = False) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.count = 0

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = 0
        kept: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    attribute.value.string_value
                    for attribute in resource_spans.resource.attributes
                    if attribute.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                received += len(scope_spans.spans)
                if self._keep:
                    kept += [ReceivedSpan(service, span) for span in scope_spans.spans]
        with self._lock:
            self.count += received
            self._spans += kept
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, where: Callable[[ReceivedSpan], bool] = lambda _: True) -> list[ReceivedSpan]:
        """The spans kept so far that `where` accepts."""
        with self._lock:
            return [span for span in self._spans if where(span)]


def serve(sink: OtlpSink, port: int, host: str = "127.0.0.1") -> grpc.Server:
    """A started server of `sink` on `host:port`; the caller stops it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.otlp_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between counts printed")
    args = parser.parse_args(list(argv) if argv is not None else None)
    sink = OtlpSink()
    server = serve(sink, args.port, args.host)
    print(f"OTLP sink listening on {args.host}:{args.port}", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.wait(args.every):
        print(f"spans received: {sink.count}", flush=True)
    server.stop(grace=1).wait()
    print(f"spans received: {sink.count}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
