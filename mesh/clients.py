"""Calling a peer service: one channel factory, the metadata every internal call carries, and one
translation of the peer's status back into the `mesh.errors` tree.

Internal calls carry the caller's access token (each service scopes data to the token's subject itself),
the request id (logs join across services) and the remaining deadline (no downstream call outlives the
caller's patience). Every peer call goes through `call` (unary) or `stream` (server streaming), which
raise `mesh.errors` exceptions (`from_rpc_error`) instead of grpc's: callers handle one error tree, and
the server's ErrorInterceptor answers them like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import grpc

from mesh.context import current_call, principal, time_remaining
from mesh.errors import (
    STATUS_TYPES,
    AthenaError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from mesh.interceptors import DELIBERATE, SERVICE_KEY_HEADER
from mesh.telemetry import outgoing_trace_context, tracing_on

Response = TypeVar("Response")

log = logging.getLogger(__name__)


RECONNECT_BACKOFF_MS = (250, 1000)
"""First and longest wait between attempts to reach a peer that went away: it is called again within
about a second of its return (gRPC's default backoff grows to two minutes)."""


MAX_CALLS_IN_FLIGHT = 448
"""Unary calls one channel has open at once; more wait their turn. A mesh server accepts 512 streams on a
connection (`ServiceSettings.max_concurrent_streams`) and refuses the rest with RST_STREAM REFUSED_STREAM,
which grpc's client does not hold back nor retry: the caller sees UNAVAILABLE. At 1,000 chat turns
started at once, the orchestrator's StartTurn calls to memory were refused by the hundred (23 turns
failed). Below 512 by a margin: a server lets go of a stream a moment after its answer reached us."""


class _CallsInFlight(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Holds each unary call of a channel to one of `limit` slots until its answer or status arrived; while
    `tracing`, adds the current span's `traceparent` to it (see `_TraceContext`)."""

    def __init__(self, limit: int, *, tracing: bool = False) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tracing = tracing

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self._tracing:  # one interceptor for both: each costs unary calls a layer of coroutines
            details = _with_trace_context(details)
        async with self._slots:
            call = await continuation(details, request)
            await call  # an error status is raised to the caller as it would be without us
            return call


class _TraceContext(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds the current span's `traceparent` to every streaming call of a channel (installed only while
    tracing; `_CallsInFlight` adds it to unary calls): the peer's SERVER span is its child."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_trace_context(details), request)


def _with_trace_context(details: Any) -> Any:
    context = outgoing_trace_context()
    if not context:
        return details
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *context))


def channel(
    target: str, *, keepalive_seconds: float = 30.0, max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT
) -> grpc.aio.Channel:
    """A channel to `target` ("host:port" or "dns:///name:port") balancing round-robin over every address
    the name resolves to: with a headless Kubernetes Service, every replica gets a share of the calls.

    A peer that went away is dialled again with a capped backoff, its name resolved again at most once a
    second (a replaced pod has a new address), and a silent connection found by keepalive pings."""
    first_backoff, longest_backoff = RECONNECT_BACKOFF_MS
    options: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.initial_reconnect_backoff_ms", first_backoff),
        ("grpc.min_reconnect_backoff_ms", first_backoff),
        ("grpc.max_reconnect_backoff_ms", longest_backoff),
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),  # retries are decided per call, where it is safe to retry
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    tracing = tracing_on()
    interceptors: list[Any] = [_CallsInFlight(max_calls_in_flight, tracing=tracing)]
    if tracing:
        interceptors.append(_TraceContext())
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def outgoing(
    *, timeout: float | None = None, authenticated: bool = True, detached: bool = False
) -> dict[str, Any]:
    """`metadata` and `timeout` for a call made while serving the current RPC: the caller's token, the
    request id, and the smaller of `timeout` and what is left of the caller's deadline. A `detached` call
    ignores the caller's deadline (the write recording a turn that the deadline itself ended)."""
    metadata: list[tuple[str, str]] = []
    if authenticated:
        metadata.append(("authorization", f"Bearer {principal().token}"))
    call = current_call.get()
    if call is not None:
        metadata.append(("x-request-id", call.request_id))
    remaining = None if detached else time_remaining()
    if remaining is not None:
        timeout = remaining if timeout is None else min(timeout, remaining)
    return {"metadata": tuple(metadata), "timeout": timeout}


def service_call(service_key: str, *, timeout: float | None = None) -> dict[str, Any]:
    """`metadata` and `timeout` for an internal call made for no user (see `ServiceSettings.service_key`)."""
    return {"metadata": ((SERVICE_KEY_HEADER, service_key),), "timeout": timeout}


def from_rpc_error(exc: grpc.aio.AioRpcError) -> AthenaError:
    """A peer's status as an exception of the tree: `raise from_rpc_error(exc) from exc`.

    A status our services answered on purpose (the `DELIBERATE` trailer) keeps its message. Any other
    one was made on the way (a peer down, the transport, a proxy): its message may name addresses or
    internals, so the caller is told in our words instead (`PUBLIC_SENTENCES`)."""
    code = exc.code()
    trailers = cast(Iterable[tuple[str, str]], exc.trailing_metadata() or ())
    pairs = [(key, value) for key, value in trailers]
    if DELIBERATE not in pairs:
        log.warning(
            "peer call failed", extra={"status": code.name, "details": exc.details(), "deliberate": False}
        )
        return _in_our_words(code)
    details = exc.details() or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, problem = details.partition(": ")
        return InvalidArgument(field, problem) if problem else InvalidArgument("request", details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = next((float(value) for key, value in pairs if key == "retry-after"), None)
        return ResourceExhausted(details, retry_after=retry_after)
    error_type = STATUS_TYPES.get(code.name)
    if error_type is None or error_type is InvalidArgument:
        return AthenaError(details)
    return error_type(details)


PUBLIC_SENTENCES: dict[grpc.StatusCode, tuple[type[AthenaError], str]] = {
    grpc.StatusCode.UNAVAILABLE: (Unavailable, "a service needed to answer is unavailable; try again"),
    grpc.StatusCode.CANCELLED: (Unavailable, "a service stopped while answering; try again"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (DeadlineExceeded, "no answer came before the deadline"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (ResourceExhausted, "the request or its answer is too large"),
    grpc.StatusCode.UNAUTHENTICATED: (Unauthenticated, "the access token was not accepted"),
}
"""What a caller is told for a status made on the way, by code; any other code is an internal error."""


def _in_our_words(code: grpc.StatusCode) -> AthenaError:
    error_type, sentence = PUBLIC_SENTENCES.get(code, (AthenaError, "a service failed while answering"))
    return error_type(sentence)


async def call(
    method: Callable[..., Awaitable[Response]],
    request: Any,
    *,
    timeout_seconds: float | None = None,
    detached: bool = False,
    metadata: Iterable[tuple[str, str]] | None = None,
) -> Response:
    """`method(request)` for the current caller (`outgoing`), within `timeout_seconds` and the caller's
    deadline; with `metadata`, exactly that metadata instead (calls made for no user). A peer's status is
    raised as its `mesh.errors` exception."""
    if metadata is None:
        options = outgoing(timeout=timeout_seconds, detached=detached)
    else:
        options = {"metadata": tuple(metadata), "timeout": timeout_seconds}
    try:
        return await method(request, **options)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc


async def stream(method: Callable[..., Any], request: Any) -> AsyncGenerator[Any, None]:
    """The responses of the server-streaming `method(request)` for the current caller, as they arrive,
    within the caller's deadline. A peer's status is raised as its `mesh.errors` exception; closing the
    generator cancels the call."""
    responses = method(request, **outgoing())
    try:
        async for response in responses:
            yield response
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
    finally:
        responses.cancel()
