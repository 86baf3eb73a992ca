"""What every service shares for Prometheus metrics: exemplars and the `/metrics` exposition.

Metrics of ours are named `athena_*` with their unit in the name (`_seconds`, `_total`); their labels take
few values (an agent, a model from the catalog, a tool the registry knows, a status code), never a user,
conversation or free text. Each module declares the metrics it records next to the code that records them
(`orchestrator.metrics`, `mesh.events`, `webhooks.endpoints`, ...); the SLO rules and the dashboard in
`observability/` name them, and `tests/unit/test_observability.py` checks that every name they use exists.

Exemplars: a histogram observation made while an OpenTelemetry span is recording carries the span's trace
id (`exemplar()`), so a slow bucket on a dashboard leads to the trace of a turn that fell in it. Prometheus
only sees exemplars in the OpenMetrics format, which `exposition` serves to a scraper that asks for it.
"""

from __future__ import annotations

from opentelemetry import trace
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector


def exemplar() -> dict[str, str] | None:
    """`{"trace_id": ...}` of the span recording now, for `Histogram.observe(..., exemplar=...)`; None
    when no span records (tracing off, or not sampled): an exemplar must lead to a trace that exists."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    return {"trace_id": format(span.get_span_context().trace_id, "032x")}


def exposition(accept: str | None, registry: Collector = REGISTRY) -> tuple[bytes, str]:
    """The registry's metrics and their content type, in the format `accept` prefers: OpenMetrics (with
    exemplars) when the scraper asks for `application/openmetrics-text`, as Prometheus does, else the text
    format 0.0.4."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
