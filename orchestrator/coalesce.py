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
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from orchestrator.events import TextDelta, TurnEvent


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


async def coalesced(events: AsyncIterator[TurnEvent], window: float) -> AsyncGenerator[TurnEvent, None]:
    """`events` with text merged as the module docstring says. The turn runs in a task of its own (it
    keeps producing while the consumer waits on its client); closing this generator cancels that task and
    waits for it, so the turn's own cancellation handling runs as before."""
    if window <= 0:
        async for event in events:
            yield event
        return
    queue: asyncio.Queue[TurnEvent | _End] = asyncio.Queue()
    producer = asyncio.create_task(_pump(events, queue), name="turn-events")
    loop = asyncio.get_running_loop()
    pending: TextDelta | None = None
    deadline = 0.0
    text_sent = False
    try:
        while True:
            try:
                if pending is None:
                    item = await queue.get()
                else:
                    async with asyncio.timeout_at(deadline):
                        item = await queue.get()
            except TimeoutError:
                assert pending is not None
                yield pending
                pending = None
                continue
            if isinstance(item, TextDelta):
                if pending is not None and pending.agent_id == item.agent_id:
                    pending = TextDelta(pending.text + item.text, item.agent_id)
                    continue
                if pending is not None:
                    yield pending
                    pending = None
                if not text_sent:  # the first text is never held back
                    text_sent = True
                    yield item
                    continue
                pending, deadline = item, loop.time() + window
                continue
            if pending is not None:
                yield pending
                pending = None
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def _pump(events: AsyncIterator[TurnEvent], queue: asyncio.Queue[TurnEvent | _End]) -> None:
    try:
        async for event in events:
            queue.put_nowait(event)
    except asyncio.CancelledError:
        raise
    except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
        queue.put_nowait(_End(error))
        return
    queue.put_nowait(_End())
