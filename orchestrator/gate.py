"""How many turns of one orchestrator start at once: memory's `StartTurn` calls, under a limit that adapts
to their latency as TCP Vegas adapts its window.

A burst of turns arriving together (people answering one notification, a class opening the app at nine)
all reach the same step at once when nothing orders them: every turn's `StartTurn` is in memory at the
same time, memory and PostgreSQL work on all of them in turns, and the first of them is done about when
the last one is. Meanwhile the orchestrator and the model, which have each turn's next step to do, wait
with nothing to do. With a few at a time, the first turns are stored and call the model while memory
stores the next ones: the parts of the mesh work on different turns at once, and the burst is through
sooner.

The limit is never below `floor` and grows while memory keeps up: each `StartTurn` that ran while the
limit was in use says how much of its latency was queueing (its latency against the lowest seen lately,
`base`); fewer than `alpha` calls queued in memory, by that estimate, and the limit grows by one; more
than `beta`, and it shrinks by one (not below the floor). A memory far away (its latency mostly network)
thus gets as many calls at once as it can serve, and a busy one no more than it can.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class StartLimit:
    """A concurrency limit adapted to the latency of the calls it admits (one event loop)."""

    def __init__(
        self,
        floor: int,
        ceiling: int,
        *,
        alpha: float = 2.0,
        beta: float = 4.0,
        window_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"a limit needs 1 <= floor <= ceiling (floor {floor}, ceiling {ceiling})")
        self.limit = floor
        self.floor = floor
        self.ceiling = ceiling
        self._alpha = alpha
        self._beta = beta
        self._window = window_seconds
        self._clock = clock
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._lowest = float("inf")
        """The lowest latency of this window and of the one before (`base`)."""
        self._lowest_before = float("inf")
        self._window_ends = clock() + window_seconds

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def base(self) -> float:
        """The lowest latency seen in the last one to two windows (seconds; inf before any)."""
        return min(self._lowest, self._lowest_before)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one of the limit's places while the block runs (waiting for one first, in order of
        arrival); a block that ends normally teaches the limit its latency."""
        await self._acquire()
        in_use = self.in_flight >= self.limit or bool(self._waiters)
        started = self._clock()
        ok = False
        try:
            yield
            ok = True
        finally:
            self._release()
            if ok:
                self._learn(self._clock() - started, in_use)

    async def _acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a place just as it was cancelled: the next one has it
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _learn(self, latency: float, in_use: bool) -> None:
        now = self._clock()
        if now >= self._window_ends:
            self._lowest_before, self._lowest = self._lowest, float("inf")
            self._window_ends = now + self._window
        self._lowest = min(self._lowest, latency)
        if not in_use:  # calls were fewer than the limit: nothing learnt about how many memory can take
            return
        queued = self.limit * (1.0 - self.base / latency) if latency > 0 else 0.0
        if queued < self._alpha:
            self.limit = min(self.ceiling, self.limit + 1)
            self._wake()
        elif queued > self._beta:
            self.limit = max(self.floor, self.limit - 1)
