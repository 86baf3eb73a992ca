"""`mesh.retry`: policies made per call leave nothing for the cyclic garbage collector, and retry as ever."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
from tenacity import stop_after_attempt, wait_none

from mesh.retry import OneCallRetrying, first_item_retrying, retrying_on, until_reachable


class Flaky(Exception):
    pass


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic collector stopped, with nothing pending: `gc.collect()` then counts what the test left."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def policy() -> OneCallRetrying:
    return OneCallRetrying(
        retry=retrying_on((Flaky,)), stop=stop_after_attempt(3), wait=wait_none(), reraise=True
    )


async def attempts(policy: OneCallRetrying, failures: int) -> int:
    """Runs a call failing `failures` times under `policy`; how many attempts it took."""
    made = 0
    async for attempt in policy:
        with attempt:
            made += 1
            if made <= failures:
                raise Flaky
    return made


@pytest.mark.usefixtures("collector_off")
async def test_a_policy_per_call_that_succeeds_leaves_no_cycles() -> None:
    """The case of every turn (a model call, an event acknowledged): nothing for the collector."""
    for _ in range(50):
        assert await attempts(policy(), failures=0) == 1
        assert await attempts(until_reachable("the test", (Flaky,), within=None), failures=0) == 1
    assert gc.collect() == 0


async def test_it_retries_as_tenacity_does_and_gives_up_with_the_last_error() -> None:
    assert await attempts(policy(), failures=2) == 3
    with pytest.raises(Flaky):
        await attempts(policy(), failures=5)
    assert await attempts(until_reachable("the test", (Flaky,), within=None, first_delay=0), 1) == 2


@pytest.mark.usefixtures("collector_off")
async def test_a_stream_whose_first_attempt_succeeds_leaves_no_cycles() -> None:
    async def stream() -> AsyncIterator[int]:
        yield 1
        yield 2

    for _ in range(50):
        assert [item async for item in first_item_retrying(stream, policy())] == [1, 2]
    assert gc.collect() == 0


async def test_a_stream_failing_before_its_first_item_is_opened_again() -> None:
    opened = 0

    async def stream() -> AsyncIterator[int]:
        nonlocal opened
        opened += 1
        if opened == 1:
            raise Flaky
        yield 1

    assert [item async for item in first_item_retrying(stream, policy())] == [1]
    assert opened == 2
