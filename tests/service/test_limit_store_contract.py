"""The chat `LimitStore` contract, held by the in-memory double and by the Redis store on a real Valkey.

The limiter (orchestrator.limits.Limiter) relies on exactly this: admitting a turn counts it per user and
window and answers the user's open streams including the new one, leases dropped once they expired;
refusing undoes both; release is idempotent.
Every test runs against both stores; a double that counted differently from Redis would fail here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from doubles.limit_store import InMemoryLimitStore

from devstack.valkey import EmbeddedValkey
from mesh.redis import connect
from orchestrator.limits import LimitStore
from orchestrator.redis_limits import RedisLimitStore

NOW = 1_800_000_000.0
"""Epoch seconds the tests pretend it is: stores take the time from the caller, never from a clock."""
LEASE = 600.0
TTL = 61.0
WINDOW = 30_000_000


async def acquire(store: LimitStore, user: str, stream: str, now: float, lease_until: float) -> int:
    """Admits a turn holding `stream`: the user's open streams."""
    return (await store.admit(user, stream, now, lease_until, WINDOW, TTL)).open_streams


async def count(store: LimitStore, user: str, window: int) -> int:
    """Admits a turn in `window` (on a stream of its own): the user's turns in it."""
    return (await store.admit(user, uuid.uuid4().hex, NOW, NOW + LEASE, window, TTL)).turns


@pytest_asyncio.fixture(params=["in-memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "in-memory":
        yield InMemoryLimitStore()
        return
    valkey: EmbeddedValkey = request.getfixturevalue("valkey")
    client = connect(valkey.url, 1.0)
    try:
        yield RedisLimitStore(client)
    finally:
        await client.aclose()


def new_user() -> str:
    """A user no other test (or earlier run on the same Valkey) has counted for."""
    return str(uuid.uuid4())


async def test_turns_are_counted_per_user_and_window(store: LimitStore) -> None:
    ada, bob = new_user(), new_user()
    assert [await count(store, ada, 42) for _ in range(3)] == [1, 2, 3]
    assert await count(store, ada, 43) == 1  # a new window starts from one
    assert await count(store, bob, 42) == 1  # another user has a budget of their own
    assert await count(store, ada, 42) == 4  # the earlier window's count was kept


async def test_acquiring_answers_the_open_streams_including_the_new_one(store: LimitStore) -> None:
    ada, bob = new_user(), new_user()
    assert await acquire(store, ada, "a1", NOW, NOW + LEASE) == 1
    assert await acquire(store, ada, "a2", NOW, NOW + LEASE) == 2
    assert await acquire(store, bob, "b1", NOW, NOW + LEASE) == 1  # per user
    assert await acquire(store, ada, "a3", NOW + 1, NOW + 1 + LEASE) == 3


async def test_leases_expired_at_now_are_dropped_by_the_next_acquire(store: LimitStore) -> None:
    ada = new_user()
    assert await acquire(store, ada, "short", NOW, NOW + 10) == 1
    assert await acquire(store, ada, "long", NOW, NOW + LEASE) == 2
    # Still open a moment before its lease ends...
    assert await acquire(store, ada, "third", NOW + 9.5, NOW + 9.5 + LEASE) == 3
    # ...and gone at the instant it ends: a crashed replica's stream frees its slot on its own.
    assert await acquire(store, ada, "fourth", NOW + 10, NOW + 10 + LEASE) == 3


async def test_release_frees_a_slot_and_is_idempotent(store: LimitStore) -> None:
    ada, bob = new_user(), new_user()
    await acquire(store, ada, "a1", NOW, NOW + LEASE)
    await acquire(store, ada, "a2", NOW, NOW + LEASE)
    await acquire(store, bob, "b1", NOW, NOW + LEASE)

    await store.release_stream(ada, "a1")
    await store.release_stream(ada, "a1")  # released twice (a refused stream, then its `finally`)
    await store.release_stream(ada, "never-acquired")
    await store.release_stream(new_user(), "of-someone-with-no-streams")

    assert await acquire(store, ada, "a3", NOW, NOW + LEASE) == 2  # a2 and a3
    assert await acquire(store, bob, "b2", NOW, NOW + LEASE) == 2  # bob's slot was not touched


async def test_acquiring_the_same_stream_again_renews_its_lease(store: LimitStore) -> None:
    ada = new_user()
    assert await acquire(store, ada, "s", NOW, NOW + 10) == 1
    assert await acquire(store, ada, "s", NOW, NOW + LEASE) == 1  # one stream, not two
    # The renewed lease outlives the first one.
    assert await acquire(store, ada, "t", NOW + 10, NOW + 10 + LEASE) == 2


async def test_a_renewed_lease_outlives_its_first_term(store: LimitStore) -> None:
    ada = new_user()
    assert await acquire(store, ada, "beating", NOW, NOW + 10) == 1
    assert await acquire(store, ada, "silent", NOW, NOW + 10) == 2
    await store.renew_stream(ada, "beating", NOW + 5, NOW + 15)
    # At NOW + 10 the silent stream's lease ended, the renewed one holds until NOW + 15...
    assert await acquire(store, ada, "third", NOW + 10, NOW + 20) == 2
    # ...and ends then unless renewed again.
    assert await acquire(store, ada, "fourth", NOW + 15, NOW + 25) == 2


async def test_renewing_a_lease_the_store_lost_records_it_again(store: LimitStore) -> None:
    ada = new_user()
    await store.renew_stream(ada, "survivor-of-a-redis-restart", NOW, NOW + 10)
    assert await acquire(store, ada, "next", NOW + 1, NOW + 11) == 2


async def test_refusing_forgets_the_stream_and_its_turn(store: LimitStore) -> None:
    ada = new_user()
    assert await count(store, ada, 7) == 1
    admitted = await store.admit(ada, "refused", NOW, NOW + LEASE, 7, TTL)
    assert (admitted.open_streams, admitted.turns) == (2, 2)
    await store.refuse(ada, "refused", 7)
    assert await acquire(store, ada, "next", NOW, NOW + LEASE) == 2  # the first and this one
    assert await count(store, ada, 7) == 2  # the refused turn was taken back
