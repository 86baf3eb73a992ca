"""Every request gets an answer: the request message of unary-request RPCs, read by us.

grpc's asyncio server reads the request of a unary-request RPC itself before any interceptor or handler
runs, and when the client's stream ends without a whole message (an empty body, a truncated frame) it
drops the call without a status: the client waits until its connection dies. A message that does not
decode is answered UNKNOWN with the parser's exception in the details.

`RequestReader`, the outermost interceptor, therefore registers every unary-request method as a
stream-request one and reads the single message itself, within `read_timeout` seconds:

    no message before the stream ended     INVALID_ARGUMENT "request: the call carried no request message"
    not whole within `read_timeout`        INVALID_ARGUMENT "request: the request message did not arrive ..."
    bytes that are not the message type    INVALID_ARGUMENT "request: is not a valid <type> message"

then runs the method as it was written. Clients see no difference: on the wire every gRPC request is a
stream of messages. Refusals are logged, without the bytes, as one line each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from mesh.interceptors import DELIBERATE

if TYPE_CHECKING:
    from mesh.interceptors import Continuation, Handler, ServerInterceptor
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

log = logging.getLogger("athena.access")

Context = grpc.aio.ServicerContext[Any, Any]


class _Refused(Exception):
    """A request that cannot be read; the message is what the client is told."""


class RequestReader(ServerInterceptor):
    """Reads the request of every unary-request RPC itself (see the module docstring)."""

    def __init__(self, read_timeout: float) -> None:
        self._read_timeout = read_timeout

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        read = self._reader(method, handler.request_deserializer)
        if handler.response_streaming:
            answer_stream: Any = handler.unary_stream  # async in grpc.aio; the stubs type it sync

            async def streaming(requests: AsyncIterable[bytes], context: Context) -> AsyncIterator[Any]:
                request = await read(requests, context)
                async for response in answer_stream(request, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                streaming, response_serializer=handler.response_serializer
            )
        answer: Any = handler.unary_unary

        async def unary(requests: AsyncIterable[bytes], context: Context) -> Any:
            return await answer(await read(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(unary, response_serializer=handler.response_serializer)

    def _reader(
        self, method: str, deserialize: Callable[[bytes], Any] | None
    ) -> Callable[[AsyncIterable[bytes], Context], Any]:
        timeout = self._read_timeout

        async def read(requests: AsyncIterable[bytes], context: Context) -> Any:
            messages = aiter(requests)
            try:
                try:
                    async with asyncio.timeout(timeout):
                        raw = await anext(messages)
                except StopAsyncIteration:
                    raise _Refused("the call carried no request message") from None
                except TimeoutError:
                    raise _Refused(
                        f"the request message did not arrive whole within {timeout:g} seconds"
                    ) from None
                if deserialize is None:
                    return raw
                try:
                    return deserialize(raw)
                except DecodeError:
                    raise _Refused(f"is not a valid {_type_name(deserialize)} message") from None
            except _Refused as refused:
                log.info("request refused", extra={"method": method, "reason": str(refused)})
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {refused}", (DELIBERATE,))
            finally:
                # grpc's message generator stays suspended on the message it yielded, and the call's
                # objects form reference cycles: without closing it, every request's bytes (2 MiB for an
                # upload's chunk) live until the cyclic collector runs.
                close = getattr(messages, "aclose", None)
                if close is not None:
                    await close()

        return read


def _type_name(deserialize: Callable[[bytes], Any]) -> str:
    """The message type a generated deserializer (`<Message>.FromString`) parses."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))
