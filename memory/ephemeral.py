"""Short-lived values (calendar free/busy, wearable stats) in a Redis-compatible server, with a TTL.

Keys are `athena:eph:{user_id}:{namespace}:{key}`: the user id comes first so one `SCAN MATCH` on the
user's prefix finds everything to erase. Redis failures become `mesh.errors.Unavailable`; nothing else in
the service depends on Redis.
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh.errors import Unavailable
from mesh.redis import Redis, translated

KEY_PREFIX = "athena:eph"


def user_prefix(user_id: str) -> str:
    return f"{KEY_PREFIX}:{user_id}:"


def ephemeral_key(user_id: str, namespace: str, key: str) -> str:
    return f"{user_prefix(user_id)}{namespace}:{key}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


WHAT = "the ephemeral store"


class RedisEphemeralStore:
    def __init__(self, client: Redis) -> None:
        self._redis = client

    async def put(self, user_id: str, namespace: str, key: str, value: str, ttl_seconds: float) -> None:
        async with translated(WHAT):
            await self._redis.set(
                ephemeral_key(user_id, namespace, key), value, px=max(1, int(ttl_seconds * 1000))
            )

    async def get(self, user_id: str, namespace: str, key: str) -> str | None:
        async with translated(WHAT):
            value = await self._redis.get(ephemeral_key(user_id, namespace, key))
        return None if value is None else str(value)

    async def purge(self, user_id: str) -> int:
        return await self._delete_matching(_glob_escape(user_prefix(user_id)) + "*")

    async def forget(self, user_id: str, namespaces: Sequence[str]) -> int:
        deleted = 0
        for namespace in namespaces:
            deleted += await self._delete_matching(_glob_escape(f"{user_prefix(user_id)}{namespace}:") + "*")
        return deleted

    async def _delete_matching(self, pattern: str) -> int:
        deleted = 0
        async with translated(WHAT):
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
            async with translated(WHAT):
                return bool(await self._redis.ping())
        except Unavailable:
            return False
