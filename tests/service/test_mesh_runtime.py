"""The shared runtime on a real server: error mapping, auth, health, drain order, reflection, metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from conftest import TokenFactory, auth_metadata, service_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rawgrpc import frame, raw_call

from devstack.process import free_port
from mesh import errors
from mesh.clients import channel, outgoing
from mesh.context import principal
from mesh.server import EDGE_REFLECTION_HEADER, LIVENESS, MeshServer, Service
from mesh.settings import ServiceSettings
from mesh.tokens import TokenVerifier

CHAT = "athena.chat.v1.ChatService"


def cid(name: str) -> str:
    """A conversation id (a UUID, as the contract wants) standing for what the probe should do."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"probe:{name}"))


RAISED: dict[str, Exception] = {
    cid("not-found"): errors.NotFound("conversation not found"),
    cid("invalid"): errors.InvalidArgument("conversation_id", "must be a UUID"),
    cid("exhausted"): errors.ResourceExhausted("too many turns", retry_after=7),
    cid("unavailable"): errors.Unavailable("memory is unreachable"),
    cid("bug"): RuntimeError("secret internal detail"),
}


class ProbeServicer(chat_pb2_grpc.ChatServiceServicer):
    """Raises what the request names; reports the principal and the deadline it would pass on."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def GetConversation(
        self, request: chat_pb2.GetConversationRequest, context: Any
    ) -> chat_pb2.GetConversationResponse:
        if request.conversation_id in RAISED:
            raise RAISED[request.conversation_id]
        if request.conversation_id == cid("slow"):
            await self.release.wait()
        options = outgoing(timeout=100)
        title = json.dumps({"user": principal().user_id, "timeout": options["timeout"]})
        return chat_pb2.GetConversationResponse(conversation=chat_pb2.Conversation(title=title))

    async def Chat(self, request: chat_pb2.ChatRequest, context: Any) -> AsyncIterator[chat_pb2.ChatResponse]:
        yield chat_pb2.ChatResponse(text_delta=chat_pb2.TextDelta(text="partial "))
        raise errors.Unavailable("the model went away")


@pytest.fixture
async def probe(
    tmp_path: Path, start_server: Any, verifier: TokenVerifier
) -> AsyncIterator[tuple[MeshServer, ProbeServicer, grpc.aio.Channel]]:
    servicer = ProbeServicer()  # type: ignore[abstract]  # only the methods under test
    settings = ServiceSettings(
        **service_settings(tmp_path, drain_seconds=5.0, request_read_timeout_seconds=0.5)
    )
    server = await start_server(
        "probe",
        settings,
        [Service(CHAT, servicer, chat_pb2_grpc.add_ChatServiceServicer_to_server)],
        verifier,
        edge_reflection_services=[CHAT, "athena.auth.v1.AuthService"],
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, servicer, channel


async def test_domain_errors_become_statuses_and_bugs_stay_private(
    probe: Any, make_token: TokenFactory
) -> None:
    _, _, channel = probe
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    metadata = auth_metadata(make_token())
    expected = {
        "not-found": (grpc.StatusCode.NOT_FOUND, "conversation not found"),
        "invalid": (grpc.StatusCode.INVALID_ARGUMENT, "conversation_id: must be a UUID"),
        "exhausted": (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many turns"),
        "unavailable": (grpc.StatusCode.UNAVAILABLE, "memory is unreachable"),
    }
    for name, (code, details) in expected.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetConversation(
                chat_pb2.GetConversationRequest(conversation_id=cid(name)), metadata=metadata
            )
        assert caught.value.code() == code, name
        assert caught.value.details() == details
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetConversation(
            chat_pb2.GetConversationRequest(conversation_id=cid("exhausted")), metadata=metadata
        )
    trailers: Any = caught.value.trailing_metadata()
    assert ("retry-after", "7") in [tuple(item) for item in trailers]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetConversation(
            chat_pb2.GetConversationRequest(conversation_id=cid("bug")), metadata=metadata
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "Traceback" not in (caught.value.details() or "")


async def test_stream_error_after_first_event_keeps_what_was_sent(
    probe: Any, make_token: TokenFactory
) -> None:
    _, _, channel = probe
    call = chat_pb2_grpc.ChatServiceStub(channel).Chat(
        chat_pb2.ChatRequest(agent_id="athena", text="hi"), metadata=auth_metadata(make_token())
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            received.append(event.text_delta.text)
    assert received == ["partial "]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_need_a_valid_token_and_handlers_see_its_subject(
    probe: Any, make_token: TokenFactory
) -> None:
    _, _, channel = probe
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    request = chat_pb2.GetConversationRequest(conversation_id=cid("ok"))
    for metadata in [
        (),
        (("authorization", "Basic abc"),),
        auth_metadata("not.a.jwt"),
        auth_metadata("x" * 10),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetConversation(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    expired = make_token(exp=1_000_000_000, iat=999_999_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetConversation(request, metadata=auth_metadata(expired))
    assert caught.value.details() == "access token expired"

    response = await stub.GetConversation(request, metadata=auth_metadata(make_token("user-1")), timeout=30)
    seen = json.loads(response.conversation.title)
    assert seen["user"] == "user-1"
    assert 25 < seen["timeout"] < 31, "the remaining deadline, not the 100 s asked for, goes downstream"


async def test_health_per_service_name_flips_before_the_drain(probe: Any, make_token: TokenFactory) -> None:
    server, servicer, channel = probe
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", CHAT):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="athena.unknown.v1.Nothing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    stub = chat_pb2_grpc.ChatServiceStub(channel)
    in_flight = asyncio.ensure_future(
        stub.GetConversation(
            chat_pb2.GetConversationRequest(conversation_id=cid("slow")), metadata=auth_metadata(make_token())
        )
    )
    await asyncio.sleep(0.1)
    drain = asyncio.ensure_future(server.drain())
    await asyncio.sleep(0.2)
    # Draining: health already says NOT_SERVING while the in-flight call still runs.
    assert not in_flight.done()
    assert server.health._server_status[CHAT] == health_pb2.HealthCheckResponse.NOT_SERVING
    servicer.release.set()
    response = await in_flight
    assert response.conversation.title
    await drain


async def test_reflection_lists_own_services_and_the_public_api_through_the_edge(probe: Any) -> None:
    _, _, channel = probe
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def list_services(metadata: tuple[tuple[str, str], ...]) -> set[str]:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request]), metadata=metadata):
            return {service.name for service in response.list_services_response.service}
        return set()

    own = await list_services(())
    assert own == {CHAT, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    through_edge = await list_services(((EDGE_REFLECTION_HEADER, "1"),))
    assert "athena.auth.v1.AuthService" in through_edge


async def test_metrics_count_calls_by_method_and_status(probe: Any, make_token: TokenFactory) -> None:
    server, _, channel = probe
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetConversation(chat_pb2.GetConversationRequest(conversation_id=cid("not-found")))
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{server.http.port}/metrics")).text
    assert 'grpc_server_handled_total{grpc_code="UNAUTHENTICATED",grpc_method="GetConversation"' in text
    assert "grpc_server_handling_seconds_bucket" in text


async def test_liveness_stays_serving_while_readiness_fails(
    tmp_path: Path, start_server: Any, verifier: TokenVerifier
) -> None:
    ready = False

    async def readiness() -> bool:
        return ready

    settings = ServiceSettings(**service_settings(tmp_path, readiness_interval_seconds=0.05))
    server = await start_server(
        "probe",
        settings,
        [Service(CHAT, ProbeServicer(), chat_pb2_grpc.add_ChatServiceServicer_to_server)],  # type: ignore[abstract]
        verifier,
        readiness=readiness,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(name: str) -> int:
            return int((await health.Check(health_pb2.HealthCheckRequest(service=name))).status)

        for _ in range(100):
            if await status(CHAT) == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert await status(CHAT) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status(LIVENESS) == health_pb2.HealthCheckResponse.SERVING
        ready = True
        for _ in range(100):
            if await status(CHAT) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.02)
        assert await status(CHAT) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("method", ["GetConversation", "Chat"])
@pytest.mark.parametrize(
    ("body", "end_stream", "problem"),
    [
        pytest.param(b"", True, "request: the call carried no request message", id="empty-body"),
        pytest.param(b"\x00\x00\x00", True, "request: the call carried no request message", id="cut-prefix"),
        pytest.param(
            b"\x00\x00\x00\x00\x10ab", True, "request: the call carried no request message", id="short-body"
        ),
        pytest.param(
            b"\x00\x00\x00\x00\x10ab",
            False,
            "request: the request message did not arrive whole within 0.5 seconds",
            id="body-never-ends",
        ),
        pytest.param(
            frame(b"\xff\xff\xff"),
            True,
            "request: is not a valid athena.chat.v1.{type} message",
            id="not-the-message",
        ),
    ],
)
async def test_a_request_that_cannot_be_read_still_gets_a_status(
    probe: Any, method: str, body: bytes, end_stream: bool, problem: str
) -> None:
    """grpc's own server drops such calls without a status (the client waits until its connection dies)
    and answers undecodable ones UNKNOWN with the parser's exception: here each one is INVALID_ARGUMENT
    with a sentence, at once or after the read timeout."""
    server, _, _ = probe
    answer = await raw_call(server.port, f"/{CHAT}/{method}", body, end_stream=end_stream, within=5)
    assert answer.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), answer
    request_type = "GetConversationRequest" if method == "GetConversation" else "ChatRequest"
    assert answer.grpc_message == problem.format(type=request_type), answer


async def test_a_burst_of_calls_waits_for_the_streams_a_server_accepts(
    tmp_path: Path, start_server: Any, verifier: TokenVerifier, make_token: TokenFactory
) -> None:
    """A server refuses streams beyond its MAX_CONCURRENT_STREAMS and grpc's client sends them anyway: 23 of
    1,000 chat turns started at once failed UNAVAILABLE when memory refused the orchestrator's StartTurn
    calls. A mesh channel holds calls beyond its limit back until a slot frees, so a burst only waits."""
    servicer = ProbeServicer()  # type: ignore[abstract]  # only the methods under test
    settings = ServiceSettings(**service_settings(tmp_path, max_concurrent_streams=4))
    services = [Service(CHAT, servicer, chat_pb2_grpc.add_ChatServiceServicer_to_server)]
    server = await start_server("probe", settings, services, verifier)
    peer = channel(f"127.0.0.1:{server.port}", max_calls_in_flight=4)
    stub = chat_pb2_grpc.ChatServiceStub(peer)
    metadata = auth_metadata(make_token())
    request = chat_pb2.GetConversationRequest(conversation_id=cid("ok"))
    try:
        answers = await asyncio.gather(
            *(stub.GetConversation(request, metadata=metadata, timeout=30) for _ in range(300)),
            return_exceptions=True,
        )
    finally:
        await peer.close(grace=None)
    refused = [answer for answer in answers if isinstance(answer, Exception)]
    assert not refused, f"{len(refused)} of 300 calls failed, for example {refused[0]!r}"


async def test_a_channel_calls_a_returning_peer_within_two_seconds(
    tmp_path: Path, verifier: TokenVerifier
) -> None:
    """Finding 6 of issue 12: a restarted memory served for 13.5 s before any peer called it (gRPC's
    default reconnect backoff grows without a useful cap). After several seconds down, the peer is
    called again within two seconds of its return."""
    settings = ServiceSettings(**service_settings(tmp_path, port=free_port(), drain_seconds=0.1))
    peer = channel(f"127.0.0.1:{settings.port}")
    health = health_pb2_grpc.HealthStub(peer)

    async def answered() -> bool:
        try:
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        except grpc.aio.AioRpcError:
            return False
        return True

    server = MeshServer("peer", settings, [], verifier=verifier)
    await server.start()
    try:
        assert await answered()
        await server.drain()
        down_until = time.monotonic() + 6  # long enough for gRPC's default backoff to reach 4-6 s
        while time.monotonic() < down_until:
            assert not await answered()
            await asyncio.sleep(0.2)
        server = MeshServer("peer", settings, [], verifier=verifier)
        await server.start()
        back = time.monotonic()
        while not await answered():
            assert time.monotonic() - back < 2, "the returning peer was not called within 2 s"
            await asyncio.sleep(0.05)
    finally:
        await server.drain()
        await peer.close(grace=None)
