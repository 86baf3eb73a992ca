"""Coalescing an answer's text: the first text at once, later text merged within the window (longer while
other turns wait for their first text), order kept, errors and cancellation passed through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

import pytest

from orchestrator.coalesce import Starting, coalesced, read_pause
from orchestrator.events import TextDelta as Text
from orchestrator.events import ToolCallStarted, TurnEvent

WINDOW = 0.05
TOOL = ToolCallStarted("c1", "remember_memory", "{}", "athena")


async def paced(script: Sequence[tuple[float, TurnEvent | Exception]]) -> AsyncGenerator[TurnEvent, None]:
    """Yields each event after its pause (seconds); raises an exception given instead of an event."""
    for pause, item in script:
        await asyncio.sleep(pause)
        if isinstance(item, Exception):
            raise item
        yield item


async def received(script: Sequence[tuple[float, TurnEvent | Exception]]) -> list[TurnEvent]:
    return [event async for event in coalesced(paced(script), WINDOW)]


async def test_the_first_text_goes_out_before_anything_else_arrives() -> None:
    first_seen = asyncio.Event()

    async def turn() -> AsyncGenerator[TurnEvent, None]:
        yield Text("I ", "athena")
        await first_seen.wait()  # nothing more comes until the consumer has the first text
        yield Text("know", "athena")

    async with aclosing(coalesced(turn(), WINDOW)) as out:
        assert await asyncio.wait_for(anext(out), 5) == Text("I ", "athena")
        first_seen.set()
        assert await anext(out) == Text("know", "athena")


async def test_text_arriving_within_the_window_goes_out_as_one_event() -> None:
    words = [(0.0, Text("one ", "a")), *((0.01, Text(word, "a")) for word in ("two ", "three ", "four"))]
    assert await received(words) == [Text("one ", "a"), Text("two three four", "a")]


async def test_text_is_never_held_longer_than_the_window() -> None:
    script = [(0.0, Text("one ", "a")), (0.0, Text("two ", "a")), (WINDOW * 4, Text("three", "a"))]
    assert await received(script) == [Text("one ", "a"), Text("two ", "a"), Text("three", "a")]


async def test_other_events_send_waiting_text_first_and_keep_their_order() -> None:
    script: list[tuple[float, TurnEvent | Exception]] = [
        (0.0, Text("Let ", "athena")),
        (0.0, Text("me ", "athena")),
        (0.0, Text("note ", "athena")),
        (0.0, TOOL),
        (0.0, Text("Done", "athena")),
    ]
    assert await received(script) == [
        Text("Let ", "athena"),
        Text("me note ", "athena"),
        TOOL,
        Text("Done", "athena"),
    ]


async def test_text_of_another_agent_is_not_merged() -> None:
    script = [(0.0, Text("a1 ", "athena")), (0.0, Text("a2 ", "athena")), (0.0, Text("n1", "nutrition"))]
    assert await received(script) == [Text("a1 ", "athena"), Text("a2 ", "athena"), Text("n1", "nutrition")]


async def test_an_error_comes_after_the_text_produced_before_it() -> None:
    seen: list[TurnEvent] = []
    with pytest.raises(RuntimeError, match="model went away"):
        async for event in coalesced(
            paced([(0, Text("a ", "x")), (0, Text("b", "x")), (0, RuntimeError("model went away"))]), WINDOW
        ):
            seen.append(event)
    assert seen == [Text("a ", "x"), Text("b", "x")]


async def test_closing_the_stream_cancels_the_turn_inside_it() -> None:
    cancelled = asyncio.Event()

    async def turn() -> AsyncGenerator[TurnEvent, None]:
        yield Text("start", "x")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()  # where a turn records itself as failed
            raise
        yield Text("never", "x")

    async with aclosing(coalesced(turn(), WINDOW)) as out:
        assert await anext(out) == Text("start", "x")
    assert cancelled.is_set()


async def test_a_slow_consumer_gets_what_piled_up_in_one_event() -> None:
    script = [(0.0, Text("first ", "x")), *((0.005, Text(f"w{n} ", "x")) for n in range(10))]
    out: list[TurnEvent] = []
    async for event in coalesced(paced(script), WINDOW):
        out.append(event)
        await asyncio.sleep(0.2)  # a client whose flow control holds the stream back
    assert out == [Text("first ", "x"), Text("".join(f"w{n} " for n in range(10)), "x")]


async def test_a_window_of_zero_passes_every_event_on() -> None:
    script = [(0.0, Text("a", "x")), (0.0, Text("b", "x"))]
    assert [event async for event in coalesced(paced(script), 0)] == [Text("a", "x"), Text("b", "x")]


async def received_while(
    script: Sequence[tuple[float, TurnEvent | Exception]], *, others: int
) -> list[TurnEvent]:
    """What a turn sends while `others` other turns of the process wait for their first text (text may
    then wait 4 windows)."""
    starting = Starting()
    waiting = [starting.begin() for _ in range(others)]
    out = [event async for event in coalesced(paced(script), WINDOW, starting.begin(), WINDOW * 4)]
    for start in waiting:
        start.first_text()
    assert starting.waiting == 0, "the turn counted itself until its first text, once"
    return out


async def test_while_other_turns_wait_for_their_first_text_text_waits_longer() -> None:
    script = [(0.0, Text("one ", "a")), (0.0, Text("two ", "a")), (WINDOW * 2, Text("three", "a"))]
    assert await received_while(script, others=1) == [Text("one ", "a"), Text("two three", "a")]
    assert await received_while(script, others=0) == [
        Text("one ", "a"),
        Text("two ", "a"),
        Text("three", "a"),
    ]


async def test_the_first_text_never_waits_for_other_turns() -> None:
    starting = Starting()
    other = starting.begin()
    start = starting.begin()
    async with aclosing(coalesced(paced([(0.0, Text("I ", "a"))]), WINDOW, start, WINDOW * 4)) as out:
        assert await asyncio.wait_for(anext(out), WINDOW * 2) == Text("I ", "a")
        assert start.others_waiting()
        assert starting.waiting == 1, "the turn stopped counting itself at its first text"
    other.first_text()
    assert not start.others_waiting()


async def test_text_waits_no_longer_than_the_busy_window() -> None:
    script = [(0.0, Text("one ", "a")), (0.0, Text("two ", "a")), (WINDOW * 8, Text("three", "a"))]
    assert await received_while(script, others=1) == [
        Text("one ", "a"),
        Text("two ", "a"),
        Text("three", "a"),
    ]


async def test_held_text_goes_out_a_window_after_the_other_turns_have_their_first_text() -> None:
    starting = Starting()
    other = starting.begin()
    script = [(0.0, Text("one ", "a")), (0.0, Text("two ", "a")), (WINDOW * 3, Text("three", "a"))]
    loop = asyncio.get_running_loop()
    loop.call_later(WINDOW * 1.5, other.first_text)  # then the next window's end sends "two"
    out = [event async for event in coalesced(paced(script), WINDOW, starting.begin(), WINDOW * 4)]
    assert out == [Text("one ", "a"), Text("two ", "a"), Text("three", "a")]


def test_a_turn_stops_counting_once() -> None:
    starting = Starting()
    start = starting.begin()
    start.first_text()
    start.first_text()
    assert starting.waiting == 0


async def test_a_turn_under_way_reads_its_model_as_its_held_text_goes_while_others_start() -> None:
    starting = Starting()
    other = starting.begin()
    pauses: list[float] = []

    def pause() -> float:
        asked = read_pause.get()
        assert asked is not None, "coalesced tells the turn how to read"
        return asked()

    async def turn() -> AsyncGenerator[TurnEvent, None]:
        pauses.append(pause())  # before its first text: read as data comes
        yield Text("one ", "a")
        pauses.append(pause())  # under way while another turn waits for its first text, nothing held
        yield Text("two ", "a")
        pauses.append(pause())  # until the text held now goes out, 4 windows after it came
        await asyncio.sleep(WINDOW * 3)
        pauses.append(pause())  # a window at least
        other.first_text()
        pauses.append(pause())  # nobody waits any more
        yield Text("three", "a")

    assert read_pause.get() is None
    out = [event async for event in coalesced(turn(), WINDOW, starting.begin(), WINDOW * 4)]
    assert pauses[:2] == [0.0, WINDOW]
    assert WINDOW * 3.5 < pauses[2] <= WINDOW * 4
    assert pauses[3:] == [WINDOW, 0.0]
    assert "".join(event.text for event in out if isinstance(event, Text)) == "one two three"


async def test_a_busy_window_no_longer_than_the_window_turns_first_words_first_off() -> None:
    starting = Starting()
    starting.begin()  # another turn waits for its first text throughout
    pauses: list[float] = []

    async def turn() -> AsyncGenerator[TurnEvent, None]:
        yield Text("one ", "a")
        asked = read_pause.get()
        assert asked is not None
        pauses.append(asked())
        yield Text("two ", "a")
        await asyncio.sleep(WINDOW * 2)
        yield Text("three", "a")

    out = [event async for event in coalesced(turn(), WINDOW, starting.begin(), WINDOW)]
    assert pauses == [0.0], "the model is read as its words come"
    assert Text("three", "a") in out, "held text went out after one window"
