"""Property: whatever a client puts in the fields of any public Chat or Account request, the router (with
the real orchestrator, memory, offline model and auth behind it) answers a deliberate status — never
INTERNAL or UNKNOWN — and every service is still SERVING afterwards."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_fixtures import Orchestrator, Router, RouterMesh, mesh  # type: ignore[import-not-found]

__all__ = ["mesh"]


@pytest_asyncio.fixture(scope="module")
async def backend(mesh: RouterMesh) -> tuple[Router, Orchestrator]:
    orchestrator = await mesh.start_orchestrator()
    # Generous limits: the point is what the services do with the input, not the rate limiter.
    router = await mesh.start_router([orchestrator], turns_per_minute=10_000, max_streams_per_user=100)
    return router, orchestrator


# UTF-8 encodable text (no lone surrogates, which protobuf refuses to serialise on the client already).
CHARACTERS = st.characters(exclude_categories=("Cs",))
STRINGS = st.one_of(
    st.text(CHARACTERS, max_size=80),
    st.sampled_from(
        ["", " ", "athena", "nutrition", "nobody", "\x00", "remember I like tea", "ask focus hi"]
    ),
    st.uuids().map(str),
    st.uuids().map(lambda value: str(value).upper()),
    st.from_regex(r"[a-z][a-z0-9_-]{0,40}", fullmatch=True),
    # Huge values, up to ~40k characters (beyond the 32,000 the text field allows).
    st.builds(
        lambda piece, count: (piece * count)[:40_000],
        st.text(CHARACTERS, min_size=1, max_size=8),
        st.integers(min_value=1_000, max_value=40_000),
    ),
)
INTEGERS = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1), st.integers(min_value=-2, max_value=120)
)


PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "agent_id": st.sampled_from(["athena", "nutrition", "focus", "sme"]),
    "conversation_id": st.one_of(st.just(""), st.just(""), st.uuids().map(str)),
    "client_request_id": st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)),
    "text": st.text(CHARACTERS, min_size=1, max_size=200).filter(
        lambda text: text.strip() and "\x00" not in text
    ),
    "page_size": st.integers(min_value=0, max_value=100),
    "page_token": st.just(""),
}
"""Valid values of the fields, for the fields of a request that are not drawn at random."""


def random_values(descriptor: FieldDescriptor) -> st.SearchStrategy[Any]:
    if descriptor.type == FieldDescriptor.TYPE_STRING:
        return STRINGS
    if descriptor.type == FieldDescriptor.TYPE_INT32:
        return INTEGERS
    if descriptor.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        return st.one_of(st.none(), requests(descriptor.message_type._concrete_class))
    raise AssertionError(f"no strategy for field {descriptor.full_name}")


def requests(message_type: type[Message]) -> st.SearchStrategy[Message]:
    """Instances of `message_type` (scalars, or messages of scalars, or left unset): a random subset of the
    fields gets random values, the others valid ones, so a random value also reaches code behind the other
    fields' checks."""
    fields = message_type.DESCRIPTOR.fields
    if not fields:
        return st.just(message_type())

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        chaotic = draw(st.sets(st.sampled_from([field.name for field in fields])))
        values = {
            field.name: draw(
                random_values(field)
                if field.name in chaotic or field.name not in PLAUSIBLE
                else PLAUSIBLE[field.name]
            )
            for field in fields
        }
        return message_type(**values)

    return build()


CHAT = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
ACCOUNT = account_pb2.DESCRIPTOR.services_by_name["AccountService"]
MESSAGES = {**vars(chat_pb2), **vars(account_pb2)}
METHODS = [(service, method) for service in (CHAT, ACCOUNT) for method in service.methods]


def test_every_public_method_is_fuzzed() -> None:
    names = {method.name for _, method in METHODS}
    assert names == {
        "ListAgents",
        "SetAgentEnabled",
        "Chat",
        "ListConversations",
        "GetConversation",
        "DeleteConversation",
        "ListMemories",
        "ForgetMemory",
        "CorrectMemory",
        "GetMemoryHistory",
        "GetMemorySettings",
        "SetMemorySettings",
        "ExportData",
        "DeleteAccount",
    }


async def call(router: Router, service: Any, method: Any, request: Message, metadata: Any) -> None:
    stub: Any = router.chat if service is CHAT else router.account
    rpc = getattr(stub, method.name)
    if method.server_streaming:
        async for _ in rpc(request, metadata=metadata, timeout=30):
            pass
    else:
        await rpc(request, metadata=metadata, timeout=30)


FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[method.name for _, method in METHODS])
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
async def test_random_requests_get_a_deliberate_status(
    mesh: RouterMesh, backend: tuple[Router, Orchestrator], service: Any, method: Any, data: st.DataObject
) -> None:
    router, _ = backend
    request = data.draw(requests(MESSAGES[method.input_type.name]), label="request")
    _, metadata = mesh.user()
    status, details = grpc.StatusCode.OK, ""
    try:
        await call(router, service, method, request, metadata)
    except grpc.aio.AioRpcError as error:
        status, details = error.code(), error.details() or ""
    assert status not in FORBIDDEN, f"{method.name} answered {status}: {details}"
    assert "Traceback" not in details


async def test_every_service_is_still_serving(mesh: RouterMesh, backend: tuple[Router, Orchestrator]) -> None:
    router, orchestrator = backend
    for port in (
        router.server.port,
        orchestrator.server.port,
        mesh.memory.port,
        mesh.auth_service.port,
    ):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # And still answering real turns.
    _, metadata = mesh.user()
    events = [
        event
        async for event in router.chat.Chat(
            chat_pb2.ChatRequest(agent_id="athena", text=f"hello {uuid.uuid4().hex}"),
            metadata=metadata,
            timeout=20,
        )
    ]
    assert events[-1].HasField("message_completed")
