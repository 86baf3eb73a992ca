"""Short-lived values (calendar free/busy, wearable stats) in a Redis-compatible server, with a TTL.

Keys are `athena:eph:{user_id}:{namespace}:{key}`: the user id comes first so one `SCAN MATCH` on the
user's prefix finds everything to erase. Redis failures become `mesh.errors.Unavailable`; nothing else in
the service depends on Redis.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mesh.errors import Unavailable

KEY_PREFIX = "athena:eph"


def user_prefix(user_id: str) -> str:
    return f"{KEY_PREFIX}:{user_id}:"


def ephemeral_key(user_id: str, namespace: str, key: str) -> str:
    return f"{user_prefix(user_id)}{namespace}:{key}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise Unavailable("the ephemeral store is unavailable") from exc


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast when the server is down (a short timeout and no retries)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class RedisEphemeralStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    async def put(self, user_id: str, namespace: str, key: str, value: str, ttl_seconds: float) -> None:
        async with _translated():
            await self._redis.set(
                ephemeral_key(user_id, namespace, key), value, px=max(1, int(ttl_seconds * 1000))
            )

    async def get(self, user_id: str, namespace: str, key: str) -> str | None:
        async with _translated():
            value = await self._redis.get(ephemeral_key(user_id, namespace, key))
        return None if value is None else str(value)

    async def purge(self, user_id: str) -> int:
        deleted = 0
        async with _translated():
            pattern = _glob_escape(user_prefix(user_id)) + "*"
            batch: list[str] = []
            async for name in self._redis.scan_iter(match=pattern, count=500):
                batch.append(name)
                if len(batch) >= 500:
                    deleted += int(await self._redis.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(await self._redis.unlink(*batch))
        return deleted

    async def ping(self) -> bool:
        try:
            async with _translated():
                return bool(await self._redis.ping())
        except Unavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
