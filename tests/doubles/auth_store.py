"""`MemoryAuthStore`: the auth service's `AuthStore` in a dict, for unit tests of the session domain."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

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


@dataclass
class _Family:
    user_id: str
    created_at: datetime
    revoked_at: datetime | None = None
    revoked_reason: str | None = None


@dataclass
class _Data:
    users: dict[str, UserRecord] = field(default_factory=dict)
    identities: dict[tuple[str, str], str] = field(default_factory=dict)
    families: dict[str, _Family] = field(default_factory=dict)
    tokens: dict[bytes, RefreshTokenRecord] = field(default_factory=dict)
    states: dict[bytes, LoginState] = field(default_factory=dict)


class MemoryAuthStore:
    """An `AuthStore` in a dict, serialising transactions; a failed transaction leaves no trace."""

    def __init__(self) -> None:
        self.data = _Data()
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AuthTransaction]:
        async with self._lock:
            working = copy.deepcopy(self.data)
            yield _MemoryTransaction(working)
            self.data = working

    def transaction(self) -> AbstractAsyncContextManager[AuthTransaction]:
        return self._transaction()


class _MemoryTransaction:
    def __init__(self, data: _Data) -> None:
        self._data = data

    async def user(self, user_id: str) -> UserRecord | None:
        return self._data.users.get(user_id)

    async def user_by_identity(self, provider: str, subject: str) -> UserRecord | None:
        user_id = self._data.identities.get((provider, subject))
        return self._data.users.get(user_id) if user_id else None

    async def user_by_email(self, email: str) -> UserRecord | None:
        return next((user for user in self._data.users.values() if user.email == email), None)

    async def create_user(self, email: str, display_name: str, now: datetime) -> UserRecord:
        if await self.user_by_email(email) is not None:
            raise StoreConflict("email taken")
        user = UserRecord(id=str(uuid.uuid4()), email=email, display_name=display_name, created_at=now)
        self._data.users[user.id] = user
        return user

    async def update_profile(self, user_id: str, email: str, display_name: str, now: datetime) -> UserRecord:
        user = self._data.users[user_id]
        holder = await self.user_by_email(email)
        if holder is None or holder.id == user_id:
            user = replace(user, email=email)
        user = replace(user, display_name=display_name)
        self._data.users[user_id] = user
        return user

    async def link_identity(self, user_id: str, provider: str, subject: str, now: datetime) -> None:
        if (provider, subject) in self._data.identities:
            raise StoreConflict("identity linked already")
        self._data.identities[(provider, subject)] = user_id

    async def export(self, user_id: str) -> AccountExport | None:
        user = self._data.users.get(user_id)
        if user is None:
            return None
        tokens = Counter(record.family_id for record in self._data.tokens.values())
        return AccountExport(
            user=user,
            updated_at=user.created_at,
            identities=tuple(
                IdentityRecord(provider, subject, user.created_at)  # the double keeps no link time
                for (provider, subject), owner in self._data.identities.items()
                if owner == user_id
            ),
            sessions=tuple(
                SessionRecord(
                    family_id, family.created_at, family.revoked_at, family.revoked_reason, tokens[family_id]
                )
                for family_id, family in sorted(
                    self._data.families.items(), key=lambda item: item[1].created_at, reverse=True
                )
                if family.user_id == user_id
            ),
        )

    async def delete_user(self, user_id: str) -> ErasedAccount:
        data = self._data
        before = (len(data.identities), len(data.families), len(data.tokens))
        accounts = 0 if data.users.pop(user_id, None) is None else 1
        data.identities = {key: value for key, value in data.identities.items() if value != user_id}
        data.families = {key: value for key, value in data.families.items() if value.user_id != user_id}
        data.tokens = {key: value for key, value in data.tokens.items() if value.user_id != user_id}
        after = (len(data.identities), len(data.families), len(data.tokens))
        identities, sessions, refresh_tokens = (was - now for was, now in zip(before, after, strict=True))
        return ErasedAccount(
            accounts=accounts,
            identities=identities,
            sessions=sessions,
            refresh_tokens=refresh_tokens,
            data_keys=accounts,  # the double keeps nothing sealed; a user stands for their key
        )

    async def create_family(self, family_id: str, user_id: str, now: datetime) -> None:
        self._data.families[family_id] = _Family(user_id=user_id, created_at=now)

    async def insert_refresh_token(self, record: RefreshTokenRecord) -> None:
        self._data.tokens[record.token_hash] = replace(record, family_revoked_at=None)

    async def lock_refresh_token(self, token_hash: bytes) -> RefreshTokenRecord | None:
        record = self._data.tokens.get(token_hash)
        if record is None:
            return None
        return replace(record, family_revoked_at=self._data.families[record.family_id].revoked_at)

    async def mark_refresh_token_used(self, token_id: str, now: datetime) -> None:
        for token_hash, record in self._data.tokens.items():
            if record.id == token_id:
                self._data.tokens[token_hash] = replace(record, used_at=now)

    async def revoke_family(self, family_id: str, now: datetime, reason: str) -> bool:
        family = self._data.families.get(family_id)
        if family is None or family.revoked_at is not None:
            return False
        family.revoked_at, family.revoked_reason = now, reason
        return True

    async def revoke_user_families(self, user_id: str, now: datetime, reason: str) -> int:
        live = 0
        for family_id, family in self._data.families.items():
            if family.user_id != user_id or family.revoked_at is not None:
                continue
            family.revoked_at, family.revoked_reason = now, reason
            live += any(
                token.family_id == family_id and token.used_at is None and token.expires_at > now
                for token in self._data.tokens.values()
            )
        return live

    async def save_login_state(self, state: LoginState) -> None:
        self._data.states[state.state_hash] = state

    async def take_login_state(self, state_hash: bytes) -> LoginState | None:
        return self._data.states.pop(state_hash, None)

    async def purge_expired(self, now: datetime) -> None:
        self._data.states = {key: value for key, value in self._data.states.items() if value.expires_at > now}
        self._data.tokens = {key: value for key, value in self._data.tokens.items() if value.expires_at > now}
