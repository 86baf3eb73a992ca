"""Fewer, larger text deltas: what the turn produces is passed on as it comes, except that text arriving
close together goes out as one `TextDelta`.

A model writes a word or a token at a time; each event costs every hop to the browser (serialisation,
interceptors, Envoy, the page) the same whatever its size. `coalesced` sends the first text of a turn at
once, and any later text waits at most `window` seconds for more of the same agent's text to join it.
Anything else (a tool call, a handoff, the completion, an error) first sends what is waiting, so the order
of events never changes. While the consumer is slow (a client's flow control holds the stream back), text
keeps arriving from the turn and is merged meanwhile: backpressure makes events larger, not more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from orchestrator.events import TextDelta, TurnEvent


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


class _Merging:
    """What the turn produced and the stream has not sent yet. The turn's task adds to it; text waiting out
    its window stays in `held` (merging more text of its agent) until the window's one timer, or another
    event, moves it to `ready`. Text arriving while the stream waits on its client merges into the text
    already ready. The stream is woken only when something is ready, not for every piece of text."""

    def __init__(self, window: float) -> None:
        self.ready: deque[TurnEvent | _End] = deque()
        self.held: TextDelta | None = None
        self.wake = asyncio.Event()
        self._window = window
        self._timer: asyncio.TimerHandle | None = None
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
                self._timer = self._loop.call_later(self._window, self.release)
                return
            self._text_sent = True  # the first text is never held back
        else:
            self.release()
        self._put(event)

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


async def coalesced(events: AsyncIterator[TurnEvent], window: float) -> AsyncGenerator[TurnEvent, None]:
    """`events` with text merged as the module docstring says. The turn runs in a task of its own (it
    keeps producing while the consumer waits on its client); closing this generator cancels that task and
    waits for it, so the turn's own cancellation handling runs as before."""
    if window <= 0:
        async for event in events:
            yield event
        return
    merging = _Merging(window)
    producer = asyncio.create_task(_pump(events, merging), name="turn-events")
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
