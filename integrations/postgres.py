"""`ConnectionStore` on PostgreSQL (schema `integrations`, integrations/migrations/).

Every query names the person (`WHERE user_id = $1`). What the providers gave us (tokens, the account's
address) and the PKCE verifiers are sealed with the person's data key (`mesh.envelope`), bound to table,
column and row: a database dump shows neither tokens nor addresses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from integrations.connections import Connection, PendingConnection, Purged, Status
from integrations.oauth import Grant
from integrations.providers import Capability, Provider
from mesh import postgres
from mesh.envelope import Cipher, DataKeys

_CONNECTION_COLUMNS = (
    "id, user_id, provider, capabilities, status, status_message, grant_sealed, connected_at, last_used_at"
)


def _capabilities(values: list[str]) -> frozenset[Capability]:
    return frozenset(Capability(value) for value in values)


def _stored(capabilities: frozenset[Capability]) -> list[str]:
    return [c.value for c in Capability if c in capabilities]


class PostgresConnectionStore:
    def __init__(self, pool: postgres.Pool, keys: DataKeys) -> None:
        self._pool = pool
        self._keys = keys

    async def ping(self, within: float = 1.0) -> bool:
        return await postgres.ping(self._pool, within=within)

    def _connection(self, cipher: Cipher, row: asyncpg.Record) -> Connection:
        grant = Grant.from_json(cipher.open_text("connections", "grant", row["id"], row["grant_sealed"]))
        return Connection(
            id=str(row["id"]),
            user_id=str(row["user_id"]),
            provider=Provider(row["provider"]),
            capabilities=_capabilities(row["capabilities"]),
            status=Status(row["status"]),
            status_message=row["status_message"],
            grant=grant,
            connected_at=row["connected_at"],
            last_used_at=row["last_used_at"],
        )

    async def add_pending(self, pending: PendingConnection) -> None:
        cipher = await self._keys.create(pending.user_id)
        async with postgres.translated():
            await self._pool.execute(
                """INSERT INTO integrations.pending_connections
                       (state_hash, user_id, provider, capabilities, redirect_uri, code_verifier, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                pending.state_hash,
                uuid.UUID(pending.user_id),
                pending.provider.value,
                _stored(pending.capabilities),
                pending.redirect_uri,
                cipher.seal(
                    "pending_connections", "code_verifier", pending.state_hash.hex(), pending.code_verifier
                ),
                pending.expires_at,
            )

    async def take_pending(self, user_id: str, state_hash: bytes) -> PendingConnection | None:
        async with postgres.translated():
            row = await self._pool.fetchrow(
                """DELETE FROM integrations.pending_connections WHERE state_hash = $1 AND user_id = $2
                   RETURNING provider, capabilities, redirect_uri, code_verifier, expires_at""",
                state_hash,
                uuid.UUID(user_id),
            )
        cipher = await self._keys.existing(user_id) if row is not None else None
        if row is None or cipher is None:
            return None
        return PendingConnection(
            state_hash=state_hash,
            user_id=user_id,
            provider=Provider(row["provider"]),
            capabilities=_capabilities(row["capabilities"]),
            redirect_uri=row["redirect_uri"],
            code_verifier=cipher.open_text(
                "pending_connections", "code_verifier", state_hash.hex(), row["code_verifier"]
            ),
            expires_at=row["expires_at"],
        )

    async def get(self, user_id: str, provider: Provider) -> Connection | None:
        cipher = await self._keys.existing(user_id)
        if cipher is None:
            return None
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"""SELECT {_CONNECTION_COLUMNS} FROM integrations.connections
                    WHERE user_id = $1 AND provider = $2""",  # noqa: S608 (a constant column list)
                uuid.UUID(user_id),
                provider.value,
            )
        return self._connection(cipher, row) if row is not None else None

    async def list(self, user_id: str) -> list[Connection]:
        cipher = await self._keys.existing(user_id)
        if cipher is None:
            return []
        async with postgres.translated():
            rows = await self._pool.fetch(
                f"""SELECT {_CONNECTION_COLUMNS} FROM integrations.connections
                    WHERE user_id = $1 ORDER BY provider""",  # noqa: S608 (a constant column list)
                uuid.UUID(user_id),
            )
        return [self._connection(cipher, row) for row in rows]

    async def save(self, connection: Connection) -> Connection:
        cipher = await self._keys.create(connection.user_id)
        connection_id = uuid.UUID(connection.id)
        async with postgres.translated():
            row = await self._pool.fetchrow(
                f"""INSERT INTO integrations.connections
                        (id, user_id, provider, capabilities, status, status_message, grant_sealed,
                         access_expires_at, connected_at, last_used_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                    ON CONFLICT (user_id, provider) DO UPDATE
                    SET capabilities = EXCLUDED.capabilities, status = EXCLUDED.status,
                        status_message = EXCLUDED.status_message, grant_sealed = EXCLUDED.grant_sealed,
                        access_expires_at = EXCLUDED.access_expires_at, last_used_at = EXCLUDED.last_used_at,
                        updated_at = now()
                    WHERE connections.id = EXCLUDED.id
                    RETURNING {_CONNECTION_COLUMNS}""",  # noqa: S608 (a constant column list)
                connection_id,
                uuid.UUID(connection.user_id),
                connection.provider.value,
                _stored(connection.capabilities),
                connection.status.value,
                connection.status_message,
                cipher.seal("connections", "grant", connection_id, connection.grant.to_json()),
                datetime.fromtimestamp(connection.grant.expires_at, UTC),
                connection.connected_at,
                connection.last_used_at,
            )
        if row is None:  # another connection to the provider replaced this one meanwhile
            stored = await self.get(connection.user_id, connection.provider)
            assert stored is not None
            return stored
        return self._connection(cipher, row)

    async def delete(self, user_id: str, provider: Provider) -> bool:
        async with postgres.translated():
            deleted = await self._pool.fetchval(
                "DELETE FROM integrations.connections WHERE user_id = $1 AND provider = $2 RETURNING true",
                uuid.UUID(user_id),
                provider.value,
            )
        return bool(deleted)

    async def touch(self, user_id: str, provider: Provider, when: datetime) -> None:
        async with postgres.translated():
            await self._pool.execute(
                """UPDATE integrations.connections SET last_used_at = $3
                   WHERE user_id = $1 AND provider = $2""",
                uuid.UUID(user_id),
                provider.value,
                when,
            )

    async def purge_pending(self, now: datetime) -> int:
        async with postgres.translated():
            status = await self._pool.execute(
                "DELETE FROM integrations.pending_connections WHERE expires_at <= $1", now
            )
        return int(status.split()[-1])

    async def purge_user(self, user_id: str) -> Purged:
        uid = uuid.UUID(user_id)
        async with postgres.translated(), self._pool.acquire() as connection, connection.transaction():
            connections = await connection.execute(
                "DELETE FROM integrations.connections WHERE user_id = $1", uid
            )
            pending = await connection.execute(
                "DELETE FROM integrations.pending_connections WHERE user_id = $1", uid
            )
            # Stopped at the providers by the subscriptions hook first; whatever it could not stop goes too.
            subscriptions = await connection.execute(
                "DELETE FROM integrations.subscriptions WHERE user_id = $1", uid
            )
        destroyed = await self._keys.destroy(user_id)
        rows = sum(int(status.split()[-1]) for status in (connections, pending, subscriptions))
        return Purged(rows=rows, data_key=destroyed)
