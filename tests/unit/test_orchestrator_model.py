"""Model calls: reading the answer's event stream, what is retried, when it stops, and what the caller is
told."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from doubles.model import ScriptedModel, ScriptedReply

from mesh.errors import DeadlineExceeded, FailedPrecondition, Unavailable
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
)
from orchestrator.records import Usage

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


class StreamedBody(httpx2.AsyncByteStream):
    """A response body arriving in the given reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read


def model_answering(reads: list[bytes], status: int = 200) -> OpenAIChatModel:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            status, headers={"content-type": "text/event-stream"}, stream=StreamedBody(reads)
        )

    client = openai.AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)),
    )
    return OpenAIChatModel(client)


async def events_of(model: ChatModel) -> list[Any]:
    return [event async for event in model.stream(ModelRequest("m", ({"role": "user", "content": "hi"},)))]


async def test_text_received_together_is_passed_on_as_one_chunk() -> None:
    """When the reader falls behind, what piled up arrives in one read: one TextChunk, not one per word."""
    words = [delta(word) for word in ("one ", "two ", "three ", "four")]
    model = model_answering([sse(*words[:1], done=False), sse(*words[1:], done=False), sse(done=True)])
    events = await events_of(model)
    assert [event.text for event in events if isinstance(event, TextChunk)] == ["one ", "two three four"]
    assert isinstance(events[-1], StepFinished)


async def test_tool_calls_are_assembled_from_their_pieces() -> None:
    first = {"index": 0, "id": "call_1", "function": {"name": "remember_", "arguments": '{"te'}}
    rest = {"index": 0, "function": {"name": "memory", "arguments": 'xt": "tea"}'}}
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    model = model_answering([sse(delta(tool_calls=[first]), delta(tool_calls=[rest]), finish, usage)])
    [finished] = await events_of(model)
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
        await events_of(model_answering(reads))


async def test_an_error_status_is_translated_before_any_text() -> None:
    with pytest.raises(ModelUnavailable, match="HTTP 503"):
        await events_of(model_answering([b"{}"], status=503))
