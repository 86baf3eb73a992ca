"""Spans recorded in this process, for tests of what our code puts on them.

`recording_spans()` installs an SDK tracer provider (our sampler, `mesh.telemetry`) exporting to memory as
the process's global provider for the block, so `tracing_on()` is true inside it, and restores the previous
state after it: tests outside the block keep tracing off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from mesh.telemetry import RootedByWork


@contextlib.contextmanager
def recording_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=RootedByWork())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved, saved_once = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved, saved_once
