"""Faults: PostgreSQL restarting under a running service, Redis down. Each test runs its own servers so
stopping them does not disturb the rest of the suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from athena.account.v1 import account_pb2
from athena.memory.v1 import memory_pb2
from conftest import running_postgres, running_valkey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memory_fixtures import MemoryHarness, expect_status, start_memory, start_turn_request

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh.tokens import TokenVerifier

MEMORY_SERVICE = "athena.memory.v1.MemoryService"
FAST_FAILING = {
    "db_acquire_timeout_seconds": 1.0,
    "db_command_timeout_seconds": 2.0,
    "redis_timeout_seconds": 0.5,
    "pool_min_size": 1,
}


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    with running_postgres(tmp_path_factory.mktemp("memory-fault-postgres")) as server:
        yield server


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with running_valkey(tmp_path_factory.mktemp("memory-fault-valkey")) as server:
        yield server


async def health(harness: MemoryHarness) -> int:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=MEMORY_SERVICE), timeout=2)
    return int(response.status)


async def eventually(check: Callable[[], Any], within: float = 20.0) -> Any:
    """Retries `check` (an async callable) until it returns without raising, for at most `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except (AssertionError, grpc.aio.AioRpcError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_postgres_restart_answers_unavailable_then_recovers_without_a_restart(
    own_postgres: EmbeddedPostgres,
    own_valkey: EmbeddedValkey,
    start_service: Callable[..., Any],
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    harness = await start_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        own_postgres.url,
        own_valkey.url,
        readiness_interval_seconds=0.2,
        **FAST_FAILING,
    )
    try:
        _, md = harness.user()
        remember = memory_pb2.RememberRequest(
            text="my caloric goal is 2000 kcal", scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena"
        )
        await harness.memory.Remember(remember, metadata=md, timeout=10)

        await asyncio.to_thread(own_postgres.stop)
        await expect_status(
            harness.memory.Remember(remember, metadata=md, timeout=10), grpc.StatusCode.UNAVAILABLE
        )
        await expect_status(
            harness.conversations.ListConversations(
                memory_pb2.ListConversationsRequest(), metadata=md, timeout=10
            ),
            grpc.StatusCode.UNAVAILABLE,
        )

        async def not_serving() -> None:
            assert await health(harness) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, within=10)
        # Ephemeral values do not need PostgreSQL.
        await harness.memory.PutEphemeral(
            memory_pb2.PutEphemeralRequest(namespace="n", key="k", value_json="1"), metadata=md, timeout=5
        )

        await asyncio.to_thread(own_postgres.start)

        async def recalls() -> memory_pb2.RecallResponse:
            return await harness.memory.Recall(
                memory_pb2.RecallRequest(query="what is my caloric goal?", agent_id="athena"),
                metadata=md,
                timeout=5,
            )

        recalled = await eventually(recalls)
        assert [r.memory.text for r in recalled.results] == ["my caloric goal is 2000 kcal"]

        async def serving() -> None:
            assert await health(harness) == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, within=10)
    finally:
        await harness.service.stop()


async def test_redis_down_fails_only_ephemeral_calls(
    own_postgres: EmbeddedPostgres,
    own_valkey: EmbeddedValkey,
    start_service: Callable[..., Any],
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    harness = await start_memory(
        start_service,
        verifier,
        make_token,
        tmp_path,
        own_postgres.url,
        own_valkey.url,
        readiness_interval_seconds=0.2,
        **FAST_FAILING,
    )
    try:
        _, md = harness.user()
        put = memory_pb2.PutEphemeralRequest(
            namespace="wearable_stats", key="steps", value_json='{"steps": 1}'
        )
        await harness.memory.PutEphemeral(put, metadata=md, timeout=5)

        await asyncio.to_thread(own_valkey.stop)
        await expect_status(
            harness.memory.PutEphemeral(put, metadata=md, timeout=5), grpc.StatusCode.UNAVAILABLE
        )
        await expect_status(
            harness.memory.GetEphemeral(
                memory_pb2.GetEphemeralRequest(namespace="wearable_stats", key="steps"),
                metadata=md,
                timeout=5,
            ),
            grpc.StatusCode.UNAVAILABLE,
        )
        await harness.memory.Remember(
            memory_pb2.RememberRequest(
                text="I walk daily", scope=account_pb2.MEMORY_SCOPE_USER, agent_id="athena"
            ),
            metadata=md,
            timeout=5,
        )
        recalled = await harness.memory.Recall(
            memory_pb2.RecallRequest(query="I walk daily", agent_id="athena"), metadata=md, timeout=5
        )
        assert [r.memory.text for r in recalled.results] == ["I walk daily"]
        await harness.conversations.StartTurn(
            start_turn_request(agent_id="athena", text="hi"), metadata=md, timeout=5
        )
        await asyncio.sleep(0.5)
        assert await health(harness) == health_pb2.HealthCheckResponse.SERVING

        await asyncio.to_thread(own_valkey.start)

        async def puts() -> None:
            await harness.memory.PutEphemeral(put, metadata=md, timeout=5)

        await eventually(puts, within=10)
    finally:
        await harness.service.stop()
