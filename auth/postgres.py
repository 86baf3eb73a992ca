"""`AuthStore` over asyncpg: the `auth` schema of the shared PostgreSQL database.

Driver errors are translated here, once: unique violations become `StoreConflict` (the domain retries),
lost connections and an unreachable server become `mesh.errors.Unavailable` (`mesh.postgres`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from auth.store import (
    AuthTransaction,
    ErasedAccount,
    LoginState,
    RefreshTokenRecord,
    StoreConflict,
    UserRecord,
)
from mesh import postgres


class PostgresAuthStore:
    def __init__(self, pool: postgres.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AuthTransaction]:
        try:
            async with (
                postgres.translated("the auth database"),
                self._pool.acquire() as connection,
                connection.transaction(),
            ):
                yield _PostgresTransaction(connection)
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(str(exc.constraint_name)) from exc

    def transaction(self) -> AbstractAsyncContextManager[AuthTransaction]:
        return self._transaction()

    async def ping(self) -> bool:
        """Whether the database answers within a second (the readiness check)."""
        return await postgres.ping(self._pool, within=1.0)


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=str(row["id"]), email=row["email"], display_name=row["display_name"], created_at=row["created_at"]
    )


def _token(row: Any) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        id=str(row["id"]),
        family_id=str(row["family_id"]),
        user_id=str(row["user_id"]),
        token_hash=bytes(row["token_hash"]),
        parent_id=str(row["parent_id"]) if row["parent_id"] is not None else None,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        family_revoked_at=row["family_revoked_at"],
    )


def _deleted(status: str) -> int:
    """The row count of a DELETE's command status ("DELETE 3")."""
    return int(status.rsplit(" ", 1)[-1])


def _user_id(value: str) -> uuid.UUID | None:
    """A user id from a token's `sub`; anything that is not a UUID names no user of ours."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class _PostgresTransaction:
    def __init__(self, connection: PoolConnectionProxy[Any]) -> None:
        self._db = connection

    async def user(self, user_id: str) -> UserRecord | None:
        key = _user_id(user_id)
        if key is None:
            return None
        row = await self._db.fetchrow(
            "SELECT u.id, u.email, u.display_name, u.created_at FROM auth.users u WHERE u.id = $1", key
        )
        return _user(row) if row else None

    async def user_by_identity(self, provider: str, subject: str) -> UserRecord | None:
        row = await self._db.fetchrow(
            "SELECT u.id, u.email, u.display_name, u.created_at "
            "FROM auth.identities i JOIN auth.users u ON u.id = i.user_id "
            "WHERE i.provider = $1 AND i.subject = $2 FOR UPDATE OF u",
            provider,
            subject,
        )
        return _user(row) if row else None

    async def user_by_email(self, email: str) -> UserRecord | None:
        row = await self._db.fetchrow(
            "SELECT u.id, u.email, u.display_name, u.created_at FROM auth.users u "
            "WHERE u.email = $1 FOR UPDATE",
            email,
        )
        return _user(row) if row else None

    async def create_user(self, email: str, display_name: str, now: datetime) -> UserRecord:
        row = await self._db.fetchrow(
            "INSERT INTO auth.users AS u (id, email, display_name, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $4) RETURNING u.id, u.email, u.display_name, u.created_at",
            uuid.uuid4(),
            email,
            display_name,
            now,
        )
        return _user(row)

    async def update_profile(self, user_id: str, email: str, display_name: str, now: datetime) -> UserRecord:
        row = await self._db.fetchrow(
            "UPDATE auth.users AS u SET display_name = $3, updated_at = $4, "
            "email = CASE WHEN EXISTS (SELECT 1 FROM auth.users o WHERE o.email = $2 AND o.id <> $1) "
            "THEN u.email ELSE $2 END "
            "WHERE u.id = $1 RETURNING u.id, u.email, u.display_name, u.created_at",
            uuid.UUID(user_id),
            email,
            display_name,
            now,
        )
        return _user(row)

    async def link_identity(self, user_id: str, provider: str, subject: str, now: datetime) -> None:
        await self._db.execute(
            "INSERT INTO auth.identities (provider, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
            provider,
            subject,
            uuid.UUID(user_id),
            now,
        )

    async def delete_user(self, user_id: str) -> ErasedAccount:
        key = _user_id(user_id)
        if key is None:
            return ErasedAccount()
        # What hangs off the user first, each counted (deleting the user alone would cascade to it all).
        db = self._db
        refresh_tokens = await db.execute("DELETE FROM auth.refresh_tokens WHERE user_id = $1", key)
        sessions = await db.execute("DELETE FROM auth.sessions WHERE user_id = $1", key)
        identities = await db.execute("DELETE FROM auth.identities WHERE user_id = $1", key)
        accounts = await db.execute("DELETE FROM auth.users WHERE id = $1", key)
        return ErasedAccount(
            accounts=_deleted(accounts),
            identities=_deleted(identities),
            sessions=_deleted(sessions),
            refresh_tokens=_deleted(refresh_tokens),
        )

    async def create_family(self, family_id: str, user_id: str, now: datetime) -> None:
        await self._db.execute(
            "INSERT INTO auth.sessions (id, user_id, created_at) VALUES ($1, $2, $3)",
            uuid.UUID(family_id),
            uuid.UUID(user_id),
            now,
        )

    async def insert_refresh_token(self, record: RefreshTokenRecord) -> None:
        await self._db.execute(
            "INSERT INTO auth.refresh_tokens "
            "(id, family_id, user_id, token_hash, parent_id, created_at, expires_at, used_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            uuid.UUID(record.id),
            uuid.UUID(record.family_id),
            uuid.UUID(record.user_id),
            record.token_hash,
            uuid.UUID(record.parent_id) if record.parent_id else None,
            record.created_at,
            record.expires_at,
            record.used_at,
        )

    async def lock_refresh_token(self, token_hash: bytes) -> RefreshTokenRecord | None:
        # Locks the token and its family: concurrent refreshes of it, and revocations, queue here.
        row = await self._db.fetchrow(
            "SELECT t.id, t.family_id, t.user_id, t.token_hash, t.parent_id, t.created_at, t.expires_at, "
            "t.used_at, s.revoked_at AS family_revoked_at "
            "FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.family_id "
            "WHERE t.token_hash = $1 FOR UPDATE",
            token_hash,
        )
        return _token(row) if row else None

    async def mark_refresh_token_used(self, token_id: str, now: datetime) -> None:
        await self._db.execute(
            "UPDATE auth.refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
            uuid.UUID(token_id),
            now,
        )

    async def revoke_family(self, family_id: str, now: datetime, reason: str) -> bool:
        result = await self._db.execute(
            "UPDATE auth.sessions SET revoked_at = $2, revoked_reason = $3 "
            "WHERE id = $1 AND revoked_at IS NULL",
            uuid.UUID(family_id),
            now,
            reason,
        )
        return bool(result == "UPDATE 1")

    async def revoke_user_families(self, user_id: str, now: datetime, reason: str) -> int:
        key = _user_id(user_id)
        if key is None:
            return 0
        count = await self._db.fetchval(
            "WITH revoked AS ("
            "  UPDATE auth.sessions SET revoked_at = $2, revoked_reason = $3"
            "  WHERE user_id = $1 AND revoked_at IS NULL RETURNING id"
            ") SELECT count(*) FROM revoked r WHERE EXISTS ("
            "  SELECT 1 FROM auth.refresh_tokens t"
            "  WHERE t.family_id = r.id AND t.used_at IS NULL AND t.expires_at > $2)",
            key,
            now,
            reason,
        )
        return int(count)

    async def save_login_state(self, state: LoginState) -> None:
        await self._db.execute(
            "INSERT INTO auth.login_states "
            "(state_hash, provider, redirect_uri, nonce, code_verifier, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            state.state_hash,
            state.provider,
            state.redirect_uri,
            state.nonce,
            state.code_verifier,
            state.created_at,
            state.expires_at,
        )

    async def take_login_state(self, state_hash: bytes) -> LoginState | None:
        row = await self._db.fetchrow(
            "DELETE FROM auth.login_states WHERE state_hash = $1 "
            "RETURNING state_hash, provider, redirect_uri, nonce, code_verifier, created_at, expires_at",
            state_hash,
        )
        if row is None:
            return None
        return LoginState(
            state_hash=bytes(row["state_hash"]),
            provider=row["provider"],
            redirect_uri=row["redirect_uri"],
            nonce=row["nonce"],
            code_verifier=row["code_verifier"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )

    async def purge_expired(self, now: datetime) -> None:
        await self._db.execute("DELETE FROM auth.login_states WHERE expires_at <= $1", now)
        await self._db.execute("DELETE FROM auth.refresh_tokens WHERE expires_at <= $1", now)
        # Families left without tokens are sessions nobody can resume; a day's margin keeps recent ones.
        await self._db.execute(
            "DELETE FROM auth.sessions s WHERE s.created_at <= $1::timestamptz - interval '1 day' "
            "AND NOT EXISTS (SELECT 1 FROM auth.refresh_tokens t WHERE t.family_id = s.id)",
            now,
        )
