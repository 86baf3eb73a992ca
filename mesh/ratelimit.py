"""Fixed-window rate limits shared by every replica of a service through the Redis-compatible server.

A window is numbered from the epoch (`window_at`), so every replica counts into the same one as long as
their clocks roughly agree. `WindowCounter` counts hits of one key per window with one INCR and an EXPIRE
set with it (one round trip, atomic as every Lua script), so a counter never outlives its window (plus a
second) even if a replica dies between the two. The orchestrator's chat limits use the same windows
(`orchestrator.limits`); the webhooks service limits each source address with `WindowCounter`.

Every Redis failure becomes `mesh.errors.Unavailable`; the caller decides whether that admits or refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh.redis import Redis, translated

WHAT = "the rate-limit store"


@dataclass(frozen=True)
class Window:
    """One fixed counting window."""

    index: int
    """Number of the window since the epoch; every replica computes the same one."""
    ends_at: float
    """Epoch seconds at which the next window starts."""

    def retry_after(self, now: float) -> float:
        """Seconds until the next window (at least a little, never negative)."""
        return max(self.ends_at - now, 0.001)


def window_at(now: float, length: float) -> Window:
    """The window holding the instant `now` (epoch seconds)."""
    index = math.floor(now / length)
    return Window(index=index, ends_at=(index + 1) * length)


HIT = """
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return hits
"""
"""KEYS: the key's counter of the window. ARGV: the counter's time to live (the window plus a second)."""


@dataclass(frozen=True)
class Admission:
    """What counting one hit found."""

    hits: int
    """Hits of the key in the window, this one included."""
    allowed: bool
    """Whether this hit is within the limit."""
    retry_after: float
    """Seconds until the window ends (what a refused caller is told to wait)."""


class WindowCounter:
    """At most `limit` hits per key per window of `window_seconds`, counted in Redis under `prefix`."""

    def __init__(self, client: Redis, prefix: str, *, limit: int, window_seconds: float) -> None:
        self._hit = client.register_script(HIT)
        self._prefix = prefix
        self.limit = limit
        self.window_seconds = window_seconds

    def key(self, name: str, window: Window) -> str:
        return f"{self._prefix}:{{{name}}}:{window.index}"

    async def hit(self, name: str, now: float) -> Admission:
        """Counts one hit of `name` at `now` (epoch seconds). Raises `Unavailable` when Redis cannot
        answer."""
        window = window_at(now, self.window_seconds)
        async with translated(WHAT):
            hits = int(
                await self._hit(keys=[self.key(name, window)], args=[math.ceil(self.window_seconds) + 1])
            )
        return Admission(hits=hits, allowed=hits <= self.limit, retry_after=window.retry_after(now))
