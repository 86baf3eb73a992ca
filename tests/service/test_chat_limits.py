"""Per-user chat limits against a real Valkey: the Redis store itself, limits shared by two orchestrator
replicas (which serve Chat and admit each turn), the retry-after trailer, a killed replica's slots freed
within one lease, and failing open when Redis is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as redis
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from conftest import auth_metadata
from doubles.clock import FakeClock
from grpc_health.v1 import health_pb2, health_pb2_grpc
from router_fixtures import (  # type: ignore[import-not-found]
    SERVICE_KEY,
    Metadata,
    RouterMesh,
    chat,
    expect_stream_status,
    mesh,
)

from auth.app import JWKS_PATH
from devstack.process import free_port
from devstack.valkey import EmbeddedValkey
from mesh.errors import ResourceExhausted, Unavailable
from mesh.redis import connect
from orchestrator.app import OrchestratorDeps
from orchestrator.limits import Limiter, Limits
from orchestrator.redis_limits import RedisLimitStore

__all__ = ["mesh"]

ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[tuple[RedisLimitStore, redis.Redis]]:
    client = connect(valkey.url, 1.0)
    yield RedisLimitStore(client), client
    await client.aclose()


# What every LimitStore does (counting, leases, release) is tests/service/test_limit_store_contract.py;
# these check what only Redis has: keys that expire on their own and leave nothing behind.


async def test_turn_counters_expire_with_their_window(
    store: tuple[RedisLimitStore, redis.Redis],
) -> None:
    limits, client = store
    user = str(uuid.uuid4())
    now = time.time()
    await limits.admit(user, "a", now, now + 10, 42, 61)
    await limits.admit(user, "b", now, now + 10, 42, 61)
    assert 0 < await client.ttl(limits.turns_key(user, 42)) <= 61


async def test_stream_leases_leave_only_open_streams_in_an_expiring_set(
    store: tuple[RedisLimitStore, redis.Redis],
) -> None:
    limits, client = store
    user = str(uuid.uuid4())
    now = time.time()
    await limits.admit(user, "a", now, now + 10, 1, 61)
    await limits.admit(user, "b", now, now + 10, 1, 61)
    await limits.admit(user, "c", now + 11, now + 21, 1, 61)  # drops "a" and "b", expired
    await limits.admit(user, "d", now + 11, now + 21, 1, 61)
    await limits.release_stream(user, "d")
    assert await client.zrange(limits.streams_key(user), 0, -1) == ["c"]
    assert 8 < await client.ttl(limits.streams_key(user)) <= 10


async def test_a_renewed_lease_keeps_the_set_alive_and_a_lost_one_leaves_no_key_forever(
    store: tuple[RedisLimitStore, redis.Redis],
) -> None:
    limits, client = store
    user = str(uuid.uuid4())
    now = time.time()
    await limits.admit(user, "a", now, now + 2, 1, 61)
    await limits.renew_stream(user, "a", now, now + 30)
    assert 28 < await client.ttl(limits.streams_key(user)) <= 30
    await client.delete(limits.streams_key(user))  # Redis restarted without the set
    await limits.renew_stream(user, "a", now, now + 30)
    assert 28 < await client.ttl(limits.streams_key(user)) <= 30


async def test_a_store_that_cannot_reach_redis_fails_fast() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await RedisLimitStore(client).admit("someone", "s", 0.0, 10.0, 1, 61)
    assert time.monotonic() - started < 2
    await client.aclose()


HOLD = "!slow 60000 hold this stream open"
"""Held open by the offline model (a test directive) until the client cancels it."""

Chat = chat_pb2_grpc.ChatServiceStub


def retry_after(error: grpc.aio.AioRpcError) -> float:
    trailers: Any = error.trailing_metadata() or ()
    return float(dict(trailers)["retry-after"])


async def replica(mesh: RouterMesh, deps: OrchestratorDeps | None = None, **settings: Any) -> Chat:
    """A real orchestrator replica (limits in the shared Valkey) and a Chat stub calling it alone."""
    orchestrator = await mesh.start_orchestrator(deps, **settings)
    channel = grpc.aio.insecure_channel(orchestrator.address)
    mesh.channels.append(channel)
    return chat_pb2_grpc.ChatServiceStub(channel)


async def open_stream(stub: Chat, metadata: Metadata) -> Any:
    """A Chat whose first event arrived and whose answer waits: it holds a stream slot until cancelled."""
    call = stub.Chat(chat_pb2.ChatRequest(agent_id="athena", text=HOLD), metadata=metadata, timeout=20)
    first = await call.read()
    assert isinstance(first, chat_pb2.ChatResponse), first
    return call


async def refused(stub: Chat, metadata: Metadata) -> grpc.aio.AioRpcError:
    return await expect_stream_status(
        stub.Chat(chat_pb2.ChatRequest(agent_id="athena", text="hi"), metadata=metadata, timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


async def test_concurrent_streams_are_limited_across_orchestrator_replicas(mesh: RouterMesh) -> None:
    one = await replica(mesh, max_streams_per_user=2)
    two = await replica(mesh, max_streams_per_user=2)
    _, metadata = mesh.user()
    _, someone_else = mesh.user()
    first = await open_stream(one, metadata)
    second = await open_stream(two, metadata)
    for stub in (one, two):
        error = await refused(stub, metadata)
        assert "at most 2" in (error.details() or "")
        assert retry_after(error) == 1
    other = await open_stream(one, someone_else)  # limits are per user

    first.cancel()  # a stream ending (even cancelled) frees its slot on every replica
    third = None
    for _ in range(100):
        try:
            third = await open_stream(two, metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.05)
        else:
            break
    assert third is not None, "the cancelled stream never gave its slot back"
    for call in (second, third, other):
        call.cancel()


async def orchestrator_process(
    mesh: RouterMesh, tmp_path: Path, **settings: str
) -> tuple[asyncio.subprocess.Process, Chat]:
    """`python -m orchestrator` as operators run it, beside the test's auth, memory and model."""
    port = free_port()
    env = {
        **os.environ,
        "ATHENA_ENV": "dev",
        "ATHENA_DATA_DIR": str(tmp_path),
        "ATHENA_JWKS_URL": f"http://127.0.0.1:{mesh.auth_service.http_port}{JWKS_PATH}",
        "ATHENA_SERVICE_KEY": SERVICE_KEY,
        "ORCHESTRATOR_PORT": str(port),
        "ORCHESTRATOR_HTTP_PORT": str(free_port()),
        "ORCHESTRATOR_MEMORY_TARGET": f"127.0.0.1:{mesh.memory.port}",
        "ORCHESTRATOR_REDIS_URL": mesh.redis_url,
        "OPENAI_BASE_URL": mesh.model.base_url,
        **{f"ORCHESTRATOR_{name.upper()}": value for name, value in settings.items()},
    }
    env.pop("OPENAI_API_KEY", None)
    with (tmp_path / "orchestrator.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    mesh.channels.append(channel)
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(300):
        with contextlib.suppress(grpc.aio.AioRpcError):
            response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return process, chat_pb2_grpc.ChatServiceStub(channel)
        await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError((tmp_path / "orchestrator.log").read_text())


async def test_an_orchestrator_killed_mid_stream_frees_its_slots_within_one_lease(
    mesh: RouterMesh, tmp_path: Path
) -> None:
    """Finding 2 of issue 12: `kill -9` of the process holding all of a user's slots locked that user out
    for ten minutes. Slots are now short leases renewed by a heartbeat: exact while the replica lives
    (however long the streams), free within one lease once it is gone."""
    lease = 1.5
    process, doomed = await orchestrator_process(
        mesh, tmp_path, stream_lease_seconds=str(lease), max_streams_per_user="2"
    )
    survivor = await replica(mesh, stream_lease_seconds=lease, max_streams_per_user=2)
    metadata = auth_metadata((await mesh.sign_in()).access_token)  # a token the process can verify
    try:
        held = [await open_stream(doomed, metadata) for _ in range(2)]
        await asyncio.sleep(2 * lease)  # past the first lease: the heartbeat keeps both slots
        await refused(survivor, metadata)

        process.kill()
        await process.wait()
        killed_at = time.monotonic()
        admitted = None
        while admitted is None and time.monotonic() - killed_at < 3 * lease:
            try:
                admitted = await open_stream(survivor, metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                await asyncio.sleep(0.1)
        assert admitted is not None, "the dead replica's slots were still held after three leases"
        assert time.monotonic() - killed_at <= lease + 1.0
        admitted.cancel()
        for call in held:
            call.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_turns_per_minute_are_counted_across_orchestrator_replicas(mesh: RouterMesh) -> None:
    # Both replicas read one clock, 20 s into a window: the turns below fall into it, whatever the time.
    clock = FakeClock(datetime.fromtimestamp(60 * 28_333_333 + 20, UTC))
    one = await replica(mesh, OrchestratorDeps(clock=clock), turns_per_minute=3)
    two = await replica(mesh, OrchestratorDeps(clock=clock), turns_per_minute=3)
    _, metadata = mesh.user()
    _, someone_else = mesh.user()

    await chat(one, metadata, "one")
    await chat(two, metadata, "two")
    await chat(one, metadata, "three")
    error = await refused(two, metadata)
    assert "at most 3 per 60 seconds" in (error.details() or "")
    assert retry_after(error) == 40
    await chat(two, someone_else, "my own budget")
    clock.advance(40)  # the next window
    await chat(two, metadata, "five")


async def test_with_redis_down_turns_are_admitted_and_a_warning_logged(
    mesh: RouterMesh, caplog: pytest.LogCaptureFixture
) -> None:
    stub = await replica(
        mesh, redis_url=f"redis://127.0.0.1:{free_port()}/0", turns_per_minute=1, max_streams_per_user=1
    )
    _, metadata = mesh.user()
    with caplog.at_level(logging.WARNING, logger="orchestrator.limits"):
        for n in range(3):
            events = await chat(stub, metadata, f"turn {n}")
            assert events[-1].HasField("message_completed")
    assert any("admitting chat turns without limits" in record.message for record in caplog.records)


async def test_limits_apply_again_as_soon_as_redis_is_back(tmp_path: Path) -> None:
    """While Redis is down turns are admitted; once it is back, the next turn after the short outage
    backoff is limited again (its pooled connections died with it: the client must dial again)."""
    server = EmbeddedValkey(free_port(), tmp_path / "valkey.log", data_dir=tmp_path / "valkey-data")
    server.start()
    client = connect(server.url, 0.5)
    clock = FakeClock()
    limiter = Limiter(Limits(max_streams=1), RedisLimitStore(client), clock)
    try:
        async with limiter.stream("ada"):
            pass
        server.stop()
        async with limiter.stream("ada"), limiter.stream("ada"):  # over the limit, admitted: Redis is down
            pass
        server.start()
        clock.advance(Limits().outage_backoff_seconds)
        async with limiter.stream("ada"):
            with pytest.raises(ResourceExhausted):
                async with limiter.stream("ada"):
                    pass
    finally:
        await client.aclose()
        server.stop()
