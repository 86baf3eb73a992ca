"""Per-user work on the service's asyncpg pool (opened by `mesh.postgres`), scoped by row-level security.

Everything that touches user data runs with PostgreSQL's `athena.user_id` set to the verified caller's id,
so row-level security scopes it even if a query forgot its own `WHERE user_id = ...`, in one of two ways:

- `transaction`: several statements in one transaction, scoped with `set_config(..., true)` (local to it).
- `statements`: statements that each stand alone (autocommit: one round trip each, where a transaction
  costs three for one statement). The connection's session is scoped, and the scope is remembered with the
  connection (`SessionConnection`): set again, in one round trip, only when the connection last served
  another user or other settings. The hot statements of a turn take this way.

So a connection back in the pool may still be scoped to a user: user data is read and written through this
module only (tests/unit/test_memory_database_access.py holds the rest of memory to it).

Connection-level failures become `mesh.errors.Unavailable` (`mesh.postgres.translated`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from pgvector.asyncpg import register_vector

from mesh import postgres

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


class SessionConnection(postgres.PooledConnection):
    """A pooled connection that remembers what its session is scoped to (`Database.statements`): the
    settings it set with `set_config(..., false)`, the user first. A connection replaced by the pool (broken,
    idle too long) starts empty, as its new session does."""

    __slots__ = ("session_settings",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_settings: dict[str, str] = {}


async def init_connection(connection: postgres.Connection) -> None:
    """Every pooled connection knows the `vector` and `jsonb` types, and quotes literals as `_literal`
    does (backslashes are plain characters)."""
    if connection.get_settings().standard_conforming_strings != "on":
        raise RuntimeError("PostgreSQL must run with standard_conforming_strings = on")
    await register_vector(connection)
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _literal(value: str) -> str:
    """`value` as an SQL string literal (with standard_conforming_strings, as `init_connection` checks)."""
    if "\x00" in value:
        raise ValueError("a PostgreSQL string cannot hold NUL")
    return "'" + value.replace("'", "''") + "'"


def _set_configs(settings: dict[str, str], *, local: bool) -> str:
    return ", ".join(
        f"set_config({_literal(name)}, {_literal(value)}, {'true' if local else 'false'})"
        for name, value in settings.items()
    )


@functools.cache
def _session_configs(count: int) -> str:
    """`count` session settings as one parameterised statement: prepared once per connection (asyncpg's
    statement cache), so a connection changing users is not parsed and planned again every time."""
    return "SELECT " + ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(count))


def _pairs(settings: dict[str, str]) -> list[str]:
    return [item for pair in settings.items() for item in pair]


class Database:
    """Transactions on the pool, each scoped to one user (or to no user, for the global catalog)."""

    def __init__(self, pool: postgres.Pool, *, acquire_timeout: float = 2.0) -> None:
        self.pool = pool
        self._acquire_timeout = acquire_timeout
        self._ending: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def transaction(
        self, user_id: str | None, *, readonly: bool = False, settings: dict[str, str] | None = None
    ) -> AsyncIterator[Connection]:
        """A connection inside a transaction whose row-level-security user is `user_id` (None: no user,
        so user-data tables show no rows). `settings` are further `set_config(..., true)` pairs."""
        configs = _set_configs({"athena.user_id": user_id or "", **(settings or {})}, local=True)
        mode = "ISOLATION LEVEL REPEATABLE READ READ ONLY" if readonly else "ISOLATION LEVEL READ COMMITTED"
        async with postgres.translated():
            connection = await self.pool.acquire(timeout=self._acquire_timeout)
            ending_later = False
            try:
                # One round trip opens the transaction and scopes it: the simple query protocol takes both
                # statements (hence the values as quoted literals, not parameters).
                await connection.execute(f"BEGIN {mode}; SELECT {configs}")
                try:
                    yield connection
                except BaseException:
                    with contextlib.suppress(Exception):  # a broken connection is discarded by the pool
                        await connection.execute("ROLLBACK")
                    raise
                if readonly:
                    # What was read is final once the statements answered, and a read-only transaction has
                    # nothing to make durable: it ends after the caller went on (one round trip less on
                    # every read's path, recall's included). The pool gets the connection back then.
                    self._end_later(connection)
                    ending_later = True
                else:
                    await connection.execute("COMMIT")
            finally:
                if not ending_later:
                    await self.pool.release(connection)

    @contextlib.asynccontextmanager
    async def statements(
        self, user_id: str, *, settings: dict[str, str] | None = None
    ) -> AsyncIterator[Connection]:
        """A connection outside any transaction, for statements each whole on its own (each commits as it
        answers, or fails alone), whose session's row-level-security user is `user_id`, with `settings`
        too. Nothing is sent when the connection was left so; else one round trip. Settings stay with the
        session for its next users, so they may only tune what names them each time (the vector scans'
        `hnsw.*`). Work that needs two statements to agree, or to fail together, takes a `transaction`."""
        wanted: dict[str, str] = {"athena.user_id": user_id, **(settings or {})}
        async with postgres.translated():
            connection = await self.pool.acquire(timeout=self._acquire_timeout)
            try:
                session: dict[str, str] | None = getattr(connection, "session_settings", None)
                if session is None:  # a pool without `SessionConnection`: scoped every time
                    session = {}
                changed = {name: value for name, value in wanted.items() if session.get(name) != value}
                if changed:
                    known = session | changed
                    session.clear()  # unknown until the statement answered
                    await connection.execute(_session_configs(len(changed)), *_pairs(changed))
                    session.update(known)
                yield connection
            finally:
                await self.pool.release(connection)

    def _end_later(self, connection: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._end(connection), context=contextvars.Context())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end(self, connection: Connection) -> None:
        # A connection that broke meanwhile is discarded by the pool's release (which may then raise).
        with contextlib.suppress(Exception):
            await connection.execute("COMMIT")
        with contextlib.suppress(Exception):
            await self.pool.release(connection)

    async def ping(self, within: float = 1.0) -> bool:
        """Whether a `SELECT 1` answers within `within` seconds (the readiness check)."""
        return await postgres.ping(self.pool, within=within)
