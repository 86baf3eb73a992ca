"""Fewer, larger text deltas: what the turn produces is passed on as it comes, except that text arriving
close together goes out as one `TextDelta`.

A model writes a word or a token at a time; each event costs every hop to the browser (serialisation,
interceptors, Envoy, the page) the same whatever its size. `coalesced` sends the first text of a turn at
once, and any later text waits at most `window` seconds for more of the same agent's text to join it.
Anything else (a tool call, a handoff, the completion, an error) first sends what is waiting, so the order
of events never changes. While the consumer is slow (a client's flow control holds the stream back), text
keeps arriving from the turn and is merged meanwhile: backpressure makes events larger, not more.

First words first: while other turns of the process still wait for their first text (`Starting` counts
them), text of an answer already under way waits up to `busy_window` instead of `window`. The events its
reader would have had (each costing the orchestrator, Envoy and the client their share of the CPU every
turn start needs too) go out as fewer, larger ones while the service is starting turns, and at the pace of
`window` again as soon as it is not. Measured by `make bench-ab` (the model pacing 20 ms a word), holding
text longer took the first delta's overhead over the model's own, 200 streams started at once, from 916 to
841 ms at p95 and from 387 to 306 at the median; at 50 streams from 214 to 187 at p95.

Meanwhile the model's stream of such an answer is read only when its held text is about to go
(`read_pause`, which the model client asks before each read; its connection stops reading while it waits):
the words that came in between arrive in one receive and are parsed and passed on at once, not one by one.
With the pause alone, 200 streams: p95 overhead 832 → 615 and 526 → 462 ms, CPU a turn costs until the
last first delta 10.9 → 10.0 and 7.6 → 6.5 ms (two runs); with the reads aligned to the held text too,
50 streams: 161 → 131 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from orchestrator.events import TextDelta, TurnEvent

ReadPause = Callable[[], float]
read_pause: contextvars.ContextVar[ReadPause | None] = contextvars.ContextVar("read_pause", default=None)
"""For the turn `coalesced` runs: how long its model's stream should wait before its next read (seconds, 0
for none); None outside such a turn."""


class Starting:
    """The turns of one process that have not sent their first text yet."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = 0

    def begin(self) -> Start:
        """Counts a turn from now until its first text (or its end)."""
        return Start(self)


class Start:
    """One turn counted by `Starting` until `first_text` (called again, it does nothing)."""

    __slots__ = ("_counted", "_starting")

    def __init__(self, starting: Starting) -> None:
        self._starting = starting
        self._counted = True
        starting.waiting += 1

    def first_text(self) -> None:
        if self._counted:
            self._counted = False
            self._starting.waiting -= 1

    def others_waiting(self) -> bool:
        """Whether other turns of the process still wait for their first text."""
        return self._starting.waiting > int(self._counted)


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


class _Merging:
    """What the turn produced and the stream has not sent yet. The turn's task adds to it; text waiting out
    its window stays in `held` (merging more text of its agent) until the window's one timer, or another
    event, moves it to `ready`. Text arriving while the stream waits on its client merges into the text
    already ready. The stream is woken only when something is ready, not for every piece of text."""

    def __init__(self, window: float, start: Start | None, busy_window: float) -> None:
        self.ready: deque[TurnEvent | _End] = deque()
        self.held: TextDelta | None = None
        self.wake = asyncio.Event()
        self._window = window
        self._start = start
        self._busy_window = busy_window
        self._first_words_first = start is not None and busy_window > window
        """Whether the turn yields to others waiting for their first text (a `busy_window` no longer than
        `window` turns both the longer hold and the paced reads off)."""
        self._timer: asyncio.TimerHandle | None = None
        self._held_since = 0.0
        self._text_sent = False
        self._loop = asyncio.get_running_loop()

    def add(self, event: TurnEvent | _End) -> None:
        if isinstance(event, TextDelta):
            held = self.held
            if held is not None and held.agent_id == event.agent_id:
                self.held = TextDelta(held.text + event.text, event.agent_id)
                return
            self.release()
            if self._text_sent:
                self.held = event
                self._held_since = self._loop.time()
                self._timer = self._loop.call_later(self._window, self._window_ended)
                return
            self._text_sent = True  # the first text is never held back
            if self._start is not None:
                self._start.first_text()
        else:
            self.release()
        self._put(event)

    def read_pause(self) -> float:
        """While the turn's text is under way and other turns wait for their first text: until the text
        held now goes out (read just before, what came meanwhile goes with it), or a window when none is
        held. Otherwise none."""
        if not (self._text_sent and self._others_waiting()):
            return 0.0
        if self.held is None:
            return self._window
        return max(self._window, self._held_since + self._busy_window - self._loop.time())

    def _others_waiting(self) -> bool:
        return self._first_words_first and self._start is not None and self._start.others_waiting()

    def _window_ended(self) -> None:
        """The held text goes out, unless other turns still wait for their first text: then it waits on,
        a window at a time, until `busy_window` has passed since it came."""
        self._timer = None
        if self._others_waiting():
            left = self._held_since + self._busy_window - self._loop.time()
            if left > 0:
                self._timer = self._loop.call_later(min(self._window, left), self._window_ended)
                return
        self.release()

    def release(self) -> None:
        """Makes the held text ready (its window ended, or something else must follow it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self.held = self.held, None
        if held is not None:
            self._put(held)

    def _put(self, event: TurnEvent | _End) -> None:
        last = self.ready[-1] if self.ready else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta) and last.agent_id == event.agent_id:
            self.ready[-1] = TextDelta(last.text + event.text, event.agent_id)
        else:
            self.ready.append(event)
        self.wake.set()


async def coalesced(
    events: AsyncIterator[TurnEvent], window: float, start: Start | None = None, busy_window: float = 0.0
) -> AsyncGenerator[TurnEvent, None]:
    """`events` with text merged as the module docstring says; `start` counts the turn among those
    waiting for their first text, and tells whether others are (text then waits up to `busy_window`).
    The turn runs in a task of its own (it keeps producing while the consumer waits on its client);
    closing this generator cancels that task and waits for it, so the turn's own cancellation handling
    runs as before."""
    if window <= 0:
        async for event in events:
            yield event
        return
    merging = _Merging(window, start, busy_window)
    turn_context = contextvars.copy_context()
    if start is not None:
        turn_context.run(read_pause.set, merging.read_pause)
    producer = asyncio.create_task(_pump(events, merging), name="turn-events", context=turn_context)
    try:
        while True:
            if not merging.ready:
                merging.wake.clear()
                await merging.wake.wait()
                continue
            item = merging.ready.popleft()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        merging.release()
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def _pump(events: AsyncIterator[TurnEvent], merging: _Merging) -> None:
    try:
        async for event in events:
            merging.add(event)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
        merging.add(_End(error))
        return
    merging.add(_End())
