"""One chat turn, one trace: the whole mesh started like `make run` with OTEL_EXPORTER_OTLP_ENDPOINT naming an
OTLP receiver this test runs (devstack.otlp_sink, opentelemetry-proto's TraceService) and sampling 1.0. A
turn sent through the edge with a `traceparent`, as the web app sends it, must come back as one trace whose
spans — Envoy, router, orchestrator, memory, PostgreSQL, Redis, the model call, the tool call — each hang
from a span of that trace, and whose log lines carry the trace id."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import grpc
import pytest
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc

from devstack.otlp_sink import OtlpSink, ReceivedSpan, serve
from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SAID = "remember I like oolong tea"
"""What the person says: no span may carry it (message content is not recorded by default)."""


@dataclass
class TracedMesh:
    stack: Stack
    sink: OtlpSink

    @property
    def edge(self) -> str:
        return f"127.0.0.1:{self.stack.config.ports.edge}"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedMesh]:
    sink = OtlpSink(keep=True)
    port = free_port()
    receiver = serve(sink, port)
    ports = Ports(**{field.name: free_port() for field in fields(Ports)})
    extra_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans reach the receiver soon after they end
    }
    stack = Stack(
        StackConfig(
            data_dir=tmp_path_factory.mktemp("traced-mesh"),
            ports=ports,
            offline_delay_ms=0,
            extra_env=extra_env,
        )
    )
    try:
        stack.start()
        yield TracedMesh(stack, sink)
    finally:
        stack.stop()
        receiver.stop(grace=None)


def traceparent(trace_id: str) -> str:
    """A W3C traceparent of `trace_id` with a new parent id and the sampled flag, as the web app makes."""
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def wait_for(
    sink: OtlpSink, trace_id: str, complete: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    """The trace's spans once `complete` accepts them (the batch exporters flush every 100 ms), or fails."""
    deadline = time.monotonic() + 30
    spans: list[ReceivedSpan] = []
    while time.monotonic() < deadline:
        spans = sink.spans(lambda span: span.trace_id == trace_id)
        if complete(spans):
            return spans
        time.sleep(0.1)
    described = sorted(f"{s.service}: {s.name}" for s in spans)
    raise AssertionError("the trace never became complete; received:\n" + "\n".join(described))


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def test_one_chat_turn_is_one_trace_from_the_edge_to_the_database_and_the_model(traced: TracedMesh) -> None:
    trace_id = secrets.token_hex(16)
    sent_parents: set[str] = set()
    with grpc.insecure_channel(traced.edge) as channel:
        login = auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
            auth_pb2.DevLoginRequest(email="traced@example.com"), timeout=10
        )
        token = ("authorization", f"Bearer {login.session.access_token}")
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        header = traceparent(trace_id)
        sent_parents.add(header.split("-")[2])
        events = list(
            chat.Chat(
                chat_pb2.ChatRequest(agent_id="athena", text=SAID),
                metadata=(token, ("traceparent", header)),
                timeout=30,
            )
        )
        assert events[-1].HasField("message_completed")
        assert any(event.HasField("tool_call") for event in events)
        # After the answer the web app refreshes its list of conversations, in the same trace.
        header = traceparent(trace_id)
        sent_parents.add(header.split("-")[2])
        chat.ListConversations(
            chat_pb2.ListConversationsRequest(page_size=10),
            metadata=(token, ("traceparent", header)),
            timeout=10,
        )

    def complete(spans: list[ReceivedSpan]) -> bool:
        services = {span.service for span in spans}
        names = {span.name for span in spans}
        return (
            {"athena-edge", "athena-router", "athena-orchestrator", "athena-memory"} <= services
            and any(name.startswith("chat ") for name in names)
            and any(name.startswith("execute_tool ") for name in names)
            and any(span.attributes.get("db.system") == "redis" for span in spans)
            and any(span.attributes.get("db.system") == "postgresql" for span in spans)
            and sum(span.name == "/athena.chat.v1.ChatService/ListConversations" for span in spans) >= 1
        )

    spans = wait_for(traced.sink, trace_id, complete)
    by_id = {span.span_id: span for span in spans}

    # Every span hangs from a span of this trace, but the edge's, which hang from the browser's (not sent).
    for span in spans:
        if span.service == "athena-edge":
            assert span.parent_span_id in sent_parents, span.name
        else:
            assert span.parent_span_id in by_id, f"{span.service}: {span.name} has no parent in the trace"
            assert ancestors(span, by_id)[-1].service == "athena-edge"

    def service_of_server_span(service: str) -> list[ReceivedSpan]:
        return [s for s in spans if s.service == service and s.span.kind == s.span.SPAN_KIND_SERVER]

    # The chat stream: Envoy → orchestrator (Chat) → memory; the refresh: Envoy → router → memory.
    (orchestrator_chat,) = [
        s for s in service_of_server_span("athena-orchestrator") if s.name.endswith("/Chat")
    ]
    edge_chat = by_id[orchestrator_chat.parent_span_id]
    assert edge_chat.service == "athena-edge"
    assert edge_chat.name == "/athena.chat.v1.ChatService/Chat"  # the route's name
    (router_list,) = service_of_server_span("athena-router")
    assert by_id[router_list.parent_span_id].service == "athena-edge"
    assert by_id[router_list.parent_span_id].name == "athena.chat.v1.ChatService"
    memory_calls = service_of_server_span("athena-memory")
    # A peer call has no CLIENT span: the caller's own span (its call's, the model's, a tool's) is the parent.
    assert {by_id[s.parent_span_id].service for s in memory_calls} <= {"athena-orchestrator", "athena-router"}
    assert not [s for s in spans if s.span.kind == s.span.SPAN_KIND_CLIENT and s.name.startswith("/athena.")]
    assert any(orchestrator_chat in ancestors(s, by_id) for s in memory_calls)
    assert any(router_list in ancestors(s, by_id) for s in memory_calls)

    # PostgreSQL queries made by memory while serving; Redis commands of the turn.
    queries = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    # A transaction's statements, not its boundaries (memory's BEGIN names the user as a literal).
    assert not [q.name for q in queries if q.name in {"BEGIN", "COMMIT", "ROLLBACK"}]
    assert all(ancestors(q, by_id)[0].service == "athena-memory" for q in queries)
    assert any(router_list in ancestors(q, by_id) for q in queries)
    assert any(orchestrator_chat in ancestors(q, by_id) for q in queries)
    assert any(
        orchestrator_chat in ancestors(r, by_id) for r in spans if r.attributes.get("db.system") == "redis"
    )

    # The model call, after the GenAI conventions, inside the turn (its HTTP request carries it: no span of
    # its own, tests/unit/test_mesh_telemetry.py).
    model_calls = [s for s in spans if s.name.startswith("chat ")]
    for call in model_calls:
        attributes = call.attributes
        assert call.service == "athena-orchestrator"
        assert orchestrator_chat in ancestors(call, by_id)
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert call.name == f"chat {attributes['gen_ai.request.model']}"
        assert attributes["gen_ai.response.model"]
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["gen_ai.response.finish_reasons"] in {("stop",), ("tool_calls",)}
        assert attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert {c.attributes["gen_ai.response.finish_reasons"] for c in model_calls} == {
        ("tool_calls",),
        ("stop",),
    }
    (tool,) = [s for s in spans if s.name.startswith("execute_tool ")]
    assert tool.attributes["gen_ai.tool.name"] == "remember_memory"
    assert tool.attributes["gen_ai.tool.call.id"]
    assert orchestrator_chat in ancestors(tool, by_id)

    # What the person said is on no span.
    for span in spans:
        assert "gen_ai.input.messages" not in span.attributes
        assert "gen_ai.output.messages" not in span.attributes
        assert not any("oolong" in str(value) for value in span.attributes.values()), span.name

    # The turn's log lines carry the trace id, in each service that served it: every line of its requests
    # (the edge's x-request-id, passed on with each call) names the trace and one of its spans.
    records = [
        json.loads(line)
        for name in ("router", "orchestrator", "memory")
        for line in (traced.stack.logs / f"{name}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    requests = {record["request_id"] for record in records if record.get("trace_id") == trace_id}
    turn = [record for record in records if record.get("request_id") in requests]
    assert {record["service"] for record in turn} == {"router", "orchestrator", "memory"}
    for record in turn:
        assert record.get("trace_id") == trace_id, record
        assert record["span_id"] in by_id, record


def test_without_a_traceparent_the_edge_starts_the_trace(traced: TracedMesh) -> None:
    """A client that sends no trace context (grpcurl, a service) still gets one trace per call, rooted at
    the edge: sampling 1.0 traces every request."""
    before = {span.trace_id for span in traced.sink.spans()}
    with grpc.insecure_channel(traced.edge) as channel:
        auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
            auth_pb2.DevLoginRequest(email="untraced@example.com"), timeout=10
        )

    def rooted(spans: list[ReceivedSpan]) -> bool:
        return any(s.service == "athena-auth" for s in spans) and any(
            s.service == "athena-edge" for s in spans
        )

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fresh = {s.trace_id for s in traced.sink.spans(lambda s: s.name.endswith("/DevLogin"))} - before
        if fresh:
            spans = wait_for(traced.sink, fresh.pop(), rooted)
            (root,) = [s for s in spans if not s.parent_span_id]
            assert root.service == "athena-edge"
            # Health checks (Envoy's, every 2 s) are nobody's work: no span, no trace.
            assert not traced.sink.spans(lambda s: s.name.startswith("/grpc.health.v1.Health/"))
            return
        time.sleep(0.1)
    raise AssertionError("no trace of the DevLogin call arrived")
