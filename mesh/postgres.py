"""PostgreSQL through asyncpg: one way to open a pool, to tell "the database cannot serve now" from a bug,
and to check readiness.

Connection-level failures (server down or restarting, pool exhausted, timeouts) become
`mesh.errors.Unavailable` here, at the boundary; the pool replaces broken connections, so calls succeed
again as soon as PostgreSQL is back. Anything else (a constraint violation, a syntax error) is the
caller's to handle or a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeAlias, cast

import asyncpg

from mesh.errors import Unavailable

log = logging.getLogger(__name__)

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

UNAVAILABLE: tuple[type[BaseException], ...] = (
    # Most specific first; all of them mean "the database cannot serve right now", never a bug of ours.
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, query cancelled by the server
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    TimeoutError,
    ConnectionError,
    OSError,
)
_NOT_READY: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncpg.exceptions.InterfaceError)


@contextlib.asynccontextmanager
async def translated(what: str = "the database") -> AsyncIterator[None]:
    """Raises `Unavailable("<what> is unavailable")` for connection-level failures inside the block."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise Unavailable(f"{what} is unavailable") from exc


FIRST_NORMAL_OBJECT_ID = 16384
"""PostgreSQL's own objects (its built-in types among them) have OIDs below this one: initdb assigns them,
the same in every database of a server version. Extensions and `CREATE TYPE` get OIDs from it up."""


class _NoStatement:
    """Stands for the introspection statement when none ran: asyncpg re-prepares the statement it is
    preparing only after an anonymous introspection statement (`name` empty) replaced it."""

    name = "(types known)"


class PooledConnection(asyncpg.Connection):
    """Every pool's connection (`open_pool`): asyncpg's, learning PostgreSQL's built-in types once per
    process instead of once per connection.

    asyncpg knows few array types by itself: a statement with `uuid[]` or `bytea[]` parameters, or returning
    `record[]` (memory's turn statement with its recall's candidates), makes a connection that has not seen
    them run asyncpg's type introspection first, a recursive query over the catalog that PostgreSQL took
    10-42 ms to plan and run each time. Every connection of a pool did, on the way of the call that met
    them: in a burst of 50 turns after a warm-up of 100, memory's connections ran it 3-6 times in the
    first round, whose PostgreSQL planning came to 113-153 ms (52 ms with it learnt once; 2026-12-04).
    What it answers about a built-in type (OID below `FIRST_NORMAL_OBJECT_ID`) is the same for every
    connection to one server version, so it is kept here for the process, and a connection asks only
    about the rest (types of extensions and of the schema: their OIDs can change). asyncpg has no public
    way to share them: this overrides its `_introspect_types` (asyncpg is pinned, and
    tests/service/test_postgres_pool.py fails if the override stops being called or stops sharing)."""

    __slots__ = ()

    _builtin_types: ClassVar[dict[tuple[Any, int], Any]] = {}  # (server version, OID) → introspection row

    async def _introspect_types(self, typeoids: Any, timeout: Any) -> tuple[list[Any], Any]:  # noqa: ASYNC109 (asyncpg's)
        version = self.get_server_version()
        known = self._known_types(version, list(typeoids))
        if known is not None:
            return known, _NoStatement
        types, statement = await super()._introspect_types(typeoids, timeout)  # type: ignore[misc]
        if all(row["oid"] < FIRST_NORMAL_OBJECT_ID for row in types):
            for row in types:
                self._builtin_types[version, row["oid"]] = row
        return types, statement

    def _known_types(self, version: Any, oids: list[int]) -> list[Any] | None:
        """The introspection rows of `oids` and of the types they are made of (elements, base types; those
        first), when every one of `oids` is known; else None."""
        rows: dict[int, Any] = {}

        def add(oid: int) -> bool:
            row = self._builtin_types.get((version, oid))
            if row is None:
                return False
            for part in (row["elemtype"], row["basetype"], row["range_subtype"], *(row["attrtypoids"] or ())):
                if part and part not in rows:
                    add(part)  # learnt with the types made of it
            rows.setdefault(oid, row)
            return True

        return list(rows.values()) if all(add(oid) for oid in oids) else None


IDLE_CONNECTION_SECONDS = 300.0
"""How long a pooled connection above the pool's minimum stays open unused (asyncpg's own default). A
connection opened anew costs its first call a new backend: 5.4 ms to connect and prepare the codecs, and
1.9 ms for a first query that takes 0.1 ms on a connection that ran it before (its catalog caches and
prepared statements start empty; measured on 2026-12-04). Kept for a minute only, as they were, every
burst after a quiet minute opened the connections the previous one had: a 50-turn burst, sixteen of them
on memory's pool, each on a turn's way to its first delta. Idle backends cost PostgreSQL a few MiB each
meanwhile."""


async def open_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
    init: Callable[[Connection], Awaitable[None]] | None = None,
    connection_class: type[PooledConnection] = PooledConnection,
    max_idle_seconds: float = IDLE_CONNECTION_SECONDS,
) -> Pool:
    """A pool of `max_size` connections of `connection_class` (a `PooledConnection`); `init` prepares each
    new connection (type codecs); a connection above `min_size` closes once unused for `max_idle_seconds`."""
    async with translated():
        return await asyncpg.create_pool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            init=cast("Any", init),  # asyncpg's stub wants its own callback protocol
            connection_class=connection_class,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            max_inactive_connection_lifetime=max_idle_seconds,
            reset=_no_session_state,
        )


async def _no_session_state(connection: Connection) -> None:
    """What a connection going back to the pool needs beyond asyncpg's own cleanup (which rolls back an open
    transaction): nothing. Nothing listens, holds advisory locks or leaves cursors open; settings are
    transaction-local (`set_config(..., true)`), or session settings the connection remembers and the next
    user of it sets again when it needs others (`memory.database.Database.statements`). asyncpg's default
    reset (`CLOSE ALL; UNLISTEN *; RESET ALL; SELECT pg_advisory_unlock_all()`) would cost a round trip on
    every release for nothing, and forget those settings behind the connection's back."""


async def close_pool(pool: Pool, *, within: float = 5.0) -> None:
    """Closes `pool`, waiting up to `within` seconds for connections in use, then terminating them."""
    try:
        await asyncio.wait_for(pool.close(), timeout=within)
    except TimeoutError:
        pool.terminate()


async def ping(pool: Pool, *, within: float = 1.0) -> bool:
    """Whether a `SELECT 1` answers within `within` seconds (readiness checks)."""
    try:
        async with asyncio.timeout(within), pool.acquire(timeout=within) as connection:
            await connection.fetchval("SELECT 1", timeout=within)
    except _NOT_READY as exc:
        log.warning("database not ready: %s", type(exc).__name__)
        return False
    return True
