"""The HTTP face of the offline model: the OpenAI wire format around `rules` and `embeddings`.

Routes: `POST /v1/chat/completions` (streaming with SSE or not, tools), `POST /v1/embeddings` (float or
base64), `GET /v1/models[/{id}]`, `GET /healthz`, and `GET /v1/_stats` (stream counters, so tests can
see that a client's disconnect reached the model). Bad requests get HTTP 400 with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`; so do unknown routes (404) and bugs (500).

The runner cancels a handler when its client disconnects (`handler_cancellation`), so a stream stops
generating at once rather than at its next write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from mesh.collection import collect_as_a_server, freeze_startup
from offline_model import embeddings, rules
from offline_model.settings import CHAT_MODEL, EMBEDDING_MODEL, OfflineModelSettings

log = logging.getLogger(__name__)

MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's limit on the number of inputs of one embeddings request."""
_WORD_PIECE = re.compile(r"\s*\S+\s*")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


LISTEN_BACKLOG = 2048
"""Connections the kernel queues for us to accept: hundreds of clients connect at once (a benchmark's burst
of streams, a mesh's connection pool filling). With aiohttp's default of 128, 400 connections at once on
loopback overflowed the queue 426 times and waited out a SYN retransmission: 1,101 ms p50 to an answer,
against 98 with 2,048 and no overflow. bench-chat at 8e36b0f read the model alone's first-delta p95 at 200
streams as 2,227 ms (p50 415)."""


@dataclass
class StreamStats:
    """Counters of streamed chat completions since the server started."""

    streams_started: int = 0
    streams_completed: int = 0
    streams_disconnected: int = 0
    """Streams that ended before `[DONE]` because the client went away (or the server stopped)."""


@dataclass
class OfflineModelState:
    """What the handlers of one app share."""

    settings: OfflineModelSettings
    stats: StreamStats = field(default_factory=StreamStats)
    failures: rules.FailureInjector = field(default_factory=rules.FailureInjector)
    open_streams: set[asyncio.Task[Any]] = field(default_factory=set)
    """Tasks serving a stream right now; `OfflineModelServer.stop` cancels those that overstay."""
    no_open_streams: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever the last open stream ends."""
    stopping: bool = False
    """The server is shutting down (streams cut now are not the client's doing)."""


STATE = web.AppKey("offline_model_state", OfflineModelState)


class RequestError(Exception):
    """A request the server answers with an OpenAI error body."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    """OpenAI's error body, with the error type OpenAI uses for `status`."""
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": None}}
    return web.json_response(body, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return error_response(exc.status, exc.message, exc.param)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
    except Exception:  # the boundary: a bug is logged, the client sees a generic error
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "The offline model failed to answer this request.")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise RequestError("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def _optional(body: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """`body[key]` if present and of type `kind` (a bool is no int here), `default` if absent or null."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RequestError(f"Invalid type for '{key}'.", param=key)
    return value


# -- chat completions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A validated Chat Completions request: what the rules and the wire shapes need."""

    messages: list[dict[str, Any]]
    model: str
    stream: bool
    include_usage: bool
    offered_tools: frozenset[str]
    response_schema: str | None = None
    """The `response_format.json_schema.name` asked for, if any."""


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """Validate a Chat Completions body; raises `RequestError` naming the offending parameter."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{index}] must be an object.", param=f"messages[{index}]")
        if message.get("role") not in _ROLES:
            raise RequestError(
                f"messages[{index}].role must be one of {', '.join(sorted(_ROLES))}.",
                param=f"messages[{index}].role",
            )
    model = _optional(body, "model", str, CHAT_MODEL) or CHAT_MODEL
    stream = _optional(body, "stream", bool, False)
    stream_options = _optional(body, "stream_options", dict, {})
    include_usage = stream_options.get("include_usage") is True
    if _optional(body, "n", int, 1) != 1:
        raise RequestError("The offline model answers with exactly one choice (n=1).", param="n")
    response_format = _optional(body, "response_format", dict, None)
    return ChatRequest(
        messages,
        model,
        stream,
        include_usage,
        _offered_tools(body),
        rules.response_schema_name(response_format),
    )


def _offered_tools(body: Mapping[str, Any]) -> frozenset[str]:
    tools = _optional(body, "tools", list, [])
    names: set[str] = set()
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise RequestError(
                f"tools[{index}] must be a function tool with a name.", param=f"tools[{index}].function.name"
            )
        names.add(name)
    choice = body.get("tool_choice")
    if choice == "none":
        return frozenset()
    if isinstance(choice, dict):
        function = choice.get("function")
        chosen = function.get("name") if isinstance(function, dict) else None
        return frozenset(names & {chosen})
    return frozenset(names)


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Token count of a prompt: words of every message's content and tool call arguments."""
    count = 0
    for message in messages:
        count += rules.count_tokens(rules.content_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                count += rules.count_tokens(f"{function.get('name', '')} {function.get('arguments', '')}")
    return count


def completion_tokens(reply: rules.Reply) -> int:
    if isinstance(reply, rules.TextReply):
        return rules.count_tokens(reply.text)
    return rules.count_tokens(f"{reply.name} {reply.arguments_json}")


def words(text: str) -> list[str]:
    """`text` cut into stream pieces: each word with the whitespace that follows it."""
    return _WORD_PIECE.findall(text)


def _argument_pieces(arguments: str, count: int = 3) -> list[str]:
    size = max(1, -(-len(arguments) // count))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _tool_call(reply: rules.ToolCallReply, call_id: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": reply.name, "arguments": arguments}}


class _Completion:
    """One completion's identity and its wire shapes."""

    def __init__(self, request: ChatRequest, reply: rules.Reply) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.request = request
        self.reply = reply
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"
        self.usage = {
            "prompt_tokens": prompt_tokens(request.messages),
            "completion_tokens": completion_tokens(reply),
        }
        self.usage["total_tokens"] = self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if isinstance(self.reply, rules.ToolCallReply) else "stop"

    def message(self) -> dict[str, Any]:
        if isinstance(self.reply, rules.ToolCallReply):
            call = _tool_call(self.reply, self.call_id, self.reply.arguments_json)
            return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        return {"role": "assistant", "content": self.reply.text, "refusal": None}

    def body(self) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": self.message(),
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": None,
            "choices": [choice],
            "usage": self.usage,
        }

    def deltas(self) -> list[dict[str, Any]]:
        """The `delta`s of the stream, the first one carrying the role."""
        if isinstance(self.reply, rules.ToolCallReply):
            first = _tool_call(self.reply, self.call_id, "")
            deltas: list[dict[str, Any]] = [
                {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **first}]}
            ]
            deltas.extend(
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                for piece in _argument_pieces(self.reply.arguments_json)
            )
            return deltas
        pieces = words(self.reply.text) or [""]
        return [{"role": "assistant", "content": pieces[0]}] + [{"content": piece} for piece in pieces[1:]]

    def chunk(self, delta: dict[str, Any] | None, finish_reason: str | None = None) -> dict[str, Any]:
        choices = (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.request.include_usage:
            chunk["usage"] = self.usage if delta is None else None
        return chunk

    def chunks(self) -> list[dict[str, Any]]:
        chunks = [self.chunk(delta) for delta in self.deltas()]
        chunks.append(self.chunk({}, self.finish_reason))
        if self.request.include_usage:
            chunks.append(self.chunk(None))
        return chunks


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    chat = parse_chat_request(await _json_body(request))
    user_text = rules.last_user_text(chat.messages)
    directives = state.settings.test_directives
    failure = state.failures.status_for(user_text) if directives else None
    if failure is not None:
        log.info("injected failure", extra={"status": failure})
        return error_response(failure, f"Injected failure (HTTP {failure}) requested by the message.")
    if chat.response_schema == rules.FACTS_SCHEMA:  # the memory service's fact extraction
        reply: rules.Reply = rules.facts_reply(chat.messages)
    else:
        reply = rules.plan_reply(chat.messages, chat.offered_tools, directives=directives)
    completion = _Completion(chat, reply)
    slow = rules.parse_directives(user_text).slow_ms / 1000 if directives else 0.0
    if not chat.stream:
        if slow:
            await asyncio.sleep(slow)
        return web.json_response(completion.body())
    return await _stream(request, state, completion, slow)


async def _stream(
    request: web.Request, state: OfflineModelState, completion: _Completion, slow: float
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    delay = state.settings.delay_ms / 1000
    state.stats.streams_started += 1
    task = asyncio.current_task()
    assert task is not None  # handlers run in a task
    state.open_streams.add(task)
    state.no_open_streams.clear()
    sent = 0
    try:
        await response.prepare(request)
        if slow:
            await asyncio.sleep(slow)
        for index, chunk in enumerate(completion.chunks()):
            if index and delay and chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                await asyncio.sleep(delay)
            await response.write(_sse(chunk))
            sent += 1
        await response.write(_sse("[DONE]"))
        await response.write_eof()
    except (asyncio.CancelledError, ConnectionResetError) as exc:
        state.stats.streams_disconnected += 1
        reason = "server stopping" if state.stopping else "client disconnected"
        log.info(
            "stream stopped early", extra={"reason": reason, "completion": completion.id, "chunks_sent": sent}
        )
        if isinstance(exc, asyncio.CancelledError):
            raise
        return response
    finally:
        state.open_streams.discard(task)
        if not state.open_streams:
            state.no_open_streams.set()
    state.stats.streams_completed += 1
    return response


# -- embeddings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated embeddings request."""

    texts: list[str]
    model: str
    dimensions: int
    as_base64: bool


def parse_embedding_request(body: Mapping[str, Any], default_dimensions: int) -> EmbeddingRequest:
    """Validate an embeddings body; token arrays are accepted and embedded as their token ids."""
    raw = body.get("input")
    items: list[Any] = raw if isinstance(raw, list) and raw and not _is_tokens(raw) else [raw]
    if not items or len(items) > MAX_EMBEDDING_INPUTS:
        raise RequestError(f"'input' must hold 1 to {MAX_EMBEDDING_INPUTS} items.", param="input")
    texts: list[str] = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and _is_tokens(item):
            texts.append(" ".join(str(token) for token in item))
        else:
            raise RequestError(
                "'input' must be a non-empty string, an array of them, or token arrays.", param="input"
            )
    model = _optional(body, "model", str, EMBEDDING_MODEL) or EMBEDDING_MODEL
    dimensions = _optional(body, "dimensions", int, default_dimensions)
    if not 1 <= dimensions <= 16384:
        raise RequestError("'dimensions' must be between 1 and 16384.", param="dimensions")
    encoding = _optional(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    return EmbeddingRequest(texts, model, dimensions, encoding == "base64")


def _is_tokens(value: list[Any]) -> bool:
    return all(isinstance(token, int) and not isinstance(token, bool) for token in value)


async def create_embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    parsed = parse_embedding_request(await _json_body(request), state.settings.embedding_dimensions)
    vectors = embeddings.embed_many(parsed.texts, parsed.dimensions)
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        encoded: str | list[float] = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            if parsed.as_base64
            else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(rules.count_tokens(text) for text in parsed.texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response({"object": "list", "data": data, "model": parsed.model, "usage": usage})


# -- models, health, stats ----------------------------------------------------------------------------


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "athenaos"}


async def list_models(_: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [_model_card(CHAT_MODEL), _model_card(EMBEDDING_MODEL)]}
    )


async def retrieve_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    if model_id not in (CHAT_MODEL, EMBEDDING_MODEL):
        raise RequestError(f"The model '{model_id}' does not exist.", param="model", status=404)
    return web.json_response(_model_card(model_id))


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def stream_stats(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[STATE].stats))


def create_app(settings: OfflineModelSettings) -> web.Application:
    """The offline model's aiohttp application (state in `app[STATE]`)."""
    app = web.Application(middlewares=[_openai_errors])
    app[STATE] = OfflineModelState(settings)
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.post("/v1/embeddings", create_embeddings),
            web.get("/v1/models", list_models),
            web.get("/v1/models/{model}", retrieve_model),
            web.get("/v1/_stats", stream_stats),
            web.get("/healthz", healthz),
        ]
    )
    return app


class OfflineModelServer:
    """The offline model listening on `settings.host`/`settings.port` in the current event loop."""

    def __init__(self, settings: OfflineModelSettings) -> None:
        self.app = create_app(settings)
        self._settings = settings
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=settings.shutdown_seconds,
        )
        self.port = settings.port
        """The bound port (the free one picked when settings.port is 0), known after `start`."""

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`."""
        return f"http://{self._settings.host}:{self.port}/v1"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._settings.host, self._settings.port, reuse_address=True, backlog=LISTEN_BACKLOG
        )
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening, give open streams `shutdown_seconds` to finish, cut the rest, then close."""
        for site in list(self._runner.sites):
            await site.stop()
        state = self.app[STATE]
        state.stopping = True
        if state.open_streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_seconds):
                    await state.no_open_streams.wait()
        for task in list(state.open_streams):
            # The task serves the whole connection, as with `handler_cancellation` on a disconnect.
            task.cancel()
        await self._runner.cleanup()


async def serve(settings: OfflineModelSettings) -> None:
    """Serve until SIGTERM/SIGINT, then stop: open streams get `shutdown_seconds` to finish. Garbage is
    collected as in the services (`mesh.collection`): with CPython's defaults a full collection of its
    tables stopped every stream it served for 28-46 ms a few times a minute, mesh's and direct alike."""
    collect_as_a_server()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = OfflineModelServer(settings)
    try:
        await server.start()
        freeze_startup()
        log.info(
            "offline model listening",
            extra={"base_url": server.base_url, "delay_ms": settings.delay_ms},
        )
        await stop.wait()
        log.info("stopping")
        await server.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
