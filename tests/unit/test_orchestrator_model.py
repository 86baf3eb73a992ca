"""Model calls: reading the answer's event stream, what is retried, when it stops, and what the caller is
told."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from doubles.model import ScriptedModel, ScriptedReply
from opentelemetry.trace import SpanKind, StatusCode
from tracing_fixtures import recording_spans

from devstack.process import free_port
from mesh import telemetry
from mesh.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from mesh.model_api import ModelApi, client_session
from mesh.settings import ServiceSettings
from mesh.telemetry import traced
from orchestrator.catalog import Catalog
from orchestrator.coalesce import read_pause
from orchestrator.model import (
    ChatModel,
    ModelEvent,
    ModelRejected,
    ModelRequest,
    ModelTimeout,
    ModelToolCall,
    ModelUnavailable,
    OpenAIChatModel,
    RetryingModel,
    ServerSentEvents,
    StepFinished,
    TextChunk,
    ToolSpec,
    model_events,
    paced,
)
from orchestrator.records import Usage
from orchestrator.tools.handoff import handoff_tool

REQUEST = ModelRequest(model="m", messages=({"role": "user", "content": "hi"},))


async def drain(model: ChatModel) -> list[ModelEvent]:
    return [event async for event in model.stream(REQUEST)]


def retrying(inner: ChatModel, **kwargs: object) -> RetryingModel:
    return RetryingModel(inner, first_delay=0.001, max_delay=0.002, **kwargs)  # type: ignore[arg-type]


async def test_rate_limits_and_server_errors_are_retried_until_the_model_answers() -> None:
    inner = ScriptedModel(
        [
            ScriptedReply(error=ModelUnavailable("the model is rate limited (HTTP 429)")),
            ScriptedReply(error=ModelTimeout("the model did not answer in time")),
            ScriptedReply("fine"),
        ]
    )
    events = await drain(retrying(inner, attempts=3))
    assert events[0] == TextChunk("fine")
    assert isinstance(events[-1], StepFinished)
    assert len(inner.requests) == 3


async def test_after_the_last_attempt_the_error_says_unavailable_and_why() -> None:
    inner = ScriptedModel(
        lambda request: ScriptedReply(error=ModelUnavailable("the model failed (HTTP 503)"))
    )
    with pytest.raises(Unavailable, match=r"HTTP 503\) after 2 attempts") as raised:
        await drain(retrying(inner, attempts=2))
    assert not isinstance(raised.value, ModelUnavailable)
    assert len(inner.requests) == 2


async def test_timeouts_end_as_deadline_exceeded() -> None:
    inner = ScriptedModel(
        lambda request: ScriptedReply(error=ModelTimeout("the model did not answer in time"))
    )
    with pytest.raises(DeadlineExceeded, match="did not answer in time"):
        await drain(retrying(inner, attempts=2))


async def test_no_retry_when_the_deadline_leaves_no_time() -> None:
    inner = ScriptedModel(
        lambda request: ScriptedReply(error=ModelUnavailable("the model failed (HTTP 502)"))
    )
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await drain(retrying(inner, attempts=5, time_remaining=lambda: 0.05))
    assert len(inner.requests) == 1


async def test_each_attempt_gets_the_time_left_before_the_deadline() -> None:
    inner = ScriptedModel([ScriptedReply("ok")])
    await drain(retrying(inner, timeout=60, time_remaining=lambda: 2.0, margin=0.1))
    assert inner.requests[0].timeout == pytest.approx(1.9)


async def test_rejected_requests_are_not_retried() -> None:
    inner = ScriptedModel(lambda request: ScriptedReply(error=ModelRejected("refused (HTTP 400)")))
    with pytest.raises(FailedPrecondition):
        await drain(retrying(inner, attempts=3))
    assert len(inner.requests) == 1


class _FailsMidStream(ChatModel):
    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self.calls += 1
        yield TextChunk("partial")
        raise ModelUnavailable("the model endpoint is unreachable")


async def test_a_call_that_already_streamed_text_is_never_retried() -> None:
    inner = _FailsMidStream()
    seen: list[ModelEvent] = []
    with pytest.raises(Unavailable, match="unreachable"):
        async for event in retrying(inner, attempts=3).stream(REQUEST):
            seen.append(event)
    assert inner.calls == 1
    assert seen == [TextChunk("partial")]


# -- reading the event stream ------------------------------------------------------------------------


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def delta(content: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content, **extra}, "finish_reason": None}]}


def test_events_split_anywhere_across_reads_are_decoded_once_whole() -> None:
    body = b": keep-alive\n\n" + sse(delta("Hello"), delta(" world"), {"choices": [], "usage": {}})
    body = body.replace(b"\n\n", b"\r\n\r\n", 2)  # servers may end lines either way
    for cut in range(1, len(body)):
        events = ServerSentEvents()
        decoded = events.feed(body[:cut]) + events.feed(body[cut:])
        contents = [d["choices"][0]["delta"]["content"] if d["choices"] else "usage" for d in decoded]
        assert contents == ["Hello", " world", "usage"]
        assert events.done


async def arriving(reads: list[bytes]) -> AsyncIterator[bytes]:
    for read in reads:
        yield read


async def events_of(reads: list[bytes]) -> list[Any]:
    """What the model's events are when its answer arrives in exactly these reads."""
    return [event async for event in model_events(arriving(reads))]


async def test_text_received_together_is_passed_on_as_one_chunk() -> None:
    """When the reader falls behind, what piled up arrives in one read: one TextChunk, not one per word."""
    words = [delta(word) for word in ("one ", "two ", "three ", "four")]
    events = await events_of([sse(*words[:1], done=False), sse(*words[1:], done=False), sse(done=True)])
    assert [event.text for event in events if isinstance(event, TextChunk)] == ["one ", "two three four"]
    assert isinstance(events[-1], StepFinished)


async def test_tool_calls_are_assembled_from_their_pieces() -> None:
    first = {"index": 0, "id": "call_1", "function": {"name": "remember_", "arguments": '{"te'}}
    rest = {"index": 0, "function": {"name": "memory", "arguments": 'xt": "tea"}'}}
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    [finished] = await events_of([sse(delta(tool_calls=[first]), delta(tool_calls=[rest]), finish, usage)])
    assert finished == StepFinished(
        tool_calls=(ModelToolCall("call_1", "remember_memory", '{"text": "tea"}'),),
        usage=Usage(7, 2),
        finish_reason="tool_calls",
    )


@pytest.mark.parametrize(
    ("reads", "error"),
    [
        ([b'data: {"error": {"message": "overloaded"}}\n\n'], ModelUnavailable),
        ([b"data: {not json\n\n"], ModelUnavailable),
    ],
)
async def test_a_stream_that_breaks_its_format_is_unavailable(
    reads: list[bytes], error: type[Exception]
) -> None:
    with pytest.raises(error, match="answered with an error"):
        await events_of(reads)


@dataclass
class ModelServer:
    url: str
    answers: list[tuple[int, bytes]]
    """What the next requests are answered (status, body); status 0 never answers."""
    seen: list[web.Request]
    bodies: list[Any]
    """The JSON of each request, in order."""


@pytest_asyncio.fixture
async def model_server() -> AsyncIterator[ModelServer]:
    """A Chat Completions endpoint on loopback answering what the test puts in `answers`."""
    answers: list[tuple[int, bytes]] = []
    seen: list[web.Request] = []
    bodies: list[Any] = []

    async def complete(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        bodies.append(await request.json())
        status, body = answers.pop(0)
        if status == 0:
            await asyncio.sleep(30)
        response = web.StreamResponse(status=status, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield ModelServer(str(server.make_url("/v1")), answers, seen, bodies)
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def model_at(url: str) -> AsyncIterator[OpenAIChatModel]:
    session = client_session()
    try:
        yield OpenAIChatModel(ModelApi(url, "test-key", session))
    finally:
        await session.close()


async def test_an_answer_streams_from_the_endpoint_with_the_key(model_server: ModelServer) -> None:
    model_server.answers.append((200, sse(delta("Hello"), delta(" there"))))
    async with model_at(model_server.url) as model:
        events = [event async for event in model.stream(REQUEST)]
    assert "".join(event.text for event in events if isinstance(event, TextChunk)) == "Hello there"
    assert isinstance(events[-1], StepFinished)
    [request] = model_server.seen
    assert request.headers["authorization"] == "Bearer test-key"


async def paced_answer(pause: float | None) -> list[str]:
    """The text chunks of an answer whose words come 30 ms apart, read with `read_pause` at `pause`."""

    async def complete(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for word in ("one ", "two ", "three"):
            await response.write(sse(delta(word), done=False))
            await asyncio.sleep(0.03)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    token = read_pause.set(None if pause is None else lambda: pause)
    try:
        async with model_at(str(server.make_url("/v1"))) as model:
            return [event.text async for event in model.stream(REQUEST) if isinstance(event, TextChunk)]
    finally:
        read_pause.reset(token)
        await server.close()


async def test_a_turn_asking_for_pauses_reads_what_came_meanwhile_at_once() -> None:
    assert await paced_answer(None) == ["one ", "two ", "three"]
    paced = await paced_answer(0.2)  # all of the rest comes while the first pause lasts
    assert "".join(paced) == "one two three"
    assert len(paced) <= 2
    assert paced[-1].endswith("two three")


class Transport:
    """What `paced` uses of the connection's transport; its calls, and the reads, go to `log`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False
        self.log.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.log.append("resume")


async def test_a_pause_stops_the_connection_reading_until_the_next_read() -> None:
    log: list[str] = []
    transport = Transport(log)

    async def reads() -> AsyncGenerator[bytes, None]:
        for piece in (b"a", b"b"):
            assert transport.reading, "read while the connection does not read"
            log.append("read")
            yield piece

    got = [piece async for piece in paced(reads(), lambda: 0.01, transport)]
    assert got == [b"a", b"b"]
    assert log == ["read", "pause", "resume", "read", "pause", "resume"]
    log.clear()
    assert [piece async for piece in paced(reads(), lambda: 0.0, transport)] == [b"a", b"b"]
    assert log == ["read", "read"]  # no pause asked for: the connection reads on


async def test_a_turn_closed_during_a_pause_leaves_its_connection_reading() -> None:
    transport = Transport([])

    async def reads() -> AsyncGenerator[bytes, None]:
        yield b"a"
        yield b"b"

    pieces = paced(reads(), lambda: 10.0, transport)
    iterator = aiter(pieces)
    assert await anext(iterator) == b"a"
    pausing = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0.01)
    assert not transport.reading
    pausing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pausing
    assert transport.reading  # a connection going back to the pool must not stay paused


async def test_the_request_offers_the_tools_each_encoded_once(model_server: ModelServer) -> None:
    lookup = ToolSpec(
        "lookup", "Looks a word up.", {"type": "object", "properties": {"w": {"type": "string"}}}
    )
    handoff = handoff_tool(next(iter(Catalog.load())))
    model_server.answers += [(200, sse(delta("Hi"))), (200, sse(delta("Hi")))]
    async with model_at(model_server.url) as model:
        [event async for event in model.stream(replace(REQUEST, tools=(lookup, handoff)))]
        await drain(model)
    offered, plain = model_server.bodies
    assert offered == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [lookup.openai, handoff.openai],
    }
    assert "tools" not in plain


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (503, ModelUnavailable, "HTTP 503"),
        (429, ModelUnavailable, "rate limited"),
        (409, ModelUnavailable, "HTTP 409"),
        (400, ModelRejected, "HTTP 400"),
        (401, ModelRejected, "HTTP 401"),
    ],
)
async def test_an_error_status_is_translated_before_any_text(
    model_server: ModelServer, status: int, error: type[Exception], message: str
) -> None:
    model_server.answers.append((status, b'{"error": {"message": "secret detail"}}'))
    async with model_at(model_server.url) as model:
        with pytest.raises(error, match=message) as raised:
            await drain(model)
    assert "secret detail" not in str(raised.value)


async def test_a_silent_endpoint_times_out_and_an_absent_one_is_unreachable(
    model_server: ModelServer,
) -> None:
    model_server.answers.append((0, b""))
    async with model_at(model_server.url) as model:
        with pytest.raises(ModelTimeout):
            await drain_with(model, ModelRequest("m", REQUEST.messages, timeout=0.2))
    async with model_at(f"http://127.0.0.1:{free_port()}/v1") as model:
        with pytest.raises(ModelUnavailable, match="unreachable"):
            await drain(model)


async def drain_with(model: ChatModel, request: ModelRequest) -> list[ModelEvent]:
    return [event async for event in model.stream(request)]


# --- the model call's span (mesh.genai), recorded in this process


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[None]:
    """A SERVER span around the block, as a served call has (a client span without a parent is dropped)."""
    with traced("served", SpanKind.SERVER):
        yield


def answer_with_usage() -> bytes:
    return sse(
        {**delta("Hello"), "model": "m-2025"},
        {**delta(" there"), "model": "m-2025"},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "model": "m-2025"},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}, "model": "m-2025"},
    )


async def test_a_model_call_is_one_genai_span_without_what_was_said(model_server: ModelServer) -> None:
    model_server.answers.append((200, answer_with_usage()))
    with recording_spans() as exporter:
        async with model_at(model_server.url) as model, serving():
            events = [event async for event in model.stream(REQUEST)]
    assert isinstance(events[-1], StepFinished)
    assert events[-1].response_model == "m-2025"
    (call,) = [span for span in exporter.get_finished_spans() if span.name == "chat m"]
    attributes = dict(call.attributes or {})
    assert call.kind is SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "m"
    assert attributes["gen_ai.response.model"] == "m-2025"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert 0 < attributes["gen_ai.response.time_to_first_chunk"] < 5
    assert attributes["server.address"] == "127.0.0.1"
    assert [event.name for event in call.events] == ["gen_ai.first_chunk"]
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.output.messages" not in attributes
    (served,) = [span for span in exporter.get_finished_spans() if span.name == "served"]
    assert call.parent is not None
    assert call.parent.span_id == served.context.span_id


async def test_message_content_is_recorded_only_when_asked_for(
    model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    assert ServiceSettings().genai_capture_message_content  # the standard variable, read as a setting
    monkeypatch.setattr(telemetry, "_capture_message_content", True)  # what configure_tracing sets from it
    model_server.answers.append((200, answer_with_usage()))
    with recording_spans() as exporter:
        async with model_at(model_server.url) as model, serving():
            await drain(model)
    (call,) = [span for span in exporter.get_finished_spans() if span.name == "chat m"]
    attributes = dict(call.attributes or {})
    assert json.loads(str(attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    (output,) = json.loads(str(attributes["gen_ai.output.messages"]))
    assert output["parts"] == [{"type": "text", "content": "Hello there"}]
    assert output["finish_reason"] == "stop"


async def test_a_failed_model_call_s_span_says_how_it_failed(model_server: ModelServer) -> None:
    model_server.answers.append((429, b""))
    with recording_spans() as exporter:
        async with model_at(model_server.url) as model, serving():
            with pytest.raises(ModelUnavailable):
                await drain(model)
    (call,) = [span for span in exporter.get_finished_spans() if span.name == "chat m"]
    assert call.status.status_code is StatusCode.ERROR
    assert dict(call.attributes or {})["error.type"] == "ModelUnavailable"


async def test_without_tracing_a_model_call_makes_no_span(model_server: ModelServer) -> None:
    model_server.answers.append((200, answer_with_usage()))
    async with model_at(model_server.url) as model:
        await drain(model)
    [seen] = model_server.seen
    assert "traceparent" not in seen.headers
