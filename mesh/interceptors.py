"""Server interceptors every service runs, outermost first:

1. `CallContextInterceptor`: request id, deadline, start time for the call (`mesh.context.current_call`).
2. `AccessLogInterceptor`: one JSON log line per RPC (method, status, duration, request id, user).
3. `MetricsInterceptor`: Prometheus counts and latency histograms per method and status.
4. `ErrorInterceptor`: the exception tree of `mesh.errors` to statuses; anything unexpected to INTERNAL.
5. `AuthInterceptor`: verifies the bearer token and records the principal (except on public methods).
6. `mesh.validation.ValidationInterceptor`: checks the request against the contract's field rules.

While tracing (`mesh.telemetry`), `TracingInterceptor` runs outside all of them: one SERVER span per call.

Each of them wraps a method's handler; what it does for a call happens in its wrapper, when the call runs
(what it needs of the call, metadata included, it reads there). `WrappedOnce` therefore has them wrap each
method once, and serves that handler to every later call of the method.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import grpc
from prometheus_client import Counter, Histogram

from mesh.context import CallInfo, current_call
from mesh.errors import AthenaError, Unauthenticated
from mesh.quiet import Quiet
from mesh.telemetry import ServerSpan, server_span
from mesh.tokens import TokenVerifier

log = logging.getLogger("athena.access")
errors_log = logging.getLogger("athena.errors")

if TYPE_CHECKING:  # grpc's classes are generic only in their type stubs
    Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def rewrap(handler: Handler | None, wrap: Callable[[Behaviour], Behaviour]) -> Handler:
    """The same method handler with its behaviour wrapped, whatever its streaming kind."""
    if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
        return cast("Handler", None)
    for kind, factory in _FACTORIES.items():
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return factory(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class CallInterceptor(ServerInterceptor):
    """Base for interceptors that act before and after every call, whatever its streaming kind."""

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Runs before the handler; raising here skips the handler (and `exit` of this interceptor)."""

    async def exit(
        self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        """Runs after the handler, with what it raised; may raise a different exception instead."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        return rewrap(await continuation(handler_call_details), self._wrap)

    def _wrap(self, behaviour: Behaviour) -> Behaviour:
        if inspect.isasyncgenfunction(behaviour):

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                call = _call(context)
                await self.enter(call, context)
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as error:
                    await self.exit(call, context, error)
                    raise
                await self.exit(call, context, None)

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _call(context)
            await self.enter(call, context)
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                await self.exit(call, context, error)
                raise
            await self.exit(call, context, None)
            return response

        return unary


def _call(context: grpc.aio.ServicerContext[Any, Any]) -> CallInfo:
    call = current_call.get()
    if call is None:  # only when CallContextInterceptor is not installed (unit tests of one interceptor)
        call = CallInfo(method="", request_id=uuid.uuid4().hex)
        current_call.set(call)
    return call


class WrappedOnce(ServerInterceptor):
    """`interceptors` (outermost first) applied once per method, not once per call: the first call of a
    method has them wrap its handler, and later calls get that handler as it is. grpc runs a server's
    interceptors' `intercept_service` for every call; our chain of seven, each rewrapping the handler,
    took 26 us a call warm and ~0.4 ms a call in profiles of 50-stream bursts, before the handler
    started. Methods no service has (grpc answers UNIMPLEMENTED) are not kept, so unknown names cannot
    grow the cache."""

    def __init__(self, interceptors: Sequence[ServerInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = await self._through(0, continuation, handler_call_details)
            if handler is not None:
                self._handlers[method] = handler
        return handler

    async def _through(
        self, index: int, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if index == len(self._interceptors):
            return await continuation(handler_call_details)
        return await self._interceptors[index].intercept_service(
            partial(self._through, index + 1, continuation), handler_call_details
        )


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


class TracingInterceptor(ServerInterceptor):
    """A SERVER span around each call but `untraced` ones, child of the caller's `traceparent` metadata and
    current while the handler runs (its queries, Redis commands and peer calls hang from it), named
    `/<service>/<method>` with the OpenTelemetry RPC attributes and the status code it ended with.

    Installed only while tracing; what it does per call is one span (no per-message work on streams): the
    OpenTelemetry gRPC instrumentation's interceptors cost 0.2-0.45 ms a hop in its wrappers alone."""

    def __init__(self, untraced: Callable[[str], bool]) -> None:
        self._untraced = untraced

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or self._untraced(method):
            return handler
        return rewrap(handler, lambda behaviour: _traced_call(behaviour, method))


def _trace_context(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The caller's W3C trace context headers (`traceparent`, `tracestate`) of the call."""
    return {
        key: value if isinstance(value, str) else value.decode()
        for key, value in context.invocation_metadata() or ()
        if key in ("traceparent", "tracestate")
    }


def _traced_call(behaviour: Behaviour, method: str) -> Behaviour:
    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with server_span(method, _trace_context(context)) as span:
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as error:
                    _ended(span, _status_of(context, error))
                    raise
                _ended(span, "OK")

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with server_span(method, _trace_context(context)) as span:
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                _ended(span, _status_of(context, error))
                raise
            _ended(span, "OK")
            return response

    return unary


def _ended(span: ServerSpan, status: str) -> None:
    code = grpc.StatusCode[status].value[0] if status in grpc.StatusCode.__members__ else 2
    span.ended_with(status, code)


class CallContextInterceptor(ServerInterceptor):
    """Creates the `CallInfo` of each RPC before any other interceptor of ours runs, and tells `quiet`
    when calls start and end (background work waits for the gaps between them, `mesh.quiet`)."""

    def __init__(self, quiet: Quiet | None = None) -> None:
        self._quiet = quiet or Quiet()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        method = handler_call_details.method
        # The CallInfo is bound when the behaviour starts, inside the RPC's own task.
        return rewrap(
            await continuation(handler_call_details),
            lambda behaviour: _bind_call(behaviour, method, self._quiet),
        )


def _bind_call(behaviour: Behaviour, method: str, quiet: Quiet) -> Behaviour:
    def start(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        current_call.set(
            CallInfo(
                method=method,
                request_id=(metadata_value(context, "x-request-id") or uuid.uuid4().hex)[:128],
                deadline=deadline,
                peer=context.peer(),
            )
        )

    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            start(context)
            quiet.call_started(streaming=True)
            async for response in behaviour(request, context):
                yield response

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        start(context)
        quiet.call_started()
        try:
            return await behaviour(request, context)
        finally:
            quiet.call_ended()

    return unary


def _status_of(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"


class AccessLogInterceptor(CallInterceptor):
    """One structured line per RPC, at the end of it: written just after, once the answer is on its way
    (the line's formatting and write took 80-100 µs of each unary call's round trip when written before
    it); lines keep the order in which calls ended, and the call's trace and request id."""

    async def exit(
        self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        call.status = _status_of(context, error)
        if not log.isEnabledFor(logging.INFO):
            return
        line = {
            "method": call.method,
            "status": call.status,
            "duration_ms": round((time.perf_counter() - call.started) * 1000, 3),
            "request_id": call.request_id,
            "user_id": call.principal.user_id if call.principal else None,
            "peer": call.peer,
        }
        asyncio.get_running_loop().call_soon(partial(log.info, "rpc", extra=line))


class MetricsInterceptor(CallInterceptor):
    """`grpc_server_handled_total` and `grpc_server_handling_seconds`, named like go-grpc-prometheus."""

    started = Counter(
        "grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"]
    )
    handled = Counter(
        "grpc_server_handled_total",
        "RPCs completed on the server, by status.",
        ["grpc_service", "grpc_method", "grpc_code"],
    )
    latency = Histogram(
        "grpc_server_handling_seconds",
        "Time from the start of an RPC to its end (whole stream for streaming RPCs).",
        ["grpc_service", "grpc_method"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    )

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.started.labels(call.service, call.method_name).inc()

    async def exit(
        self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        self.handled.labels(call.service, call.method_name, _status_of(context, error)).inc()
        self.latency.labels(call.service, call.method_name).observe(time.perf_counter() - call.started)


class ErrorInterceptor(CallInterceptor):
    """Maps what handlers raise to a status; never lets a traceback or internal detail reach the caller."""

    async def exit(
        self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        if error is None or isinstance(error, asyncio.CancelledError | grpc.aio.AbortError):
            return
        if isinstance(error, AthenaError) and error.status != "INTERNAL":
            trailers = [DELIBERATE]
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None:
                trailers.append(("retry-after", str(max(1, round(retry_after)))))
            await context.abort(grpc.StatusCode[error.status], error.message, tuple(trailers))
        errors_log.error(
            "unhandled error in %s", call.method, exc_info=error, extra={"request_id": call.request_id}
        )
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {call.request_id})")


SERVICE_KEY_HEADER = "x-athena-service-key"

DELIBERATE = ("athena-answer", "deliberate")
"""Trailer of every status our services answer on purpose: its message is a sentence meant for the
caller. A status without it was made on the way (grpc's transport, a proxy) and its message may name
addresses or internals; `mesh.clients.from_rpc_error` replaces such messages with our own words."""


class AuthInterceptor(CallInterceptor):
    """Requires a valid access token on every method except the `public` ones (login RPCs, health,
    reflection) and records the principal for the handler. `service_methods` act for no user and
    require the deployment's service key instead."""

    def __init__(
        self,
        verifier: TokenVerifier,
        public: Collection[str],
        service_methods: Collection[str] = (),
        service_key: str | None = None,
    ) -> None:
        self._verifier = verifier
        self._public = frozenset(public)
        self._service_methods = frozenset(service_methods)
        self._service_key = service_key.encode() if service_key else None

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if call.method in self._public or call.service in self._public:
            return
        if call.method in self._service_methods:
            presented = (metadata_value(context, SERVICE_KEY_HEADER) or "").encode()
            if self._service_key is None or not hmac.compare_digest(presented, self._service_key):
                raise Unauthenticated("this internal method needs the service key")
            return
        header = metadata_value(context, "authorization")
        if header is None:
            raise Unauthenticated("missing authorization metadata (expected 'Bearer <access token>')")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <access token>'")
        call.principal = await self._verifier.verify(token.strip())
