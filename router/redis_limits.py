"""`LimitStore` on a Redis-compatible server, shared by every router replica.

Keys (the user id in braces keeps a user's keys in one Redis Cluster slot):

- `athena:limits:{user_id}:turns:<window>`: a counter, INCR and EXPIRE in one MULTI/EXEC, so a counter
  never outlives its window (plus a second) even if a replica dies between the two commands;
- `athena:limits:{user_id}:streams`: a sorted set of open stream ids scored by when their lease ends;
  expired leases are dropped, the new one added and the set counted in one MULTI/EXEC.

Every Redis failure becomes `router.limits.LimitStoreError` (the limiter then fails open).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.limits import LimitStoreError

KEY_PREFIX = "athena:limits"


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast when the server is down: a short timeout and no retries."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (redis_errors.RedisError, OSError) as exc:
        raise LimitStoreError(f"{type(exc).__name__}: {exc}") from exc


class RedisLimitStore:
    def __init__(self, client: redis.Redis, prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix

    def turns_key(self, user_id: str, window: int) -> str:
        return f"{self._prefix}:{{{user_id}}}:turns:{window}"

    def streams_key(self, user_id: str) -> str:
        return f"{self._prefix}:{{{user_id}}}:streams"

    async def count_turn(self, user_id: str, window: int, ttl_seconds: float) -> int:
        key = self.turns_key(user_id, window)
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, math.ceil(ttl_seconds))
            count, _ = await pipe.execute()
        return int(count)

    async def acquire_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> int:
        key = self.streams_key(user_id)
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {stream_id: lease_until})
            pipe.zcard(key)
            # The whole set goes when its last lease would have expired.
            pipe.expire(key, max(1, math.ceil(lease_until - now)))
            _, _, open_streams, _ = await pipe.execute()
        return int(open_streams)

    async def release_stream(self, user_id: str, stream_id: str) -> None:
        async with _translated():
            await self._redis.zrem(self.streams_key(user_id), stream_id)

    async def close(self) -> None:
        await self._redis.aclose()
