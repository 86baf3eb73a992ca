"""How the router uses the orchestrator pool: round-robin over replicas behind one target, the caller's
deadline passed on, a turn retried only before its first event, client cancellation passed down, and a
replica dying mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from conftest import service_settings
from grpc_health.v1 import health_pb2
from joserfc.jwk import RSAKey
from router_fixtures import (  # type: ignore[import-not-found]
    CountingModel,
    Orchestrator,
    Plan,
    RouterMesh,
    StubOrchestrator,
    answer,
    chat,
    expect_status,
    expect_stream_status,
    pool_target,
    router_mesh,
)

from devstack.postgres import EmbeddedPostgres
from devstack.process import free_port
from devstack.valkey import EmbeddedValkey
from router.app import ROUTER, RouterDeps
from router.settings import RouterSettings


@pytest_asyncio.fixture(scope="module")
async def mesh(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    make_token: Callable[..., str],
    signing_key: RSAKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RouterMesh]:
    async with router_mesh(postgres, valkey, make_token, signing_key, tmp_path_factory) as harness:
        yield harness


@dataclass
class StubPool:
    plan: Plan
    replicas: list[StubOrchestrator]
    orchestrators: list[Orchestrator]


@pytest_asyncio.fixture(scope="module")
async def stubs(mesh: RouterMesh) -> StubPool:
    plan = Plan()
    replicas = [StubOrchestrator(plan), StubOrchestrator(plan)]
    orchestrators = [await mesh.serve_orchestrator(replica) for replica in replicas]
    return StubPool(plan, replicas, orchestrators)


async def warm_up(mesh: RouterMesh, router: Any, replicas: list[StubOrchestrator]) -> None:
    """Until both replicas have answered: round-robin then alternates strictly between them."""
    _, metadata = mesh.user()
    for _ in range(20):
        await chat(router.chat, metadata, "warm up")
        if all(replica.outcomes for replica in replicas):
            return
    raise AssertionError("round-robin never reached both replicas")


async def test_turns_are_spread_over_every_orchestrator_behind_the_target(mesh: RouterMesh) -> None:
    replicas = [await mesh.start_orchestrator(), await mesh.start_orchestrator()]
    router = await mesh.start_router(replicas)
    _, metadata = mesh.user()
    for n in range(8):
        assert answer(await chat(router.chat, metadata, f"hello {n}")) == "I don't know that yet."
    runs = [replica.servicer.runs for replica in replicas]
    assert sum(runs) == 8
    assert min(runs) >= 3, runs


async def test_the_callers_remaining_deadline_reaches_the_orchestrator(mesh: RouterMesh) -> None:
    orchestrator = await mesh.start_orchestrator()
    router = await mesh.start_router([orchestrator])
    counting: CountingModel = orchestrator.servicer
    _, metadata = mesh.user()

    await chat(router.chat, metadata, "hello", deadline=2.0)
    [seen] = counting.time_remaining
    assert seen is not None
    # gRPC rounds the grpc-timeout header up to a few significant digits: allow that much.
    assert 0 < seen <= 2.0 * 1.01

    await chat(router.chat, metadata, "hello", deadline=3600)
    assert counting.time_remaining[-1] is not None
    assert 3000 < counting.time_remaining[-1] <= 3600 * 1.01

    request = chat_pb2.ChatRequest(agent_id="athena", text="no deadline")
    [event async for event in router.chat.Chat(request, metadata=metadata)]
    assert counting.time_remaining[-1] is None  # no deadline was made up on the way


async def test_a_run_failing_before_its_first_event_is_retried_on_the_other_replica(
    mesh: RouterMesh, stubs: StubPool
) -> None:
    router = await mesh.start_router(stubs.orchestrators)
    await warm_up(mesh, router, stubs.replicas)
    for replica in stubs.replicas:
        replica.outcomes.clear()
    _, metadata = mesh.user()

    stubs.plan.fail_before_first = 1
    events = await chat(router.chat, metadata, "hello")

    assert answer(events) == "fine"
    outcomes = sorted(replica.outcomes[0] for replica in stubs.replicas if replica.outcomes)
    assert outcomes == ["completed", "failed before first event"]
    assert sum(len(replica.outcomes) for replica in stubs.replicas) == 2


async def test_a_run_failing_after_its_first_event_is_not_retried(mesh: RouterMesh, stubs: StubPool) -> None:
    router = await mesh.start_router(stubs.orchestrators)
    for replica in stubs.replicas:
        replica.outcomes.clear()
    _, metadata = mesh.user()
    stubs.plan.fail_after_first = 1
    received: list[chat_pb2.ChatResponse] = []

    async def read() -> None:
        request = chat_pb2.ChatRequest(agent_id="athena", text="hello")
        async for event in router.chat.Chat(request, metadata=metadata, timeout=10):
            received.append(event)

    error = await expect_status(read(), grpc.StatusCode.UNAVAILABLE)

    assert "replica lost its model" in (error.details() or "")
    assert [event.WhichOneof("event") for event in received] == ["conversation_started"]
    assert [outcome for replica in stubs.replicas for outcome in replica.outcomes] == [
        "failed after first event"
    ]


async def test_a_run_the_replica_cancels_mid_turn_is_unavailable_to_the_client(
    mesh: RouterMesh, stubs: StubPool
) -> None:
    router = await mesh.start_router(stubs.orchestrators)
    _, metadata = mesh.user()
    stubs.plan.cancel_after_first = 1
    error = await expect_stream_status(
        router.chat.Chat(chat_pb2.ChatRequest(agent_id="athena", text="hi"), metadata=metadata, timeout=10),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert "your message is stored" in (error.details() or "")


async def test_a_pool_failing_every_attempt_answers_unavailable(mesh: RouterMesh, stubs: StubPool) -> None:
    router = await mesh.start_router(stubs.orchestrators, chat_attempts=2)
    for replica in stubs.replicas:
        replica.outcomes.clear()
    _, metadata = mesh.user()
    stubs.plan.fail_before_first = 5
    try:
        await expect_stream_status(
            router.chat.Chat(
                chat_pb2.ChatRequest(agent_id="athena", text="hi"), metadata=metadata, timeout=10
            ),
            grpc.StatusCode.UNAVAILABLE,
        )
    finally:
        stubs.plan.fail_before_first = 0
    assert sum(len(replica.outcomes) for replica in stubs.replicas) == 2


async def test_a_client_cancelling_its_chat_cancels_the_orchestrator_run(
    mesh: RouterMesh, stubs: StubPool
) -> None:
    router = await mesh.start_router(stubs.orchestrators)
    _, metadata = mesh.user()
    stubs.plan.hold = True
    stubs.plan.cancelled.clear()
    try:
        call = router.chat.Chat(
            chat_pb2.ChatRequest(agent_id="athena", text="hello"), metadata=metadata, timeout=10
        )
        first = await call.read()
        assert isinstance(first, chat_pb2.ChatResponse)
        assert first.HasField("conversation_started")
        call.cancel()
        await asyncio.wait_for(stubs.plan.cancelled.wait(), timeout=5)
    finally:
        stubs.plan.hold = False


async def test_a_replica_dying_mid_stream_fails_that_turn_only_and_the_survivor_takes_the_next(
    mesh: RouterMesh,
) -> None:
    replicas = [await mesh.start_orchestrator(), await mesh.start_orchestrator()]
    router = await mesh.start_router(replicas)
    _, metadata = mesh.user()
    call = router.chat.Chat(
        chat_pb2.ChatRequest(agent_id="athena", text="!slow 10000 a long answer please"),
        metadata=metadata,
        timeout=20,
    )
    first = await call.read()
    assert isinstance(first, chat_pb2.ChatResponse)
    conversation_id = first.conversation_started.conversation_id
    assert (await call.read()).HasField("memories_recalled")
    [serving] = [replica for replica in replicas if replica.servicer.active]
    [survivor] = [replica for replica in replicas if replica is not serving]

    assert serving.server._server is not None
    await serving.server._server.stop(0)  # a crash: no drain, the stream is cut

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()

    stored = await router.chat.GetConversation(
        chat_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=metadata
    )
    assert stored.conversation.messages[0].content == "!slow 10000 a long answer please"

    before = survivor.servicer.runs
    events = await chat(router.chat, metadata, "hello again", conversation_id=conversation_id)
    assert events[-1].HasField("message_completed")
    assert survivor.servicer.runs == before + 1
    assert await router.health() == health_pb2.HealthCheckResponse.SERVING


async def test_a_peer_that_is_down_is_told_in_our_words(mesh: RouterMesh, stubs: StubPool) -> None:
    """grpc's own message for an unreachable peer names addresses and ports ("failed to connect to all
    addresses; last error: ... ipv4:127.0.0.1:<port>"): the client reads a sentence instead."""
    settings = RouterSettings(
        **service_settings(
            mesh.base,
            orchestrator_target=pool_target(stubs.orchestrators),
            memory_target=f"127.0.0.1:{free_port()}",
            auth_target=f"127.0.0.1:{free_port()}",
            redis_url=mesh.redis_url,
        )
    )
    router = await mesh.services.start(ROUTER, settings, RouterDeps(verifier=mesh.verifier))
    _, metadata = mesh.user()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        for call in (
            chat_pb2_grpc.ChatServiceStub(channel).ListConversations(
                chat_pb2.ListConversationsRequest(), metadata=metadata, timeout=10
            ),
            account_pb2_grpc.AccountServiceStub(channel).DeleteAccount(
                account_pb2.DeleteAccountRequest(), metadata=metadata, timeout=10
            ),
        ):
            error = await expect_status(call, grpc.StatusCode.UNAVAILABLE)
            assert error.details() == "a service needed to answer is unavailable; try again"
