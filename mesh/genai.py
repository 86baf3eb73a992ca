"""Spans of model calls, after the OpenTelemetry GenAI semantic conventions (client spans).

One span per request to a model API, a child of the work that made it:

    chat {model}         gen_ai.operation.name "chat": the request's and the answer's model, token usage
                         when the stream reports it, finish reasons, and the time to the first chunk
                         (gen_ai.response.time_to_first_chunk, seconds, plus an event at that moment)
    embeddings {model}   gen_ai.operation.name "embeddings": the model, how many inputs, dimensions
    execute_tool {name}  one per tool call the model made (gen_ai.tool.name, gen_ai.tool.call.id)

plus gen_ai.provider.name (and the older gen_ai.system, still read by some backends), server.address and
server.port. What people said or were answered is not recorded: messages go on the span only when
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` is true (gen_ai.input.messages and
gen_ai.output.messages, as JSON), the conventions' opt-in (read once, by the service's settings:
`mesh.settings.ServiceSettings.genai_capture_message_content`).

`start_model_call` answers None while tracing is off (`mesh.telemetry.tracing_on`), so a model call pays a
single check for spans nobody records; a started span costs one check per chunk (`chunk`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mesh.telemetry import capturing_message_content, tracer, tracing_on

PROVIDER = "openai"
"""gen_ai.provider.name of every model API the mesh calls: all speak OpenAI's API (server.address tells
OpenAI from vLLM, Ollama or the offline model)."""


def server_attributes(base_url: str) -> dict[str, Any]:
    """server.address and server.port of a model API's base URL."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname or "", "server.port": port}


class ModelCall:
    """The span of one request to a model; `end` must be called once, whatever happened."""

    def __init__(
        self,
        operation: str,
        model: str,
        server: dict[str, Any],
        *,
        attributes: dict[str, Any] | None = None,
        messages: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self._capture = capturing_message_content()
        self.span: Span = tracer("athena.genai").start_span(
            f"{operation} {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": PROVIDER,
                "gen_ai.system": PROVIDER,
                "gen_ai.request.model": model,
                **server,
                **(attributes or {}),
            },
        )
        if self._capture and messages is not None:
            self.span.set_attribute("gen_ai.input.messages", json.dumps(_messages(messages)))
        self._started = time.monotonic()
        self._first = True
        self._text: list[str] = []

    @contextmanager
    def current(self) -> Iterator[None]:
        """The span as the current one (the HTTP request made inside is its child and carries it on)."""
        with trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield

    def chunk(self, text: str = "") -> None:
        """A part of a streamed answer arrived: the first one sets the time to first chunk."""
        if self._first:
            self._first = False
            elapsed = time.monotonic() - self._started
            self.span.set_attribute("gen_ai.response.time_to_first_chunk", elapsed)
            self.span.add_event("gen_ai.first_chunk")
        if self._capture and text:
            self._text.append(text)

    def finished(
        self,
        *,
        response_model: str = "",
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        finish_reason: str | None = None,
        tool_calls: Sequence[dict[str, Any]] = (),
    ) -> None:
        """The answer is complete: what the model reported about it."""
        span = self.span
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        if input_tokens:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
        if self._capture:
            parts: list[dict[str, Any]] = (
                [{"type": "text", "content": "".join(self._text)}] if self._text else []
            )
            parts += [{"type": "tool_call", **call} for call in tool_calls]
            output = {"role": "assistant", "parts": parts, "finish_reason": finish_reason or "stop"}
            span.set_attribute("gen_ai.output.messages", json.dumps([output]))

    def failed(self, error: BaseException) -> None:
        """The call failed: error.type names the failure (its class), never a message that may quote input."""
        self.span.set_attribute("error.type", type(error).__name__)
        self.span.set_status(Status(StatusCode.ERROR))

    def end(self) -> None:
        self.span.end()


def start_model_call(
    operation: str,
    model: str,
    server: dict[str, Any],
    *,
    attributes: dict[str, Any] | None = None,
    messages: Sequence[dict[str, Any]] | None = None,
) -> ModelCall | None:
    """A started `ModelCall` as a child of the current span, or None while tracing is off."""
    if not tracing_on():
        return None
    return ModelCall(operation, model, server, attributes=attributes, messages=messages)


@contextmanager
def tool_span(name: str, call_id: str) -> Iterator[Span | None]:
    """The span of one tool call (execute_tool {name}) around the block, current inside it; nothing while
    tracing is off. An exception leaving the block marks the span failed (error.type)."""
    if not tracing_on():
        yield None
        return
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
    }
    with tracer("athena.genai").start_as_current_span(
        f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes, record_exception=False
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__name__)
            raise


def _messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions messages in the conventions' shape (role and parts)."""
    shaped = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        content = message.get("content")
        if isinstance(content, str) and content:
            parts.append({"type": "text", "content": content})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments"),
                }
            )
        if message.get("role") == "tool":
            parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}]
        shaped.append({"role": message.get("role"), "parts": parts})
    return shaped


def tool_finished(span: Span, is_error: bool, *, handoff_to: str | None = None) -> None:
    """What a tool call came to: a failure the model is told about (error.type "tool_error"), or the agent
    a handoff passed the conversation to (athena.handoff.to_agent)."""
    if is_error:
        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR))
    if handoff_to is not None:
        span.set_attribute("athena.handoff.to_agent", handoff_to)
