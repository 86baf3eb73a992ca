"""Contract rules on a real MeshServer: checked after authentication and before the handler, for unary and
server-streaming calls, with broken rules answered INTERNAL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import protovalidate
import pytest
from conftest import TokenFactory, auth_metadata, service_settings
from google.protobuf.message import Message
from validation_probe import PACKAGE, probe_messages

from mesh.server import MeshServer, Service
from mesh.settings import ServiceSettings
from mesh.tokens import TokenVerifier

SERVICE = f"{PACKAGE}.ProbeService"
VALID = {"agent_id": "athena", "user_id": "0b9d7e8e-4c9b-4f6c-9d1e-2f6f8c1a2b3c", "text": "hello"}


class ProbeServicer:
    """Echoes the text; records every request that reached it."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    async def Check(self, request: Any, context: Any) -> Message:
        self.received.append(request)
        return probe_messages()["CheckResponse"](text=request.text)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Message]:
        self.received.append(request)
        for word in request.text.split():
            yield probe_messages()["CheckResponse"](text=word)

    async def Mismatched(self, request: Any, context: Any) -> Message:
        self.received.append(request)
        return probe_messages()["CheckResponse"]()


def _register(servicer: ProbeServicer, server: grpc.aio.Server) -> None:
    messages = probe_messages()
    response = messages["CheckResponse"].SerializeToString
    check, mismatched = messages["CheckRequest"].FromString, messages["MismatchedRequest"].FromString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check, request_deserializer=check, response_serializer=response
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch, request_deserializer=check, response_serializer=response
        ),
        "Mismatched": grpc.unary_unary_rpc_method_handler(
            servicer.Mismatched, request_deserializer=mismatched, response_serializer=response
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
async def probe(
    tmp_path: Path, start_server: Any, verifier: TokenVerifier
) -> AsyncIterator[tuple[ProbeServicer, grpc.aio.Channel]]:
    servicer = ProbeServicer()
    settings = ServiceSettings(**service_settings(tmp_path))
    server: MeshServer = await start_server(
        "probe", settings, [Service(SERVICE, servicer, _register)], verifier
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield servicer, channel


def _method(
    channel: grpc.aio.Channel, name: str, request_type: str = "CheckRequest", stream: bool = False
) -> Any:
    messages = probe_messages()
    call = channel.unary_stream if stream else channel.unary_unary
    return call(
        f"/{SERVICE}/{name}",
        request_serializer=messages[request_type].SerializeToString,
        response_deserializer=messages["CheckResponse"].FromString,
    )


async def test_invalid_requests_never_reach_the_handler(probe: Any, make_token: TokenFactory) -> None:
    servicer, channel = probe
    metadata = auth_metadata(make_token())
    invalid = probe_messages()["CheckRequest"](**{**VALID, "text": "x" * 32_001})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _method(channel, "Check")(invalid, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "text: must be at most 32000 characters"

    nested = probe_messages()["CheckRequest"](**VALID, turn={"role": 1, "tool_calls": [{"name": ""}]})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in _method(channel, "Watch", stream=True)(nested, metadata=metadata):
            pytest.fail("a streaming handler answered an invalid request")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "turn.tool_calls[0].name: must be at least 1 characters"
    assert servicer.received == []

    valid = probe_messages()["CheckRequest"](**{**VALID, "text": "hello there"})
    assert (await _method(channel, "Check")(valid, metadata=metadata)).text == "hello there"
    words = [event.text async for event in _method(channel, "Watch", stream=True)(valid, metadata=metadata)]
    assert words == ["hello", "there"]
    assert servicer.received == [valid, valid]


async def test_an_unauthenticated_caller_learns_nothing_about_its_request(probe: Any) -> None:
    _, channel = probe
    invalid = probe_messages()["CheckRequest"](agent_id="Not An Agent")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _method(channel, "Check")(invalid)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_rule_that_cannot_compile_is_an_internal_error_and_logged(
    probe: Any, make_token: TokenFactory, caplog: pytest.LogCaptureFixture
) -> None:
    servicer, channel = probe
    request = probe_messages()["MismatchedRequest"](count=1)
    with (
        caplog.at_level(logging.ERROR, logger="athena.errors"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await _method(channel, "Mismatched", "MismatchedRequest")(
            request, metadata=auth_metadata(make_token())
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "MismatchedRequest" not in (caught.value.details() or "")
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert any(isinstance(error, protovalidate.CompilationError) for error in logged)
    assert servicer.received == []
