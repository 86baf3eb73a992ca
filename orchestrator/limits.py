"""Per-user rate limits of chat turns, shared by every orchestrator replica through a `LimitStore` (Redis).

Two limits (SPEC §11), both answered RESOURCE_EXHAUSTED with a retry time:

- **concurrent streams**: at most `Limits.max_streams` Chat streams of one user open at once. Each open
  stream holds a short lease in the store (`stream_lease_seconds`), renewed by a heartbeat every third of
  it while the stream lives and released in `finally`. A replica killed mid-stream stops renewing, so its
  slots free themselves within one lease (seconds), while the count stays exact as long as all is well.
- **turns per window**: at most `Limits.turns_per_window` turns started per fixed window of
  `window_seconds` (a minute). Windows are numbered from the epoch, so every replica counts into the
  same window as long as their clocks roughly agree.

Availability over limits: when the store cannot answer, the turn is admitted and a WARNING logged; for
`outage_backoff_seconds` after a failure the store is not asked at all, so an outage costs no latency.

No gRPC and no Redis here: `orchestrator.redis_limits` is the store, `orchestrator.service` the caller.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from mesh.clock import Clock
from mesh.errors import ResourceExhausted, Unavailable
from mesh.ratelimit import Window, window_at

log = logging.getLogger(__name__)

_REFUSED_KEPT = 10_000
"""Users refused recently that a limiter remembers (`Limiter.refusing`) before it forgets expired ones."""


@dataclass(frozen=True)
class Limits:
    """How much one user may use the chat."""

    max_streams: int = 4
    """Chat streams one user may have open at once."""
    turns_per_window: int = 30
    """Turns one user may start per window."""
    window_seconds: float = 60.0
    """Length of a turn-counting window."""
    stream_lease_seconds: float = 10.0
    """How long a stream's slot outlives its last heartbeat: a replica killed mid-stream frees its slots
    this long after it died. The holder renews the lease every third of it."""
    stream_retry_after_seconds: float = 1.0
    """What a refused stream is told to wait: streams end at unknown times, so a short, honest guess."""
    outage_backoff_seconds: float = 2.0
    """After the store failed, how long turns are admitted without asking it: limits apply again at most
    this long after the store is back."""


@dataclass(frozen=True)
class Admission:
    """What the store counted for a turn asking to start."""

    open_streams: int
    """The user's open streams, the new one included."""
    turns: int
    """The user's turns in the window, the new one included."""


class LimitStore(Protocol):
    """Where the counters of every orchestrator replica meet. Raises `Unavailable` when it cannot answer (the
    limiter then admits the turn)."""

    async def admit(
        self, user_id: str, stream_id: str, now: float, lease_until: float, window: int, window_ttl: float
    ) -> Admission:
        """In one atomic step (one round trip): records the open stream `stream_id` until `lease_until`,
        drops leases expired at `now`, and counts one more turn in `window`. The turn counter may be
        forgotten `window_ttl` seconds after its first turn."""
        ...

    async def refuse(self, user_id: str, stream_id: str, window: int) -> None:
        """Undoes an `admit` the limits refused: forgets the stream and the turn it counted."""
        ...

    async def renew_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> None:
        """Extends the lease of the open stream `stream_id` to `lease_until` (recording it again if the
        store lost it, e.g. a restarted Redis)."""
        ...

    async def release_stream(self, user_id: str, stream_id: str) -> None:
        """Forgets the stream `stream_id` (idempotent)."""
        ...


class Limiter:
    """Admits chat streams under `Limits`."""

    def __init__(self, limits: Limits, store: LimitStore, clock: Clock) -> None:
        self.limits = limits
        self._store = store
        self._clock = clock
        self._store_down_until = float("-inf")
        self._refused_until: dict[str, float] = {}

    def refusing(self, user_id: str) -> bool:
        """Whether this replica refused the user a turn whose retry-after has not passed yet: their next turn
        is likely refused too, so nothing is spent on it before admission (`Turns.run` embeds a turn's text
        meanwhile, a paid request with a model API)."""
        return self._clock.time() < self._refused_until.get(user_id, float("-inf"))

    def _refused(self, user_id: str, now: float, retry_after: float) -> None:
        if len(self._refused_until) >= _REFUSED_KEPT:  # those whose retry-after passed are forgotten first
            self._refused_until = {user: until for user, until in self._refused_until.items() if until > now}
        self._refused_until[user_id] = now + retry_after

    @asynccontextmanager
    async def stream(self, user_id: str) -> AsyncIterator[None]:
        """Holds one of the user's stream slots and counts one turn, for the duration of the block.
        Raises `ResourceExhausted` (with `retry_after`) when either limit is reached."""
        stream_id = uuid.uuid4().hex
        if not await self._admit(user_id, stream_id):
            yield
            return
        ended = asyncio.Event()
        heartbeat = asyncio.create_task(
            self._renew(user_id, stream_id, ended), name=f"stream-lease {stream_id}"
        )
        try:
            yield
        finally:
            # Stopped by the event as well as by the cancellation: a store client may turn a cancellation
            # into an error of its own (its timeout firing as the cancellation arrives), and the heartbeat
            # must end all the same, within one renewal (bounded by the store's timeout). Waited for, so
            # no renewal lands after the release, and no task outlives the stream.
            ended.set()
            heartbeat.cancel()
            await asyncio.wait({heartbeat})
            await self._release(user_id, stream_id)

    async def _renew(self, user_id: str, stream_id: str, ended: asyncio.Event) -> None:
        """Renews the stream's lease every third of it until the stream has `ended`."""
        lease = self.limits.stream_lease_seconds
        while not ended.is_set():
            await asyncio.sleep(lease / 3)
            try:
                now = self._clock.time()
                await self._store.renew_stream(user_id, stream_id, now, now + lease)
            except Unavailable as exc:
                log.warning("renewing a chat stream slot failed", extra={"error": str(exc)})

    async def _admit(self, user_id: str, stream_id: str) -> bool:
        """Whether a lease is held (and must be released); raises when a limit is reached."""
        now = self._clock.time()
        if now < self._store_down_until:
            return False
        limits = self.limits
        window = window_at(now, limits.window_seconds)
        try:
            admission = await self._store.admit(
                user_id,
                stream_id,
                now,
                now + limits.stream_lease_seconds,
                window.index,
                limits.window_seconds + 1,
            )
        except Unavailable as exc:
            self._store_down(exc)
            return False
        if admission.open_streams > limits.max_streams:
            await self._refuse(user_id, stream_id, window)
            self._refused(user_id, now, limits.stream_retry_after_seconds)
            raise ResourceExhausted(
                f"too many chat streams open at once (at most {limits.max_streams}); wait for one to finish",
                retry_after=limits.stream_retry_after_seconds,
            )
        if admission.turns > limits.turns_per_window:
            await self._refuse(user_id, stream_id, window)
            self._refused(user_id, now, window.retry_after(now))
            raise ResourceExhausted(
                f"too many chat turns (at most {limits.turns_per_window} "
                f"per {limits.window_seconds:g} seconds)",
                retry_after=window.retry_after(now),
            )
        return True

    async def _refuse(self, user_id: str, stream_id: str, window: Window) -> None:
        """A refused turn neither holds a slot nor counts against the window."""
        try:
            await self._store.refuse(user_id, stream_id, window.index)
        except Unavailable as exc:
            # The lease expires on its own; until then the user has one slot (and turn) less.
            log.warning("undoing a refused chat turn's count failed", extra={"error": str(exc)})

    async def _release(self, user_id: str, stream_id: str) -> None:
        try:
            await self._store.release_stream(user_id, stream_id)
        except Unavailable as exc:
            # The lease expires on its own; until then the user has one slot less.
            log.warning("releasing a chat stream slot failed", extra={"error": str(exc)})

    def _store_down(self, exc: Unavailable) -> None:
        self._store_down_until = self._clock.time() + self.limits.outage_backoff_seconds
        log.warning(
            "rate-limit store unavailable; admitting chat turns without limits",
            extra={"error": str(exc), "retry_in_seconds": self.limits.outage_backoff_seconds},
        )
