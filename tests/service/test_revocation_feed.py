"""The revocation list's Redis stream against a real Valkey: what is written reaches a follower, one whose
connection was cut catches up (and still stops when asked), a malformed entry is skipped, and the stream
keeps only what can matter.
The in-memory writer of the unit tests (`doubles.revocations`) is held to the same contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from doubles.revocations import RecordingRevocations
from polling import eventually

from devstack.process import free_port
from devstack.valkey import EmbeddedValkey
from mesh.errors import Unavailable
from mesh.redis import Redis, connect
from mesh.revocation import Revocation, RevocationKind, RevocationList
from mesh.revocation_feed import STREAM, RedisRevocationFeed

BOUND_SECONDS = 5.0


@pytest_asyncio.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    redis = connect(valkey.url, 2.0)
    await redis.delete(STREAM)
    yield redis
    await redis.delete(STREAM)
    await redis.aclose()


def revocation(
    subject: str, *, kind: RevocationKind = RevocationKind.USER, lasting: int = 1020
) -> Revocation:
    now = int(time.time())
    return Revocation(kind, subject, revoked_at=now, expires_at=now + lasting)


def refuses(revocations: RevocationList, user_id: str, session_id: str = "") -> bool:
    now = time.time()
    return (
        revocations.refusal(user_id=user_id, session_id=session_id, issued_at=now - 60, now=now) is not None
    )


Writer = tuple[Callable[[Revocation], Awaitable[None]], Callable[[], Awaitable[RevocationList]]]


@pytest.fixture(params=["redis", "in-memory double"])
def writer(request: pytest.FixtureRequest, client: Redis) -> Writer:
    """How to write a revocation, and what a reader then holds."""
    if request.param == "redis":
        feed = RedisRevocationFeed(client)

        async def read() -> RevocationList:
            revocations = RevocationList()
            await feed.load(revocations)
            return revocations

        return feed.revoke, read
    double = RecordingRevocations()

    async def held() -> RevocationList:
        return double.list

    return double.revoke, held


async def test_contract_what_is_written_is_what_readers_refuse(writer: Writer) -> None:
    revoke, read = writer
    await revoke(revocation("ada"))
    await revoke(revocation("family-1", kind=RevocationKind.SESSION))
    revocations = await read()
    assert refuses(revocations, "ada")
    assert refuses(revocations, "bob", "family-1")
    assert not refuses(revocations, "bob", "family-2")


async def test_contract_writing_without_a_server_is_unavailable() -> None:
    for revoke in (
        RedisRevocationFeed(connect(f"redis://127.0.0.1:{free_port()}/0", 1.0)).revoke,
        _down_double().revoke,
    ):
        with pytest.raises(Unavailable):
            await revoke(revocation("ada"))


def _down_double() -> RecordingRevocations:
    double = RecordingRevocations()
    double.down = True
    return double


async def test_a_follower_gets_each_entry_as_it_is_written_and_catches_up_after_losing_its_connection(
    client: Redis, valkey: EmbeddedValkey
) -> None:
    follower_client = connect(valkey.url, 2.0)
    follower = RedisRevocationFeed(follower_client, retry_seconds=0.05)
    writer = RedisRevocationFeed(client)
    revocations = RevocationList()
    await writer.revoke(revocation("before-start"))
    following = asyncio.create_task(follower.follow(revocations))
    try:
        await eventually(lambda: refuses(revocations, "before-start"))
        await writer.revoke(revocation("pushed"))
        await eventually(lambda: refuses(revocations, "pushed"))

        # Cut every connection but the writer's: the follower's blocking read fails, it reconnects and
        # reads what was written meanwhile.
        await client.client_kill_filter(_type="normal", skipme=True)
        await writer.revoke(revocation("while-cut-off"))
        await eventually(lambda: refuses(revocations, "while-cut-off"))
        await writer.revoke(revocation("after"))
        await eventually(lambda: refuses(revocations, "after"))
        assert not following.done()
    finally:
        following.cancel()  # as a service stops: promptly, even on a connection made again
        await asyncio.wait_for(asyncio.gather(following, return_exceptions=True), BOUND_SECONDS)
        await follower_client.aclose()


async def test_a_malformed_entry_is_skipped_and_following_goes_on(
    client: Redis, valkey: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    follower_client = connect(valkey.url, 2.0)
    revocations = RevocationList()
    following = asyncio.create_task(RedisRevocationFeed(follower_client).follow(revocations))
    try:
        await client.xadd(STREAM, {"kind": "everyone", "subject": "*"})
        await RedisRevocationFeed(client).revoke(revocation("ada"))
        await eventually(lambda: refuses(revocations, "ada"))
        assert len(revocations) == 1
        assert any("malformed entry" in record.getMessage() for record in caplog.records)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follower_client.aclose()


async def test_the_stream_keeps_only_what_a_token_can_still_need(client: Redis) -> None:
    long_ago = int(time.time()) - 2000
    stale = Revocation(RevocationKind.USER, "long-ago", revoked_at=long_ago, expires_at=long_ago + 1020)
    fields = {
        "kind": "user",
        "subject": stale.subject,
        "revoked_at": long_ago,
        "expires_at": stale.expires_at,
    }
    await client.xadd(STREAM, fields, id=f"{long_ago * 1000}-0")  # as if written 2,000 s ago
    feed = RedisRevocationFeed(client)
    await feed.revoke(revocation("current"))
    assert [fields["subject"] for _, fields in await client.xrange(STREAM)] == ["current"]
    assert 1000 < await client.ttl(STREAM) <= 1020  # the key goes when nothing was revoked for that long
    revocations = RevocationList()
    await feed.load(revocations)
    assert refuses(revocations, "current")
    assert len(revocations) == 1
