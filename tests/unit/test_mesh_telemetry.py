"""Tracing's process-wide rules (mesh.telemetry, mesh.genai): off by default, the standard sampler honoured,
no trace started by a client span alone, trace ids on log lines, trace context carried through a message."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from tracing_fixtures import recording_spans

from mesh import genai
from mesh.telemetry import (
    RootedByWork,
    _TraceIdFilter,
    inject_trace_context,
    link_from,
    traced,
    tracing_on,
)


def test_tracing_is_off_unless_configured() -> None:
    assert not tracing_on()
    assert genai.start_model_call("chat", "m", {}) is None
    with traced("work", SpanKind.SERVER) as span, genai.tool_span("remember_memory", "call_1") as tool:
        assert span is None
        assert tool is None
    carrier: dict[str, str] = {}
    inject_trace_context(carrier)
    assert carrier == {}


def test_a_client_span_starts_no_trace_but_is_kept_inside_one() -> None:
    with recording_spans() as exporter:
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("readiness ping", kind=SpanKind.CLIENT) as alone:
            assert not alone.is_recording()
        with (
            tracer.start_as_current_span("served", kind=SpanKind.SERVER),
            tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as inside,
        ):
            assert inside.is_recording()
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["SELECT", "served"]


def test_the_standard_sampler_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert "TraceIdRatioBased{0.25}" in RootedByWork().get_description()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    result = RootedByWork().should_sample(None, 1, "served", SpanKind.SERVER)
    assert not result.decision.is_sampled()


def test_a_log_line_inside_a_span_carries_its_trace_and_span_ids() -> None:
    record = logging.LogRecord("athena", logging.INFO, __file__, 1, "served", None, None)
    with recording_spans(), traced("served", SpanKind.SERVER) as span:
        assert span is not None
        _TraceIdFilter().filter(record)
        context = span.get_span_context()
    assert record.trace_id == format(context.trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(context.span_id, "016x")  # type: ignore[attr-defined]
    outside = logging.LogRecord("athena", logging.INFO, __file__, 1, "idle", None, None)
    _TraceIdFilter().filter(outside)
    assert not hasattr(outside, "trace_id")


def test_a_message_carries_the_publisher_s_context_and_the_consumer_links_to_it() -> None:
    with recording_spans() as exporter:
        fields: dict[str, str] = {"id": "event-1"}
        with traced("send athena:events", SpanKind.PRODUCER) as producer:
            inject_trace_context(fields)
        assert producer is not None
        assert fields["traceparent"].split("-")[2] == format(producer.get_span_context().span_id, "016x")
        # A consumer busy inside other work still starts a trace of its own.
        with (
            traced("served", SpanKind.SERVER),
            traced(
                "process athena:events", SpanKind.CONSUMER, linked_from=fields, new_trace=True
            ) as consumer,
        ):
            assert consumer is not None
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "process athena:events"]
    assert span.parent is None
    assert span.context.trace_id != producer.get_span_context().trace_id
    (link,) = span.links
    assert link.context.span_id == producer.get_span_context().span_id
    assert link_from({"id": "event-2"}) == []


def test_a_tool_call_is_a_span_saying_which_and_how_it_ended() -> None:
    with recording_spans() as exporter, traced("served", SpanKind.SERVER):
        with genai.tool_span("remember_memory", "call_1") as span:
            assert span is not None
            genai.tool_finished(span, is_error=True)
        with genai.tool_span("handoff_to_focus", "call_2") as span:
            assert span is not None
            genai.tool_finished(span, is_error=False, handoff_to="focus")
    spans = {s.name: dict(s.attributes or {}) for s in exporter.get_finished_spans()}
    assert spans["execute_tool remember_memory"]["gen_ai.tool.call.id"] == "call_1"
    assert spans["execute_tool remember_memory"]["error.type"] == "tool_error"
    assert spans["execute_tool handoff_to_focus"]["athena.handoff.to_agent"] == "focus"


async def test_a_model_request_carries_the_span_of_its_call() -> None:
    """A model call is one span (its GenAI CLIENT span): the HTTP request carries that span's context, so a
    traced model server continues the trace, and no HTTP span of its own is made below it."""
    from aiohttp import web

    from mesh.model_api import ModelApi, client_session

    received: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        received.append(request.headers.get("traceparent"))
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_post("/v1/embeddings", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = client_session()
    try:
        api = ModelApi(f"http://127.0.0.1:{port}/v1", "key", session)
        async with api.post("/embeddings", {"input": ["x"]}) as response:  # outside any span
            await response.read()
        with recording_spans() as exporter:
            with traced("served", SpanKind.SERVER):
                call = genai.start_model_call("embeddings", "m", api.server)
                assert call is not None
                with trace.use_span(call.span, end_on_exit=True):
                    async with api.post("/embeddings", {"input": ["x"]}) as response:
                        await response.read()
            (span,) = [s for s in exporter.get_finished_spans() if s.name == "embeddings m"]
    finally:
        await session.close()
        await runner.cleanup()
    assert received[0] is None
    assert received[1] is not None
    assert received[1].split("-")[2] == format(span.context.span_id, "016x")
