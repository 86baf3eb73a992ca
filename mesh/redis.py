"""The Redis-compatible server (Valkey, Redis): one way to connect and to translate its failures.

Clients fail fast: a short timeout and one immediate retry (a pooled connection to a server that
restarted is dead; the retry dials a new one), so a request never waits long on a server that is down
and works again as soon as it is back; callers decide what a failure means (memory's ephemeral values
answer UNAVAILABLE, the router's rate limits fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mesh.errors import Unavailable

Redis = redis.Redis

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
)
"""Failures that mean "the server cannot answer now" (other RedisErrors are bugs or data problems)."""


def connect(url: str, timeout: float) -> Redis:
    """A client of `url` whose connects and commands each give up after `timeout` seconds."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Raises `Unavailable("<what> is unavailable")` when the server cannot answer inside the block."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise Unavailable(f"{what} is unavailable") from exc


def cancelling() -> bool:
    """Whether this task was asked to stop. redis-py (8.1, hiredis) sometimes swallows the CancelledError
    thrown into a blocked read (XREAD, XREADGROUP with BLOCK) and reads on: a loop of blocking reads checks
    this after each command, so stopping it waits at most one blocking read."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
