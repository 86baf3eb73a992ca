"""What the webhooks service keeps in Redis, shared by its replicas: which notifications it has already
published (replays), and the last message number of each Google channel.

- `athena:webhooks:seen:<event id>`: set with SET NX and a time to live, so the second delivery of the same
  notification (a provider's retry, or a captured request played again) finds it and is not published again;
- `athena:webhooks:channel:<channel id>`: the highest `X-Goog-Message-Number` accepted on a channel; a message
  at or below it is a replay. Kept as long as the channel lives.

Every Redis failure becomes `mesh.errors.Unavailable`: the request is answered 503, which Graph and Google
retry.
"""

from __future__ import annotations

from mesh.redis import UNAVAILABLE, Redis, translated

PREFIX = "athena:webhooks"
WHAT = "the webhooks store"

ADVANCE = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local number = tonumber(ARGV[1])
if number <= last then
  return -1
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return last
"""
"""KEYS: the channel's last number. ARGV: the message's number, the key's time to live. Answers the previous
number, or -1 for a replay."""

RESTORE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '0' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  end
end
return 0
"""
"""KEYS: the channel's last number. ARGV: the number to undo, the previous one. Undoes `ADVANCE` unless a
later message moved the number on meanwhile."""


class WebhookStore:
    def __init__(self, client: Redis, prefix: str = PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._advance = client.register_script(ADVANCE)
        self._restore = client.register_script(RESTORE)

    def _seen(self, event_id: str) -> str:
        return f"{self._prefix}:seen:{event_id}"

    def _channel(self, channel_id: str) -> str:
        return f"{self._prefix}:channel:{channel_id}"

    async def first_sighting(self, event_id: str, ttl_seconds: int) -> bool:
        """Records `event_id` as published; False when it already was (within `ttl_seconds`)."""
        async with translated(WHAT):
            return bool(await self._redis.set(self._seen(event_id), "1", nx=True, ex=max(ttl_seconds, 1)))

    async def forget(self, event_id: str) -> None:
        """Undoes `first_sighting` (publishing failed: the provider's retry must go through)."""
        async with translated(WHAT):
            await self._redis.delete(self._seen(event_id))

    async def advance_channel(self, channel_id: str, number: int, ttl_seconds: int) -> int | None:
        """Takes `number` as the channel's newest message: the previous number, or None when `number` is at
        or below it (a replay)."""
        async with translated(WHAT):
            previous = int(
                await self._advance(keys=[self._channel(channel_id)], args=[number, max(ttl_seconds, 1)])
            )
        return None if previous < 0 else previous

    async def restore_channel(self, channel_id: str, number: int, previous: int) -> None:
        """Undoes `advance_channel` (publishing failed: the provider's retry must go through)."""
        async with translated(WHAT):
            await self._restore(keys=[self._channel(channel_id)], args=[number, previous])

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except UNAVAILABLE:
            return False
