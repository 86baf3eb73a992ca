"""`AuthStore` over asyncpg: the `auth` schema of the shared PostgreSQL database.

Driver errors are translated here, once: unique violations become `StoreConflict` (the domain retries),
lost connections and an unreachable server become `mesh.errors.Unavailable` (`mesh.postgres`).

E-mail addresses, display names and provider subjects are stored sealed with the user's data key and
looked up by blind index (`auth.privacy`); the domain sees them in clear. A user's data key is made with
the user and destroyed first when the user is deleted (crypto-shredding). A stored value that does not
open is `mesh.errors.DataLoss`, logged as an integrity error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from auth.privacy import IDENTITIES, INDEX_OWNER, USERS, email_token, identity_row, identity_token
from auth.store import (
    AccountExport,
    AuthTransaction,
    ErasedAccount,
    IdentityRecord,
    LoginState,
    RefreshTokenRecord,
    SessionRecord,
    StoreConflict,
    UserRecord,
)
from mesh import postgres
from mesh.envelope import Cipher, DataKeys, NoDataKey

log = logging.getLogger(__name__)


class PostgresAuthStore:
    def __init__(self, pool: postgres.Pool, keys: DataKeys) -> None:
        """`keys` must read `auth.data_keys` through a pool of its own: a transaction of `pool` may need a
        key it has not cached yet, and must not wait for a connection that only its peers can release."""
        self._pool = pool
        self._keys = keys

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AuthTransaction]:
        try:
            async with (
                postgres.translated("the auth database"),
                self._pool.acquire() as connection,
                connection.transaction(),
            ):
                yield _PostgresTransaction(connection, self._keys)
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(str(exc.constraint_name)) from exc

    def transaction(self) -> AbstractAsyncContextManager[AuthTransaction]:
        return self._transaction()

    async def ping(self) -> bool:
        """Whether the database answers within a second (the readiness check)."""
        return await postgres.ping(self._pool, within=1.0)


def _user(cipher: Cipher, row: Any) -> UserRecord:
    user_id = str(row["id"])
    return UserRecord(
        id=user_id,
        email=cipher.open_text(USERS, "email", user_id, row["email"]),
        display_name=cipher.open_text(USERS, "display_name", user_id, row["display_name"]),
        created_at=row["created_at"],
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
    def __init__(self, connection: PoolConnectionProxy[Any], keys: DataKeys) -> None:
        self._db = connection
        self._keys = keys

    async def _index(self) -> Cipher:
        """The service-wide key of the blind indexes, made on first use."""
        return await self._keys.create(INDEX_OWNER)

    async def _opened(self, row: Any) -> UserRecord | None:
        """The user of `row` in clear; None when their data key is gone: an erasure that stopped after
        shredding the key, whose rows this deletes when the transaction commits (nothing of the account
        can be read any more, and its address would otherwise stay taken)."""
        try:
            cipher = await self._keys.cipher(str(row["id"]))
        except NoDataKey:
            log.warning(
                "finishing the erasure of a user whose data key is gone", extra={"user_id": str(row["id"])}
            )
            await self._db.execute("DELETE FROM auth.users WHERE id = $1", row["id"])
            return None
        return _user(cipher, row)

    async def user(self, user_id: str) -> UserRecord | None:
        key = _user_id(user_id)
        if key is None:
            return None
        row = await self._db.fetchrow(
            "SELECT u.id, u.email, u.display_name, u.created_at FROM auth.users u WHERE u.id = $1", key
        )
        return await self._opened(row) if row else None

    async def user_by_identity(self, provider: str, subject: str) -> UserRecord | None:
        row = await self._db.fetchrow(
            "SELECT u.id, u.email, u.display_name, u.created_at "
            "FROM auth.identities i JOIN auth.users u ON u.id = i.user_id "
            "WHERE i.provider = $1 AND i.subject_index = $2 FOR UPDATE OF u",
            provider,
            identity_token(await self._index(), provider, subject),
        )
        return await self._opened(row) if row else None

    async def user_by_email(self, email: str) -> UserRecord | None:
        row = await self._db.fetchrow(
            "SELECT u.id, u.email, u.display_name, u.created_at FROM auth.users u "
            "WHERE u.email_index = $1 FOR UPDATE",
            email_token(await self._index(), email),
        )
        return await self._opened(row) if row else None

    async def create_user(self, email: str, display_name: str, now: datetime) -> UserRecord:
        user_id = uuid.uuid4()
        # The key is made (and committed) first; if this transaction fails, `purge_expired` deletes it.
        cipher = await self._keys.create(str(user_id))
        row = await self._db.fetchrow(
            "INSERT INTO auth.users AS u (id, email, email_index, display_name, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $5) RETURNING u.id, u.email, u.display_name, u.created_at",
            user_id,
            cipher.seal(USERS, "email", user_id, email),
            email_token(await self._index(), email),
            cipher.seal(USERS, "display_name", user_id, display_name),
            now,
        )
        return _user(cipher, row)

    async def update_profile(self, user_id: str, email: str, display_name: str, now: datetime) -> UserRecord:
        key = uuid.UUID(user_id)
        cipher = await self._keys.cipher(user_id)
        row = await self._db.fetchrow(
            "UPDATE auth.users AS u SET display_name = $3, updated_at = $4, "
            "email = CASE WHEN other.taken THEN u.email ELSE $2 END, "
            "email_index = CASE WHEN other.taken THEN u.email_index ELSE $5 END "
            "FROM (SELECT EXISTS (SELECT 1 FROM auth.users o WHERE o.email_index = $5 AND o.id <> $1)"
            " AS taken) other "
            "WHERE u.id = $1 RETURNING u.id, u.email, u.display_name, u.created_at",
            key,
            cipher.seal(USERS, "email", key, email),
            cipher.seal(USERS, "display_name", key, display_name),
            now,
            email_token(await self._index(), email),
        )
        return _user(cipher, row)

    async def link_identity(self, user_id: str, provider: str, subject: str, now: datetime) -> None:
        cipher = await self._keys.cipher(user_id)
        subject_index = identity_token(await self._index(), provider, subject)
        await self._db.execute(
            "INSERT INTO auth.identities (provider, subject_index, subject, user_id, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            provider,
            subject_index,
            cipher.seal(IDENTITIES, "subject", identity_row(provider, subject_index), subject),
            uuid.UUID(user_id),
            now,
        )

    async def export(self, user_id: str) -> AccountExport | None:
        key = _user_id(user_id)
        if key is None:
            return None
        row = await self._db.fetchrow(
            "SELECT id, email, display_name, created_at, updated_at FROM auth.users WHERE id = $1", key
        )
        user = await self._opened(row) if row else None
        if row is None or user is None:
            return None
        cipher = await self._keys.cipher(user_id)
        identities = await self._db.fetch(
            "SELECT provider, subject_index, subject, created_at FROM auth.identities WHERE user_id = $1 "
            "ORDER BY created_at, provider",
            key,
        )
        sessions = await self._db.fetch(
            "SELECT s.id, s.created_at, s.revoked_at, s.revoked_reason, "
            "(SELECT count(*) FROM auth.refresh_tokens t WHERE t.family_id = s.id) AS refresh_tokens "
            "FROM auth.sessions s WHERE s.user_id = $1 ORDER BY s.created_at DESC, s.id",
            key,
        )
        return AccountExport(
            user=user,
            updated_at=row["updated_at"],
            identities=tuple(
                IdentityRecord(
                    provider=identity["provider"],
                    subject=cipher.open_text(
                        IDENTITIES,
                        "subject",
                        identity_row(identity["provider"], bytes(identity["subject_index"])),
                        identity["subject"],
                    ),
                    created_at=identity["created_at"],
                )
                for identity in identities
            ),
            sessions=tuple(
                SessionRecord(
                    id=str(session["id"]),
                    created_at=session["created_at"],
                    revoked_at=session["revoked_at"],
                    revoked_reason=session["revoked_reason"],
                    refresh_tokens=int(session["refresh_tokens"]),
                )
                for session in sessions
            ),
        )

    async def delete_user(self, user_id: str) -> ErasedAccount:
        key = _user_id(user_id)
        if key is None:
            return ErasedAccount()
        # Crypto-shredding first, committed on its own: from here a copy of the user's rows (a replica, a
        # dump of the tables) does not open, even should deleting them below fail (`_opened` finishes it).
        data_keys = await self._keys.destroy(user_id)
        # Then what hangs off the user, each counted (deleting the user alone would cascade to it all).
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
            data_keys=int(data_keys),
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
        # Data keys made for a user whose creation then failed (a sign-in racing another): nobody's.
        await self._db.execute(
            "DELETE FROM auth.data_keys k WHERE k.created_at <= $1::timestamptz - interval '1 day' "
            "AND k.owner NOT LIKE 'service:%' "
            "AND NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id::text = k.owner)",
            now,
        )
