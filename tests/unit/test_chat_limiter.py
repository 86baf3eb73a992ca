"""Chat limits (orchestrator.limits): window math, stream slots, turn counting and failing open."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from doubles.clock import FakeClock
from doubles.limit_store import InMemoryLimitStore

from mesh.errors import ResourceExhausted, Unavailable
from orchestrator.limits import Admission, Limiter, Limits, window_at


def Clock(now: float = 1_200_020.0) -> FakeClock:
    return FakeClock(datetime.fromtimestamp(now, UTC))


class BrokenStore(InMemoryLimitStore):
    """A store that fails while `down`, counting how often it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise Unavailable("the rate-limit store is unavailable")

    async def admit(
        self, user_id: str, stream_id: str, now: float, lease_until: float, window: int, window_ttl: float
    ) -> Admission:
        self._check()
        return await super().admit(user_id, stream_id, now, lease_until, window, window_ttl)

    async def refuse(self, user_id: str, stream_id: str, window: int) -> None:
        self._check()
        await super().refuse(user_id, stream_id, window)

    async def renew_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> None:
        self._check()
        await super().renew_stream(user_id, stream_id, now, lease_until)

    async def release_stream(self, user_id: str, stream_id: str) -> None:
        self._check()
        await super().release_stream(user_id, stream_id)


@pytest.mark.parametrize(
    ("now", "index", "retry_after"),
    [(0.0, 0, 60.0), (59.5, 0, 0.5), (60.0, 1, 60.0), (119.25, 1, 0.75), (1_700_000_000.0, 28_333_333, 40.0)],
)
def test_windows_are_numbered_from_the_epoch(now: float, index: int, retry_after: float) -> None:
    window = window_at(now, 60.0)
    assert window.index == index
    assert window.retry_after(now) == pytest.approx(retry_after)
    assert window.retry_after(window.ends_at) > 0  # never "retry now" while still refused


async def test_open_streams_are_limited_and_freed_when_they_end() -> None:
    limiter = Limiter(Limits(max_streams=2), InMemoryLimitStore(), Clock())
    async with limiter.stream("ada"), limiter.stream("ada"):
        with pytest.raises(ResourceExhausted) as refused:
            async with limiter.stream("ada"):
                pass
        assert refused.value.retry_after == 1.0
        assert "at most 2" in refused.value.message
        async with limiter.stream("grace"):  # other users have their own slots
            pass
    async with limiter.stream("ada"), limiter.stream("ada"):
        pass


async def test_a_stream_slot_is_freed_when_the_block_raises() -> None:
    limiter = Limiter(Limits(max_streams=1), InMemoryLimitStore(), Clock())
    with pytest.raises(RuntimeError):
        async with limiter.stream("ada"):
            raise RuntimeError("the turn failed")
    async with limiter.stream("ada"):
        pass


async def test_a_lease_never_released_expires() -> None:
    clock = Clock()
    store = InMemoryLimitStore()
    limiter = Limiter(Limits(max_streams=1, stream_lease_seconds=600), store, clock)
    await store.admit("ada", "lost-on-a-dead-replica", clock.time(), clock.time() + 600, 0, 61)
    with pytest.raises(ResourceExhausted):
        async with limiter.stream("ada"):
            pass
    clock.advance(601)
    async with limiter.stream("ada"):
        pass


async def test_an_open_stream_keeps_its_slot_past_its_first_lease_by_heartbeat() -> None:
    clock = Clock()
    store = InMemoryLimitStore()
    limiter = Limiter(Limits(max_streams=1, stream_lease_seconds=0.6), store, clock)
    async with limiter.stream("ada"):
        for _ in range(4):  # 1 s of clock time; the heartbeat renews every 0.2 s of real time
            await asyncio.sleep(0.25)
            clock.advance(0.25)
        with pytest.raises(ResourceExhausted):
            async with limiter.stream("ada"):
                pass
    assert store.streams["ada"] == {}  # released at the end, no heartbeat after it
    await asyncio.sleep(0.3)
    assert store.streams["ada"] == {}


async def test_a_stream_whose_heartbeat_cannot_reach_the_store_goes_on() -> None:
    clock = Clock()
    store = BrokenStore()
    store.down = False
    limiter = Limiter(Limits(max_streams=1, stream_lease_seconds=0.15), store, clock)
    async with limiter.stream("ada"):
        store.down = True
        await asyncio.sleep(0.2)  # a renewal failed
        calls = store.calls
        store.down = False
    assert calls >= 2  # admit, renew
    assert store.streams["ada"] == {}


async def test_turns_per_window_are_limited_with_the_time_to_the_next_window() -> None:
    clock = Clock(now=1_200_020.0)  # 20 s into a window
    limiter = Limiter(Limits(turns_per_window=3, max_streams=10), InMemoryLimitStore(), clock)
    for _ in range(3):
        async with limiter.stream("ada"):
            pass
    clock.advance(10)
    with pytest.raises(ResourceExhausted) as refused:
        async with limiter.stream("ada"):
            pass
    assert refused.value.retry_after == pytest.approx(30.0)
    assert "at most 3 per 60 seconds" in refused.value.message

    clock.advance(30)  # the next window
    async with limiter.stream("ada"):
        pass


async def test_a_turn_refused_for_its_rate_does_not_keep_a_stream_slot() -> None:
    store = InMemoryLimitStore()
    limiter = Limiter(Limits(turns_per_window=1, max_streams=1), store, Clock())
    async with limiter.stream("ada"):
        pass
    with pytest.raises(ResourceExhausted):
        async with limiter.stream("ada"):
            pass
    assert store.streams["ada"] == {}


async def test_a_refused_turn_does_not_count_against_the_window() -> None:
    """Refused for too many streams, a turn is not one of the window's: the user's budget is intact."""
    store = InMemoryLimitStore()
    limiter = Limiter(Limits(turns_per_window=2, max_streams=1), store, Clock())
    async with limiter.stream("ada"):
        for _ in range(3):
            with pytest.raises(ResourceExhausted, match="streams"):
                async with limiter.stream("ada"):
                    pass
    async with limiter.stream("ada"):  # the second turn of the window
        pass


async def test_an_unavailable_store_admits_turns_logs_a_warning_and_is_left_alone_for_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    store = BrokenStore()
    limiter = Limiter(Limits(max_streams=1, outage_backoff_seconds=5), store, clock)
    with caplog.at_level(logging.WARNING, logger="orchestrator.limits"):
        async with limiter.stream("ada"), limiter.stream("ada"):  # over the limit, but admitted
            pass
    assert store.calls == 1  # the second turn did not wait on the broken store
    assert any("admitting chat turns without limits" in record.message for record in caplog.records)

    store.down = False
    clock.advance(6)
    async with limiter.stream("ada"):
        with pytest.raises(ResourceExhausted):
            async with limiter.stream("ada"):
                pass


async def test_a_failing_release_is_logged_and_the_lease_left_to_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BrokenStore()
    store.down = False
    limiter = Limiter(Limits(), store, Clock())
    with caplog.at_level(logging.WARNING, logger="orchestrator.limits"):
        async with limiter.stream("ada"):
            store.down = True
    assert any("releasing a chat stream slot failed" in record.message for record in caplog.records)


class SwallowingStore(InMemoryLimitStore):
    """Renewals that take a while and, cancelled, raise Unavailable instead: the way a client library's
    own timeout can turn a cancellation into an error of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing = asyncio.Event()

    async def renew_stream(self, user_id: str, stream_id: str, now: float, lease_until: float) -> None:
        self.renewing.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise Unavailable("the rate-limit store is unavailable") from None


async def test_a_stream_ends_even_when_its_heartbeat_swallows_the_cancellation() -> None:
    """Seen with 1,000 streams on one replica: a renewal timing out as its stream ended kept the heartbeat
    alive, and the finished answer's stream open until its connection was closed minutes later."""
    store = SwallowingStore()
    limiter = Limiter(Limits(max_streams=1, stream_lease_seconds=0.15), store, Clock())

    async def one_stream() -> None:
        async with limiter.stream("ada"):
            await store.renewing.wait()  # ends while a renewal is in flight

    await asyncio.wait_for(one_stream(), timeout=3)
    assert store.streams["ada"] == {}  # released all the same


async def test_a_refused_user_is_known_as_refusing_until_their_retry_after() -> None:
    """Nothing is spent ahead of admission on a user just refused (`Turns.run` embeds turns meanwhile)."""
    clock = Clock()
    limiter = Limiter(Limits(max_streams=1, turns_per_window=100), InMemoryLimitStore(), clock)
    assert not limiter.refusing("ada")
    async with limiter.stream("ada"):
        with pytest.raises(ResourceExhausted) as refused:
            async with limiter.stream("ada"):
                pass
    assert limiter.refusing("ada")
    assert not limiter.refusing("grace")
    clock.advance(refused.value.retry_after + 0.01)
    assert not limiter.refusing("ada")
