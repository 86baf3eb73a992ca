"""`LimitStore` on a Redis-compatible server, shared by every orchestrator replica.

Keys (the user id in braces keeps a user's keys in one Redis Cluster slot):

- `athena:limits:{user_id}:turns:<window>`: a counter, INCR and EXPIRE in one MULTI/EXEC, so a counter
  never outlives its window (plus a second) even if a replica dies between the two commands;
- `athena:limits:{user_id}:streams`: a sorted set of open stream ids scored by when their lease ends;
  expired leases are dropped, the new one added and the set counted in one MULTI/EXEC; a heartbeat moves
  a lease's score forward. Every write also moves the set's expiry to its newest lease (all leases have
  the same length), so the set goes when its last lease would have expired.

Every Redis failure becomes `mesh.errors.Unavailable` (the limiter then fails open).
"""

from __future__ import annotations

import math

from mesh.redis import Redis, translated

KEY_PREFIX = "athena:limits"
WHAT = "the rate-limit store"


class RedisLimitStore:
    def __init__(self, client: Redis, prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix

    def turns_key(self, user_id: str, window: int) -> str:
        return f"{self._prefix}:{{{user_id}}}:turns:{window}"

    def streams_key(self, user_id: str) -> str:
        return f"{self._prefix}:{{{user_id}}}:streams"

    async def count_turn(self, user_id: str, window: int, ttl_seconds: float) -> int:
        key = self.turns_key(user_id, window)
        async with translated(WHAT), self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, math.ceil(ttl_seconds))
            count, _ = await pipe.execute()
        return int(count)

    async def acquire_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> int:
        key = self.streams_key(user_id)
        async with translated(WHAT), self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {stream_id: lease_until})
            pipe.zcard(key)
            # The whole set goes when its last lease would have expired.
            pipe.expire(key, max(1, math.ceil(lease_until - now)))
            _, _, open_streams, _ = await pipe.execute()
        return int(open_streams)

    async def renew_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> None:
        key = self.streams_key(user_id)
        async with translated(WHAT), self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {stream_id: lease_until})
            pipe.expire(key, max(1, math.ceil(lease_until - now)))
            await pipe.execute()

    async def release_stream(self, user_id: str, stream_id: str) -> None:
        async with translated(WHAT):
            await self._redis.zrem(self.streams_key(user_id), stream_id)
