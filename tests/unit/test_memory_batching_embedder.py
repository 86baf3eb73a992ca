"""BatchingEmbedder: a lone call goes straight out; calls beyond the concurrency wait and go out together,
each getting its own vectors; a failing batch fails each of its calls; a caller giving up leaves the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from memory.embeddings import BatchingEmbedder, Vector
from mesh.context import CallInfo, current_call, time_remaining
from mesh.errors import Unavailable


class Gated:
    """An embedder whose requests stay out until released; records each request's texts."""

    dimension = 2

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.deadlines: list[float | None] = []
        self.gates: list[asyncio.Future[None]] = []
        self.sent = asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        self.requests.append(list(texts))
        self.deadlines.append(time_remaining())
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.sent.set()
        await gate
        return [(float(len(text)), float(index)) for index, text in enumerate(texts)]

    async def out(self, count: int) -> None:
        """Waits until `count` requests have been sent."""
        while len(self.requests) < count:
            self.sent.clear()
            await asyncio.wait_for(self.sent.wait(), 5)

    def release(self, index: int, error: BaseException | None = None) -> None:
        if error is None:
            self.gates[index].set_result(None)
        else:
            self.gates[index].set_exception(error)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_call_alone_goes_out_at_once() -> None:
    inner = Gated()
    embedder = BatchingEmbedder(inner, concurrency=1)
    call = asyncio.create_task(embedder.embed(["hello"]))
    await inner.out(1)
    inner.release(0)
    assert await call == [(5.0, 0.0)]
    assert inner.requests == [["hello"]]
    assert embedder.dimension == 2


async def test_calls_beyond_the_concurrency_go_out_as_one_request_each_with_its_own_vectors() -> None:
    inner = Gated()
    embedder = BatchingEmbedder(inner, concurrency=1)
    first = asyncio.create_task(embedder.embed(["a"]))
    await inner.out(1)
    waiting = [asyncio.create_task(embedder.embed(texts)) for texts in (["bb"], ["ccc", "dddd"], ["e"])]
    await settle()
    assert len(inner.requests) == 1  # nothing more goes out while the first is out

    inner.release(0)
    await inner.out(2)
    assert inner.requests[1] == ["bb", "ccc", "dddd", "e"]
    inner.release(1)
    assert await first == [(1.0, 0.0)]
    assert [await task for task in waiting] == [[(2.0, 0.0)], [(3.0, 1.0), (4.0, 2.0)], [(1.0, 3.0)]]


async def test_a_batch_holds_at_most_max_batch_texts_and_the_rest_follows() -> None:
    inner = Gated()
    embedder = BatchingEmbedder(inner, concurrency=1, max_batch=3)
    first = asyncio.create_task(embedder.embed(["x"]))
    await inner.out(1)
    waiting = [asyncio.create_task(embedder.embed([f"t{n}"])) for n in range(5)]
    await settle()
    inner.release(0)
    await inner.out(2)
    assert inner.requests[1] == ["t0", "t1", "t2"]
    inner.release(1)
    await inner.out(3)
    assert inner.requests[2] == ["t3", "t4"]
    inner.release(2)
    await first
    assert len(await asyncio.gather(*waiting)) == 5


async def test_a_failing_batch_fails_each_of_its_calls_and_the_next_ones_still_go_out() -> None:
    inner = Gated()
    embedder = BatchingEmbedder(inner, concurrency=1)
    first = asyncio.create_task(embedder.embed(["a"]))
    await inner.out(1)
    waiting = [asyncio.create_task(embedder.embed([text])) for text in ("b", "c")]
    await settle()
    inner.release(0)
    await inner.out(2)
    inner.release(1, Unavailable("the embedding model is unavailable"))
    for task in waiting:
        with pytest.raises(Unavailable):
            await task
    await first

    later = asyncio.create_task(embedder.embed(["d"]))
    await inner.out(3)
    inner.release(2)
    assert await later == [(1.0, 0.0)]


async def test_a_caller_giving_up_leaves_the_batch_to_the_others() -> None:
    inner = Gated()
    embedder = BatchingEmbedder(inner, concurrency=1)
    first = asyncio.create_task(embedder.embed(["a"]))
    await inner.out(1)
    gone = asyncio.create_task(embedder.embed(["bb"]))
    staying = asyncio.create_task(embedder.embed(["ccc"]))
    await settle()
    gone.cancel()
    inner.release(0)
    await inner.out(2)
    inner.release(1)
    assert await staying == [(3.0, 1.0)]
    assert gone.cancelled()
    await first


async def test_a_batch_runs_under_no_callers_deadline() -> None:
    inner = Gated()
    embedder = BatchingEmbedder(inner, concurrency=1)

    async def with_deadline(texts: list[str]) -> list[Vector]:
        current_call.set(CallInfo("/t.S/M", "r1", deadline=time.monotonic() + 30))
        return await embedder.embed(texts)

    first = asyncio.create_task(with_deadline(["a"]))
    await inner.out(1)
    waiting = asyncio.create_task(with_deadline(["b"]))
    await settle()
    inner.release(0)
    await inner.out(2)
    inner.release(1)
    await asyncio.gather(first, waiting)
    assert inner.deadlines[0] is not None  # the lone call: its caller's
    assert inner.deadlines[1] is None  # the batch: the embedder's own timeout


def test_concurrency_and_batch_size_are_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchingEmbedder(Gated(), concurrency=0)
