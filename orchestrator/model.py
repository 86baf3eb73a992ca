"""The LLM boundary: `ChatModel`, its OpenAI implementation and a retrying wrapper.

A model call takes a `ModelRequest` (Chat Completions messages, the tools offered) and streams
`TextChunk`s as they arrive, then one `StepFinished` with the tool calls the model made and its usage.

Errors, translated once here from `mesh.model_api`'s (most specific first):

    ModelUnavailable (mesh Unavailable)      429, 5xx, connection failures: retryable
    ModelTimeout (mesh DeadlineExceeded)     no answer within the attempt's timeout: retryable
    ModelRejected (mesh FailedPrecondition)  400/401/403/404/422: the request or the configuration is wrong

`RetryingModel` retries the retryable ones with backoff while the caller's deadline allows, and only
while the failed attempt streamed nothing (a client never sees text twice).

Tests script the replies (tests/doubles/model.py) instead of reaching a real model.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tenacity import RetryCallState, wait_exponential_jitter

from mesh import genai
from mesh.errors import AthenaError, DeadlineExceeded, FailedPrecondition, Unavailable
from mesh.model_api import ModelApi, ModelApiError, ModelApiStatus, ModelApiTimeout, ModelApiUnreachable
from mesh.retry import OneCallRetrying, first_item_retrying, log_retry, retrying_on
from orchestrator.coalesce import ReadPause, read_pause
from orchestrator.metrics import MODEL_ERRORS, MODEL_RETRIES
from orchestrator.records import Usage

log = logging.getLogger(__name__)

ChatMessage = dict[str, Any]
"""One Chat Completions message (`role`, `content`, `tool_calls`, `tool_call_id`)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object."""
    openai: dict[str, Any] = field(init=False, repr=False, compare=False)
    """The tool in a Chat Completions request, built once (every model call offers it)."""
    openai_json: str = field(init=False, repr=False, compare=False)
    """`openai` as JSON, encoded once: the tools' schemas are most of a request's bytes (encoding them
    took ~70 of a request body's ~75 µs)."""

    def __post_init__(self) -> None:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        object.__setattr__(self, "openai", {"type": "function", "function": function})
        object.__setattr__(self, "openai_json", json.dumps(self.openai))


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    timeout: float | None = None
    """Longest wait for the answer to start and between chunks; None for the implementation's default."""


@dataclass(frozen=True, slots=True)
class ModelToolCall:
    """A tool call the model made: `arguments_json` is exactly what it produced (maybe not valid JSON)."""

    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class StepFinished:
    tool_calls: tuple[ModelToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    response_model: str = ""
    """The model that answered, as the API named it ("" when it did not)."""


ModelEvent = TextChunk | StepFinished


class ModelUnavailable(Unavailable):
    """The model could not answer now (rate limit, server error, unreachable); retrying may work."""


class ModelTimeout(DeadlineExceeded):
    """The model did not answer within the attempt's timeout."""


class ModelRejected(FailedPrecondition):
    """The model endpoint refused the request (bad request, credentials, unknown model)."""


class ChatModel(abc.ABC):
    """A chat model reached through whatever transport; `stream` is one model call."""

    @abc.abstractmethod
    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        """Text chunks as they arrive, then exactly one `StepFinished`. Cancelling the iteration (or closing
        it) must stop the model call promptly."""


class OpenAIChatModel(ChatModel):
    """Chat Completions with streaming and tools (OpenAI, vLLM, Ollama, the offline model).

    The body is the wire-format JSON, sent by `mesh.model_api`, and the event stream is read here
    (`ServerSentEvents`) without building typed chunk objects: what the official SDK's typed parameters and
    chunks used to cost was most of a model call's CPU in this process. Reading the stream here also lets
    the text of every event already received pass on as one `TextChunk`: when the reader falls behind (a
    slow client holds the turn back), the answer arrives in fewer, larger pieces instead of word by word."""

    def __init__(self, api: ModelApi) -> None:
        self._api = api

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        body = _request_body(request)
        call = genai.start_model_call(
            "chat",
            request.model,
            self._api.server,
            attributes={"gen_ai.request.stream": True},
            messages=request.messages,
        )
        try:
            # Leaving the block on every exit, cancellation included, closes the response, so the server
            # sees the disconnect at once and stops generating.
            async with contextlib.AsyncExitStack() as stack:
                # The request is made with the call's span current, so the HTTP request is its child; not
                # across the yields below, where the context is the consumer's.
                with call.current() if call is not None else contextlib.nullcontext():
                    response = await stack.enter_async_context(
                        self._api.post("/chat/completions", body, read_timeout=request.timeout)
                    )
                connection = response.connection
                transport = connection.transport if connection is not None else None
                reads = paced(response.content.iter_any(), read_pause.get(), transport)
                events = await stack.enter_async_context(aclosing(model_events(reads)))
                async for event in events:
                    if call is not None:
                        _record(call, event)
                    yield event
        except ModelApiError as exc:
            error = _translate(exc)
            if call is not None:
                call.failed(error)
            raise error from exc
        except Exception as exc:
            if call is not None:
                call.failed(exc)
            raise
        finally:
            if call is not None:
                call.end()


def _request_body(request: ModelRequest) -> str:
    """The request as Chat Completions JSON, its tools spliced in as each encoded once."""
    body = json.dumps(
        {
            "model": request.model,
            "messages": list(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    if not request.tools:
        return body
    tools = ",".join(tool.openai_json for tool in request.tools)
    return f'{body[:-1]},"tools":[{tools}]}}'


def _record(call: genai.ModelCall, event: ModelEvent) -> None:
    """What the model call's span records of `event` (chunks: only the first one's time)."""
    if isinstance(event, TextChunk):
        call.chunk(event.text)
        return
    call.chunk()
    call.finished(
        response_model=event.response_model,
        input_tokens=event.usage.prompt_tokens,
        output_tokens=event.usage.completion_tokens,
        finish_reason=event.finish_reason,
        tool_calls=[{"id": tool.id, "name": tool.name} for tool in event.tool_calls],
    )


class Pausable(Protocol):
    """What `paced` uses of the transport a model stream is read from (an asyncio `ReadTransport`)."""

    def is_reading(self) -> bool: ...
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def paced(
    reads: AsyncIterator[bytes], pause: ReadPause | None, transport: Pausable | None = None
) -> AsyncIterator[bytes]:
    """`reads` (each all the bytes that arrived since the last), waiting `pause()` seconds after each:
    what arrives meanwhile comes as one read (`orchestrator.coalesce` asks for it while turns start).
    `transport`, the connection `reads` come from, stops reading while the pause lasts: the words that
    arrive meanwhile wait in the kernel and come in one receive, instead of waking this process once each
    to be buffered (it is reading again before the next read, and whenever the iteration ends)."""
    if pause is None:
        return reads
    return _paced(reads, pause, transport)


async def _paced(
    reads: AsyncIterator[bytes], pause: ReadPause, transport: Pausable | None
) -> AsyncGenerator[bytes, None]:
    paused = False
    try:
        async for received in reads:
            yield received
            if (seconds := pause()) > 0:
                if transport is not None and transport.is_reading():
                    transport.pause_reading()
                    paused = True
                await asyncio.sleep(seconds)
                if paused:
                    paused = False
                    _resume(transport)
    finally:
        if paused:
            _resume(transport)


def _resume(transport: Pausable | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


async def model_events(reads: AsyncIterator[bytes]) -> AsyncGenerator[ModelEvent, None]:
    """The events of a Chat Completions event stream arriving in `reads`: the text of every read as one
    `TextChunk`, then one `StepFinished`. A malformed stream, or one ending in an error event, is
    `ModelUnavailable`."""
    calls: dict[int, dict[str, str]] = {}
    usage = Usage()
    finish_reason = "stop"
    response_model = ""
    events = ServerSentEvents()
    try:
        async for received in reads:
            text: list[str] = []
            for chunk in events.feed(received):
                if "error" in chunk:
                    raise ModelUnavailable("the model answered with an error")
                if not response_model:
                    response_model = chunk.get("model") or ""
                if chunk.get("usage"):
                    counted = chunk["usage"]
                    usage = Usage(counted.get("prompt_tokens") or 0, counted.get("completion_tokens") or 0)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if content := delta.get("content"):
                        text.append(content)
                    for piece in delta.get("tool_calls") or ():
                        call = calls.setdefault(piece["index"], {"id": "", "name": "", "arguments": ""})
                        call["id"] = piece.get("id") or call["id"]
                        function = piece.get("function") or {}
                        call["name"] += function.get("name") or ""
                        call["arguments"] += function.get("arguments") or ""
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
            if text:
                yield TextChunk("".join(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelUnavailable("the model answered with an error") from exc
    yield StepFinished(
        tool_calls=tuple(
            ModelToolCall(call["id"] or f"call_{uuid.uuid4().hex[:24]}", call["name"], call["arguments"])
            for _, call in sorted(calls.items())
        ),
        usage=usage,
        finish_reason=finish_reason,
        response_model=response_model,
    )


class ServerSentEvents:
    """Decodes a Chat Completions event stream (`data: <json>` events, `data: [DONE]` at the end) from
    the bytes as they arrive; `feed` answers the JSON objects of the events completed so far."""

    def __init__(self) -> None:
        self._pending = b""
        self.done = False
        """Whether `[DONE]` arrived (the body is still read to its end, so that the connection can serve
        the next call)."""

    def feed(self, received: bytes) -> list[dict[str, Any]]:
        self._pending += received
        *complete, self._pending = self._pending.replace(b"\r\n", b"\n").split(b"\n\n")
        found = []
        for event in complete:
            data = b"\n".join(
                line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                continue  # a comment or a keep-alive
            if data == b"[DONE]":
                self.done = True
            elif not self.done:
                found.append(json.loads(data))
        return found


def _translate(exc: ModelApiError) -> ModelUnavailable | ModelTimeout | ModelRejected:
    """The model API's failures in the tree above; messages name the HTTP status, never a response body."""
    match exc:
        case ModelApiTimeout():
            return ModelTimeout("the model did not answer in time")
        case ModelApiUnreachable():
            return ModelUnavailable("the model endpoint is unreachable")
        case ModelApiStatus(status=429):
            return ModelUnavailable("the model is rate limited (HTTP 429)")
        case ModelApiStatus(status=status) if status >= 500:
            return ModelUnavailable(f"the model failed (HTTP {status})")
        case ModelApiStatus(status=408 | 409 as status):
            return ModelUnavailable(f"the model could not answer now (HTTP {status})")
        case ModelApiStatus(status=status):
            return ModelRejected(f"the model endpoint refused the request (HTTP {status})")
    return ModelUnavailable("the model answered with an error")


TimeRemaining = Callable[[], float | None]


class RetryingModel(ChatModel):
    """Retries retryable failures of `inner` with exponential backoff and jitter, bounded by `attempts` and
    by the caller's deadline (`time_remaining`), and only while the failed attempt streamed nothing
    (`mesh.retry.first_item_retrying`)."""

    def __init__(
        self,
        inner: ChatModel,
        *,
        attempts: int = 3,
        timeout: float = 60.0,
        time_remaining: TimeRemaining = lambda: None,
        first_delay: float = 0.2,
        max_delay: float = 2.0,
        margin: float = 0.1,
    ) -> None:
        self._inner = inner
        self._attempts = attempts
        self._timeout = timeout
        self._time_remaining = time_remaining
        self._margin = margin
        # Shared by every call: strategies keep no state (`mesh.retry.OneCallRetrying`).
        self._wait = wait_exponential_jitter(multiplier=first_delay, max=max_delay, jitter=first_delay)

    def _attempt_timeout(self) -> float:
        remaining = self._time_remaining()
        if remaining is None:
            return self._timeout
        # Leave a little of the deadline to record the failure and answer with a clear status.
        return max(0.01, min(self._timeout, remaining - self._margin))

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        out_of_time = False
        attempts = 1

        def give_up(state: RetryCallState) -> bool:
            nonlocal out_of_time, attempts
            remaining = self._time_remaining()
            out_of_time = remaining is not None and remaining <= state.upcoming_sleep + 2 * self._margin
            stop = out_of_time or state.attempt_number >= self._attempts
            attempts = state.attempt_number if stop else state.attempt_number + 1
            return stop

        policy = OneCallRetrying(
            retry=retrying_on((ModelUnavailable, ModelTimeout)),
            stop=give_up,
            wait=self._wait,
            before_sleep=_counting_retries(request.model, log_retry("a model call")),
            reraise=True,
        )
        events = first_item_retrying(
            lambda: self._inner.stream(replace(request, timeout=self._attempt_timeout())), policy
        )
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        except (ModelUnavailable, ModelTimeout) as exc:
            final = _final(exc, attempts, out_of_time=out_of_time)
            MODEL_ERRORS.labels(request.model, final.status).inc()
            raise final from exc
        except AthenaError as exc:
            MODEL_ERRORS.labels(request.model, exc.status).inc()
            raise


def _counting_retries(model: str, then: Callable[[RetryCallState], None]) -> Callable[[RetryCallState], None]:
    """`then`, after counting the retry in `MODEL_RETRIES` by the failed attempt's status."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        MODEL_RETRIES.labels(model, error.status if isinstance(error, AthenaError) else "UNKNOWN").inc()
        then(state)

    return before_sleep


def _final(
    exc: ModelUnavailable | ModelTimeout, attempts: int, *, out_of_time: bool
) -> DeadlineExceeded | Unavailable:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if isinstance(exc, ModelTimeout) or out_of_time:
        return DeadlineExceeded(f"{exc.message} {tries}, and the deadline leaves no time to retry")
    return Unavailable(f"{exc.message} {tries}; try again shortly")
