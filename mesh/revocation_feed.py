"""The revocation list in Redis: one stream the auth service appends to and every service process follows.

Each entry of the stream `athena:revocations` is one `mesh.revocation.Revocation` (kind, subject,
revoked_at, expires_at). A follower loads the whole stream, then waits on it with a blocking `XREAD` from
the last entry it saw, so an entry reaches every process as soon as it is written (milliseconds), and none
is missed: reading resumes from the last id after any interruption. After a reconnection, and every
`reload_seconds` besides, the stream is read whole again (a Redis that lost its data and was refilled is
caught that way).

The stream holds only what can still matter: each write drops the entries older than the longest-lived
token (`XADD ... MINID`) and the key expires when nothing was revoked for that long.

While Redis cannot be reached, a follower keeps the entries it has (they still apply, each until it
expires) and retries every `retry_seconds`; a process that starts during the outage begins with an empty
list. Writing fails with `Unavailable` (`revoke`); what a failed write means is the caller's decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from redis import exceptions as redis_errors

from mesh.redis import UNAVAILABLE, Redis, cancelling, translated
from mesh.revocation import Revocation, RevocationKind, RevocationList

log = logging.getLogger(__name__)

STREAM = "athena:revocations"
Entries = list[tuple[str, dict[str, str]]]
"""What XRANGE answers (decoded): (entry id, fields) in order."""
StreamReply = list[tuple[str, Entries]]
"""What XREAD answers (RESP2, decoded): (stream, entries) pairs; empty when nothing came."""
FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis_errors.RedisError)
"""What makes a follower wait and load again: Redis unreachable, or answering an error."""
PAGE = 1000
"""Entries read per command."""


def _fields(revocation: Revocation) -> dict[Any, Any]:  # redis-py's invariant field types
    return {
        "kind": revocation.kind.value,
        "subject": revocation.subject,
        "revoked_at": revocation.revoked_at,
        "expires_at": revocation.expires_at,
    }


def _revocation(fields: Mapping[str, str]) -> Revocation | None:
    try:
        return Revocation(
            kind=RevocationKind(fields["kind"]),
            subject=fields["subject"],
            revoked_at=int(fields["revoked_at"]),
            expires_at=int(fields["expires_at"]),
        )
    except (KeyError, ValueError):
        return None


class RedisRevocationFeed:
    """The stream, for writing (`revoke`) and following (`load`, `follow`)."""

    def __init__(
        self,
        client: Redis,
        *,
        block_seconds: float = 0.5,
        retry_seconds: float = 0.5,
        reload_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._block_ms = int(block_seconds * 1000)
        """How long one XREAD waits for news: the client's socket timeout must be longer."""
        self._retry_seconds = retry_seconds
        self._reload_seconds = reload_seconds
        self._clock = clock

    async def revoke(self, revocation: Revocation) -> None:
        """Appends `revocation`, dropping entries no token can need any more; `Unavailable` when Redis
        cannot take it."""
        lifetime = max(1, revocation.expires_at - int(self._clock()))
        oldest_needed_ms = int((self._clock() - lifetime) * 1000)
        async with translated("the revocation list"), self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(STREAM, _fields(revocation), minid=oldest_needed_ms, approximate=False)
            pipe.expire(STREAM, lifetime)
            await pipe.execute()

    async def load(self, revocations: RevocationList) -> str:
        """Adds every entry of the stream to `revocations`; returns the last entry's id ("0-0": none).
        Raises what the client raises when Redis cannot answer."""
        last = "0-0"
        start = "-"
        while True:
            page = cast(Entries, await self._client.xrange(STREAM, min=start, max="+", count=PAGE))
            for entry_id, fields in page:
                self._apply(revocations, fields)
                last = entry_id
            if not page or len(page) < PAGE:
                break
            start = f"({last}"
        revocations.prune(self._clock())
        return last

    async def load_once(self, revocations: RevocationList) -> bool:
        """`load`, answering False instead of raising when Redis cannot be reached (start-up)."""
        try:
            await self.load(revocations)
        except UNAVAILABLE:
            log.warning("the revocation list is unreachable at start-up; following it once Redis answers")
            return False
        return True

    async def follow(self, revocations: RevocationList, *, reachable: bool = True) -> None:
        """Forever: keep `revocations` current (see the module's docstring). Never raises but for
        cancellation; a malformed entry is skipped and logged. `reachable`: whether Redis answered last
        (an outage is logged once, when it starts, and its end)."""
        while True:
            try:
                last = await self.load(revocations)
                if not reachable:
                    log.info("the revocation list is read again")
                    reachable = True
                await self._read_on(revocations, last)
            except FAILURES as exc:
                if cancelling():  # see `mesh.redis.cancelling`
                    raise asyncio.CancelledError from exc
                if reachable:
                    log.warning(
                        "the revocation list cannot be read; the %d entries known keep applying",
                        len(revocations),
                        extra={"error": type(exc).__name__},
                    )
                    reachable = False
                await asyncio.sleep(self._retry_seconds)

    async def _read_on(self, revocations: RevocationList, last: str) -> None:
        """Adds the entries written after `last` as they come, until it is time to load the stream again."""
        reload_at = time.monotonic() + self._reload_seconds
        while time.monotonic() < reload_at:
            reply = await self._client.xread({STREAM: last}, count=PAGE, block=self._block_ms)
            if cancelling():  # see `mesh.redis.cancelling`
                raise asyncio.CancelledError
            for _, entries in cast(StreamReply, reply or []):
                for entry_id, fields in entries:
                    self._apply(revocations, fields)
                    last = entry_id

    def _apply(self, revocations: RevocationList, fields: Mapping[str, str]) -> None:
        revocation = _revocation(fields)
        if revocation is None:
            log.error("skipped a malformed entry of the revocation list", extra={"fields": sorted(fields)})
            return
        revocations.add(revocation)
