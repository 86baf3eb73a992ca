"""When a service has nothing to serve: background work waits for it.

A service's background work (memory embedding the messages a turn stored, learning the facts a person
stated) shares one event loop, and the machine's cores, with the calls it serves. Run as soon as it is
queued, it lands on the next turn's path: a person who sends another message right away waits for the
embedding of their last one. `Quiet` knows whether a call is being served; background work awaits
`Quiet.wait` before each piece, so it runs in the gaps between calls, in bigger batches, and never holds
a turn back by more than one piece. Under load without gaps it falls behind by `at_most` at most: once
background work has waited that long without a gap, every piece runs at once until the next gap, so it is
late by seconds, never starved, and keeps up with the load.

The runtime counts every unary call the server serves (`mesh.interceptors.CallContextInterceptor`); a
streaming call counts as activity when it starts (a stream held open by a browser tab would otherwise
keep the service "busy" for hours). A service also holds the quiet off for work it knows is under way
elsewhere (`hold`): memory, from the start of a chat turn until its answer is stored, so that what one turn
left does not run while others stream their answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Quiet:
    """Calls in flight and the time of the last one's start or end, on one event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._in_flight = 0
        self._last_activity = float("-inf")
        self._behind_since: float | None = None
        self._gap = 0.0
        """The quiet the last waiter asked for: a gap that long ends falling behind."""
        self._holds: dict[str, float] = {}
        self._holds_checked_until = float("-inf")
        """No hold runs out before this moment (the earliest end when last looked at): until then a hold
        makes the service busy without looking at each (a turn streaming holds one: hundreds at once)."""

    def call_started(self, *, streaming: bool = False) -> None:
        """A call began (a streaming one only marks the moment)."""
        now = self._clock()
        if self._behind_since is not None and self._quiet_for(now) >= self._gap:
            # A gap came and went while no background work waited to see it (the work had caught up):
            # what is queued from now on waits for the next gap again, rather than running beside the
            # calls that ended it as if still behind (it ran beside a whole burst of turns).
            self._behind_since = None
        if not streaming:
            self._in_flight += 1
        self._last_activity = now

    def call_ended(self) -> None:
        """A unary call ended."""
        self._in_flight -= 1
        self._last_activity = self._clock()

    def hold(self, key: str, seconds: float) -> None:
        """Not quiet while `key` is held: until `release(key)`, or for `seconds` at most (work that was
        given up on releases nothing)."""
        until = self._clock() + seconds
        self._holds[key] = until
        self._holds_checked_until = min(self._holds_checked_until, until) if len(self._holds) > 1 else until

    def release(self, key: str) -> None:
        """Ends the hold `key` (nothing when it is not held)."""
        if self._holds.pop(key, None) is not None:
            self._last_activity = self._clock()

    def quiet_for(self) -> float:
        """Seconds since the last call started or ended with none in flight and nothing held (0 while a
        call is in flight or something is held)."""
        return self._quiet_for(self._clock())

    def _quiet_for(self, now: float) -> float:
        if self._in_flight > 0:
            return 0.0
        if self._holds:
            if now < self._holds_checked_until:
                return 0.0
            for key, until in list(self._holds.items()):
                if until <= now:
                    del self._holds[key]
            if self._holds:
                self._holds_checked_until = min(self._holds.values())
                return 0.0
        return max(0.0, now - self._last_activity)

    async def wait(self, quiet_seconds: float, at_most: float) -> None:
        """Returns once no call has been in flight for `quiet_seconds`, or at once when background work has
        been waiting for such a moment for `at_most` seconds (since the last one; shared by every waiter)."""
        self._gap = quiet_seconds
        if self._behind_since is None:
            self._behind_since = self._clock()
        while (quiet := self.quiet_for()) < quiet_seconds:
            left = self._behind_since + at_most - self._clock()
            if left <= 0:
                return
            await asyncio.sleep(min(quiet_seconds - quiet, left))
        self._behind_since = None
