"""What the auth domain stores, behind a small protocol: users and identities, session families and their
refresh tokens (hashes only), and pending OIDC logins.

`AuthStore.transaction()` is the unit of work: everything done through one `AuthTransaction` commits
together or not at all, and `lock_refresh_token` holds the token until the end of the transaction, so
two refreshes of one token are decided one after the other. `auth.postgres.PostgresAuthStore` is the
implementation; tests also use the in-process `tests/doubles/auth_store.py`, held to the same contract.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StoreConflict(Exception):
    """A uniqueness rule was hit by a concurrent writer; retrying the transaction resolves it."""


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True)
class IdentityRecord:
    """A sign-in identity at a provider, opened for its owner."""

    provider: str
    subject: str
    created_at: datetime


@dataclass(frozen=True)
class SessionRecord:
    """A session family as its owner may see it: no token, no hash."""

    id: str
    created_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    refresh_tokens: int


@dataclass(frozen=True)
class AccountExport:
    """Everything auth holds about a user, opened for them (`ExportIdentity`)."""

    user: UserRecord
    updated_at: datetime
    identities: tuple[IdentityRecord, ...]
    sessions: tuple[SessionRecord, ...]


@dataclass(frozen=True)
class RefreshTokenRecord:
    """One refresh token of a session family. The token itself is never stored, only its SHA-256."""

    id: str
    family_id: str
    user_id: str
    token_hash: bytes
    parent_id: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    family_revoked_at: datetime | None = None
    """When the token's family (the session) was revoked; read from the family, never written here."""


@dataclass(frozen=True)
class ErasedAccount:
    """What deleting a user removed from the auth schema: rows, by kind."""

    accounts: int = 0
    """1 when the user existed, 0 when there was none (already erased)."""
    identities: int = 0
    sessions: int = 0
    """Session families, revoked ones included."""
    refresh_tokens: int = 0
    """Refresh-token hashes, spent ones included."""
    data_keys: int = 0
    """1 when the user's data key (sealing their address, name and provider subjects) was destroyed."""

    def counts(self) -> dict[str, int]:
        """By the categories of an erasure receipt."""
        return {
            "account": self.accounts,
            "identities": self.identities,
            "sessions": self.sessions,
            "refresh_tokens": self.refresh_tokens,
            "data_keys": self.data_keys,
        }


@dataclass(frozen=True)
class LoginState:
    """A login between BeginLogin and CompleteLogin, keyed by the SHA-256 of its `state`."""

    state_hash: bytes
    provider: str
    redirect_uri: str
    nonce: str
    code_verifier: str
    created_at: datetime
    expires_at: datetime


class AuthTransaction(Protocol):
    async def user(self, user_id: str) -> UserRecord | None: ...

    async def user_by_identity(self, provider: str, subject: str) -> UserRecord | None: ...

    async def user_by_email(self, email: str) -> UserRecord | None: ...

    async def create_user(self, email: str, display_name: str, now: datetime) -> UserRecord:
        """Raises `StoreConflict` when the email is taken."""
        ...

    async def update_profile(self, user_id: str, email: str, display_name: str, now: datetime) -> UserRecord:
        """Updates the display name, and the email unless another user has it (then it stays)."""
        ...

    async def link_identity(self, user_id: str, provider: str, subject: str, now: datetime) -> None:
        """Raises `StoreConflict` when (provider, subject) is linked already."""
        ...

    async def export(self, user_id: str) -> AccountExport | None:
        """The user's account, identities and sessions; None when there is no such user."""
        ...

    async def delete_user(self, user_id: str) -> ErasedAccount:
        """Destroys the user's data key, then deletes the user with its identities, families and tokens;
        counts what went (all zero when there was no such user)."""
        ...

    async def create_family(self, family_id: str, user_id: str, now: datetime) -> None: ...

    async def insert_refresh_token(self, record: RefreshTokenRecord) -> None: ...

    async def lock_refresh_token(self, token_hash: bytes) -> RefreshTokenRecord | None: ...

    async def mark_refresh_token_used(self, token_id: str, now: datetime) -> None: ...

    async def revoke_family(self, family_id: str, now: datetime, reason: str) -> bool:
        """True if the family was live until now."""
        ...

    async def revoke_user_families(self, user_id: str, now: datetime, reason: str) -> int:
        """Revokes every family of the user; returns how many still had a usable token."""
        ...

    async def save_login_state(self, state: LoginState) -> None: ...

    async def take_login_state(self, state_hash: bytes) -> LoginState | None:
        """Removes and returns the state: a second call with the same hash gets None."""
        ...

    async def purge_expired(self, now: datetime) -> None:
        """Forgets expired login states and refresh tokens (of any family) past their expiry."""
        ...


class AuthStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[AuthTransaction]: ...
