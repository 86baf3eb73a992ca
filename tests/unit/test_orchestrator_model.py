"""Retrying model calls: what is retried, when it stops, and what the caller is told."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest
from doubles.model import ScriptedModel, ScriptedReply

from mesh.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from orchestrator.model import (
    ChatModel,
    ModelEvent,
    ModelRejected,
    ModelRequest,
    ModelTimeout,
    ModelUnavailable,
    RetryingModel,
    StepFinished,
    TextChunk,
)

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
