"""The asyncpg pool, per-user transactions, and the translation of driver failures.

Every transaction that touches user data first runs `set_config('athena.user_id', <user>, true)` with the
verified caller's id, so PostgreSQL's row-level security scopes it even if a query forgot its own
`WHERE user_id = ...`. Connection-level failures (server down, restarting, pool exhausted, timeouts)
become `mesh.errors.Unavailable` here, once, at the boundary; the pool replaces broken connections, so
calls succeed again as soon as PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, TypeAlias

import asyncpg
from pgvector.asyncpg import register_vector

from mesh.errors import Unavailable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
_Isolation = Literal["read_committed", "repeatable_read"]

_UNAVAILABLE: tuple[type[BaseException], ...] = (
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
_NOT_READY: tuple[type[BaseException], ...] = (*_UNAVAILABLE, asyncpg.exceptions.InterfaceError)


async def _init_connection(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    await register_vector(connection)
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def open_pool(
    database_url: str, *, min_size: int, max_size: int, connect_timeout: float, command_timeout: float
) -> Pool:
    """A pool whose connections know the `vector` and `jsonb` types."""
    try:
        pool = await asyncpg.create_pool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            max_inactive_connection_lifetime=60.0,
        )
    except _UNAVAILABLE as exc:
        raise Unavailable("the database is unavailable") from exc
    return pool


class Database:
    """Transactions on the pool, each scoped to one user (or to no user, for the global catalog)."""

    def __init__(self, pool: Pool, *, acquire_timeout: float = 2.0) -> None:
        self.pool = pool
        self._acquire_timeout = acquire_timeout

    @contextlib.asynccontextmanager
    async def transaction(
        self, user_id: str | None, *, readonly: bool = False, settings: dict[str, str] | None = None
    ) -> AsyncIterator[Connection]:
        """A connection inside a transaction whose row-level-security user is `user_id` (None: no user,
        so user-data tables show no rows). `settings` are further `set_config(..., true)` pairs."""
        try:
            async with self.pool.acquire(timeout=self._acquire_timeout) as connection:
                isolation: _Isolation = "repeatable_read" if readonly else "read_committed"
                async with connection.transaction(isolation=isolation, readonly=readonly):
                    pairs: dict[str, str] = {"athena.user_id": user_id or "", **(settings or {})}
                    await connection.execute(
                        "SELECT set_config(name, value, true)"
                        " FROM unnest($1::text[], $2::text[]) AS s(name, value)",
                        list(pairs),
                        list(pairs.values()),
                    )
                    yield connection
        except _UNAVAILABLE as exc:
            raise Unavailable("the database is unavailable") from exc

    async def ping(self, within: float = 1.0) -> bool:
        """Whether a `SELECT 1` answers within `within` seconds (the readiness check)."""
        try:
            async with asyncio.timeout(within), self.pool.acquire(timeout=within) as connection:
                await connection.fetchval("SELECT 1", timeout=within)
        except _NOT_READY as exc:
            log.warning("database not ready: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5.0)
        except TimeoutError:
            self.pool.terminate()
