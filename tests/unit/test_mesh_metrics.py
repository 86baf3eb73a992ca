"""Exemplars and the exposition format of `/metrics` (`mesh.metrics`)."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, Histogram

from mesh.metrics import exemplar, exposition

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def test_an_observation_inside_a_recording_span_links_its_trace_and_openmetrics_shows_it() -> None:
    registry = CollectorRegistry()
    latency = Histogram("athena_test_seconds", "test", buckets=(0.1, 1), registry=registry)
    tracer = TracerProvider().get_tracer("test")

    assert exemplar() is None  # no span: nothing to link to
    with tracer.start_as_current_span("turn") as span:
        linked = exemplar()
        latency.observe(0.05, linked)
    trace_id = format(span.get_span_context().trace_id, "032x")

    assert linked == {"trace_id": trace_id}
    body, content_type = exposition(OPENMETRICS, registry)
    assert content_type.startswith("application/openmetrics-text")
    assert f'athena_test_seconds_bucket{{le="0.1"}} 1.0 # {{trace_id="{trace_id}"}} 0.05' in body.decode()
    plain, plain_type = exposition(None, registry)
    assert plain_type.startswith("text/plain; version=0.0.4")
    assert b"trace_id" not in plain  # the text format has no exemplars


def test_a_span_that_is_not_sampled_gives_no_exemplar() -> None:
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with tracer.start_as_current_span("turn"):
        assert exemplar() is None
