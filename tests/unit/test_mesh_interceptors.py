"""The interceptors' own rules, on a servicer context double (the chain on a real server is in
tests/service/test_mesh_runtime.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mesh.context import current_call
from mesh.interceptors import AccessLogInterceptor, CallContextInterceptor, WrappedOnce

PEER = "ipv4:127.0.0.1:52514"


class EndingContext:
    """A servicer context whose call gRPC tears down when `ended` is set. Reading the peer of such a call
    crashed the orchestrator (SIGSEGV in grpc's core, 2 runs in 5 of 5,000 cancelled streams): the access
    log read it when a stream cancelled by its client finished storing the failed turn."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.ended = False
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        if self.ended:
            raise AssertionError("the peer was read after the call ended")
        return PEER

    def time_remaining(self) -> float | None:
        return None

    def code(self) -> None:
        return None


async def test_the_access_log_names_the_peer_read_when_the_call_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = EndingContext()

    async def answer(request: bytes, _: Any) -> AsyncIterator[bytes]:
        yield b"first"
        context.ended = True  # the client cancelled; the handler still cleans up before it finishes
        raise asyncio.CancelledError

    details: Any = type("Details", (), {"method": "/athena.test.v1.T/M", "invocation_metadata": ()})()
    handler: Any = await CallContextInterceptor().intercept_service(
        lambda d: AccessLogInterceptor().intercept_service(
            lambda _: asyncio.sleep(0, grpc.unary_stream_rpc_method_handler(answer)), d
        ),
        details,
    )
    received = []
    with caplog.at_level(logging.INFO, logger="athena.access"), pytest.raises(asyncio.CancelledError):
        async for message in handler.unary_stream(b"", context):
            received.append(message)
    with caplog.at_level(logging.INFO, logger="athena.access"):
        await asyncio.sleep(0)  # the line is written once the call's answer is on its way
    assert received == [b"first"]
    [line] = [record for record in caplog.records if record.name == "athena.access"]
    assert line.__dict__["peer"] == PEER
    assert line.__dict__["status"] == "CANCELLED"


async def test_the_access_log_line_is_written_after_the_call_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer(request: bytes, _: Any) -> bytes:
        return b"answer"

    details: Any = type("Details", (), {"method": "/athena.test.v1.T/M", "invocation_metadata": ()})()
    handler: Any = await CallContextInterceptor().intercept_service(
        lambda d: AccessLogInterceptor().intercept_service(
            lambda _: asyncio.sleep(0, grpc.unary_unary_rpc_method_handler(answer)), d
        ),
        details,
    )
    with caplog.at_level(logging.INFO, logger="athena.access"):
        assert await handler.unary_unary(b"", EndingContext()) == b"answer"
        assert [record for record in caplog.records if record.name == "athena.access"] == []
        await asyncio.sleep(0)
    [line] = [record for record in caplog.records if record.name == "athena.access"]
    assert line.__dict__["status"] == "OK"
    assert line.__dict__["method"] == "/athena.test.v1.T/M"


class Counting(AccessLogInterceptor):
    """An interceptor that counts how often it is asked to wrap a handler."""

    def __init__(self) -> None:
        self.wrapped = 0

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.wrapped += 1
        return await super().intercept_service(continuation, handler_call_details)


async def test_a_method_is_wrapped_once_and_each_call_still_reads_its_own_metadata() -> None:
    seen: list[str] = []

    async def answer(request: bytes, _: Any) -> bytes:
        call = current_call.get()
        assert call is not None
        seen.append(call.request_id)
        return b"answer"

    looked_up = 0

    async def registered(_: Any) -> Any:
        nonlocal looked_up
        looked_up += 1
        return grpc.unary_unary_rpc_method_handler(answer)

    counting = Counting()
    chain = WrappedOnce([CallContextInterceptor(), counting])
    details: Any = type("Details", (), {"method": "/athena.test.v1.T/M", "invocation_metadata": ()})()
    handlers: list[Any] = [await chain.intercept_service(registered, details) for _ in range(3)]
    assert handlers[0] is handlers[1] is handlers[2]
    assert (counting.wrapped, looked_up) == (1, 1)

    for request_id in ("first", "second"):
        context = EndingContext(metadata=(("x-request-id", request_id),))
        assert await handlers[0].unary_unary(b"", context) == b"answer"
    assert seen == ["first", "second"]


async def test_a_method_no_service_has_is_not_kept() -> None:
    looked_up = 0

    async def unknown(_: Any) -> Any:
        nonlocal looked_up
        looked_up += 1

    chain = WrappedOnce([CallContextInterceptor()])
    for index in range(3):
        details: Any = type("Details", (), {"method": f"/no.such.v1.S/M{index}", "invocation_metadata": ()})()
        assert await chain.intercept_service(unknown, details) is None
    assert looked_up == 3  # looked up again each time: nothing kept
