"""Accounts and sessions: signing a person in, refresh-token rotation with reuse detection, logout and
revocation (erasure is `auth.erasure`'s).

A *session* is a family of refresh tokens descended from one login; every access token issued from it
names it (`sid`). Every RefreshSession spends the presented token and issues its child. Presenting a spent
token again is reuse:

- within `reuse_grace` of its first use it is taken for a benign race (two tabs refreshing at once, a
  retried call whose answer was lost): the caller gets a new token of the same family (a sibling of the
  one the first call received); nothing is revoked. The stored hash cannot give back the first answer,
  and a sibling is as good as it;
- after the window it is treated as theft: the whole family is revoked (the thief's and the owner's
  tokens alike), a security event is logged (`event="refresh_token_reuse"`) and the call fails. The
  family's access tokens are revoked too (`mesh.revocation`): every service refuses them within a second.
  When that cannot be recorded (Redis down), the refresh tokens stay revoked, the failure is logged
  (`event="session_revocation_failed"`) and the access tokens live out their lifetime (15 minutes).

Logout and RevokeAllSessions revoke the access tokens of the sessions they end as well, logged as above
when that cannot be recorded. Expired or revoked tokens,
and tokens we never issued, answer UNAUTHENTICATED; Logout is idempotent.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt

from auth.access import AccessTokenIssuer
from auth.store import (
    AccountExport,
    AuthStore,
    AuthTransaction,
    RefreshTokenRecord,
    StoreConflict,
    UserRecord,
)
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from mesh.retry import log_retry
from mesh.revocation import RevocationKind, RevocationWriter

log = logging.getLogger(__name__)
security_log = logging.getLogger("athena.security")

Clock = Callable[[], datetime]
DEV_PROVIDER = "dev"
MAX_REFRESH_TOKEN_LENGTH = 256
MAX_DISPLAY_NAME_LENGTH = 200
_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f]{1,64}@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def hash_token(token: str) -> bytes:
    """What is stored instead of a refresh token or a login state."""
    return hashlib.sha256(token.encode()).digest()


def normalise_email(value: str, field: str = "email") -> str:
    """A lower-case address of the form local@domain.tld, or InvalidArgument naming `field`."""
    email = value.strip().lower()
    if not email:
        raise InvalidArgument(field, "required")
    if len(email) > 254 or _EMAIL.match(email) is None:
        raise InvalidArgument(field, "not a valid email address")
    return email


def normalise_display_name(value: str, field: str = "display_name") -> str:
    name = " ".join(value.split())
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_DISPLAY_NAME_LENGTH} characters")
    if any(not character.isprintable() for character in name):
        raise InvalidArgument(field, "contains control characters")
    return name


@dataclass(frozen=True)
class Identity:
    """A person as an identity provider asserts them."""

    provider: str
    subject: str
    email: str
    display_name: str
    email_verified: bool
    """The provider vouches that the person controls `email`: only then may the identity join an
    existing account with the same address."""


@dataclass(frozen=True)
class Session:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    refresh_token_expires_at: datetime
    user: UserRecord


class RefreshVerdict(enum.Enum):
    """What presenting a refresh token leads to."""

    ROTATE = "rotate"
    """Unused and live: spend it, issue its child."""
    GRACE = "grace"
    """Spent moments ago (a race): issue a sibling, revoke nothing."""
    REUSE = "reuse"
    """Spent earlier: revoke the family."""
    EXPIRED = "expired"
    REVOKED = "revoked"


def judge_refresh(record: RefreshTokenRecord, now: datetime, grace: timedelta) -> RefreshVerdict:
    if record.family_revoked_at is not None:
        return RefreshVerdict.REVOKED
    if record.used_at is not None:
        return RefreshVerdict.GRACE if now - record.used_at <= grace else RefreshVerdict.REUSE
    if record.expires_at <= now:
        return RefreshVerdict.EXPIRED
    return RefreshVerdict.ROTATE


class SessionManager:
    """Signs people in and keeps their sessions; the domain behind every AuthService RPC."""

    def __init__(
        self,
        store: AuthStore,
        issuer: AccessTokenIssuer,
        revocations: RevocationWriter,
        *,
        refresh_ttl: timedelta,
        reuse_grace: timedelta,
        dev_login_enabled: bool,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._issuer = issuer
        self._revocations = revocations
        self._refresh_ttl = refresh_ttl
        self._grace = reuse_grace
        self._dev_login_enabled = dev_login_enabled
        self._clock = clock

    @property
    def dev_login_enabled(self) -> bool:
        return self._dev_login_enabled

    async def dev_login(self, email: str, display_name: str) -> Session:
        """DevLogin: provider "dev", subject = the lower-case email."""
        if not self._dev_login_enabled:
            raise FailedPrecondition("DevLogin is available only when ATHENA_ENV=dev")
        address = normalise_email(email)
        name = normalise_display_name(display_name)
        identity = Identity(DEV_PROVIDER, address, address, name, email_verified=True)
        return await self.sign_in(identity)

    async def sign_in(self, identity: Identity) -> Session:
        """Finds or creates the account of `identity`, updates its profile, and opens a session."""
        # A concurrent first sign-in of the same person conflicts on the unique email or identity; the next
        # attempt sees the winner's rows.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreConflict),
            stop=stop_after_attempt(3),
            before_sleep=log_retry("a sign-in racing a concurrent one"),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._store.transaction() as tx:
                        now = self._clock()
                        user = await self._upsert_user(tx, identity, now)
                        return await self._open_session(tx, user, now)
        except RetryError as exc:
            raise Unavailable("sign-in conflicted with a concurrent one; try again") from exc
        raise AssertionError("unreachable: the retry policy returns or raises")

    async def _upsert_user(self, tx: AuthTransaction, identity: Identity, now: datetime) -> UserRecord:
        user = await tx.user_by_identity(identity.provider, identity.subject)
        if user is not None:
            name = identity.display_name or user.display_name
            return await tx.update_profile(user.id, identity.email, name, now)
        existing = await tx.user_by_email(identity.email)
        if existing is not None:
            if not identity.email_verified:
                raise AlreadyExists(
                    "an account with this email address exists; sign in with the provider you used before"
                )
            user = existing
            if identity.display_name:
                user = await tx.update_profile(user.id, identity.email, identity.display_name, now)
        else:
            name = identity.display_name or identity.email.split("@", 1)[0]
            user = await tx.create_user(identity.email, name, now)
        await tx.link_identity(user.id, identity.provider, identity.subject, now)
        return user

    async def _open_session(self, tx: AuthTransaction, user: UserRecord, now: datetime) -> Session:
        family_id = str(uuid.uuid4())
        await tx.create_family(family_id, user.id, now)
        return await self._issue(tx, user, family_id, parent_id=None, now=now)

    async def _issue(
        self, tx: AuthTransaction, user: UserRecord, family_id: str, *, parent_id: str | None, now: datetime
    ) -> Session:
        refresh_token = secrets.token_urlsafe(32)  # 256 bits
        record = RefreshTokenRecord(
            id=str(uuid.uuid4()),
            family_id=family_id,
            user_id=user.id,
            token_hash=hash_token(refresh_token),
            parent_id=parent_id,
            created_at=now,
            expires_at=now + self._refresh_ttl,
        )
        await tx.insert_refresh_token(record)
        access = self._issuer.issue(user_id=user.id, email=user.email, session_id=family_id, now=now)
        return Session(
            access_token=access.token,
            access_token_expires_at=access.expires_at,
            refresh_token=refresh_token,
            refresh_token_expires_at=record.expires_at,
            user=user,
        )

    async def refresh(self, refresh_token: str) -> Session:
        token_hash = hash_token(_check_refresh_token(refresh_token))
        async with self._store.transaction() as tx:
            now = self._clock()
            record = await tx.lock_refresh_token(token_hash)
            if record is None:
                raise Unauthenticated("refresh token is not valid")
            verdict = judge_refresh(record, now, self._grace)
            if verdict in (RefreshVerdict.ROTATE, RefreshVerdict.GRACE):
                user = await tx.user(record.user_id)
                if user is None:  # erased while the token was in flight
                    raise Unauthenticated("refresh token is not valid")
                if verdict is RefreshVerdict.ROTATE:
                    await tx.mark_refresh_token_used(record.id, now)
                else:
                    log.info("refresh token presented again within the grace window", extra=_ids(record))
                return await self._issue(tx, user, record.family_id, parent_id=record.id, now=now)
            if verdict is RefreshVerdict.REUSE:
                await tx.revoke_family(record.family_id, now, "refresh_token_reuse")
        # Out of the transaction, so the revocation above is committed before the call fails.
        if verdict is RefreshVerdict.REUSE:
            security_log.warning(
                "spent refresh token presented again; session revoked",
                extra={"event": "refresh_token_reuse", "used_at": record.used_at, **_ids(record)},
            )
            await self._revoke_access_tokens(record, now)
            raise Unauthenticated("refresh token was already used; the session is revoked")
        if verdict is RefreshVerdict.EXPIRED:
            raise Unauthenticated("refresh token expired")
        raise Unauthenticated("session revoked")

    async def _revoke_access_tokens(self, record: RefreshTokenRecord, now: datetime) -> None:
        """Revokes the access tokens of `record`'s family; the refresh tokens are revoked already, so a
        failure here is logged, not raised."""
        try:
            await self._revocations.revoke(
                self._issuer.revocation(RevocationKind.SESSION, record.family_id, now)
            )
        except Unavailable:
            security_log.error(
                "the revoked session's access tokens could not be revoked; they stay valid until they expire",
                extra={"event": "session_revocation_failed", **_ids(record)},
            )

    async def logout(self, refresh_token: str) -> None:
        """Revokes the family of `refresh_token`, and its access tokens with it (signing out ends the
        session everywhere within a second, not in 15 minutes); unknown, expired or revoked tokens are no
        error."""
        token_hash = hash_token(_check_refresh_token(refresh_token))
        now = self._clock()
        async with self._store.transaction() as tx:
            record = await tx.lock_refresh_token(token_hash)
            if record is None or not await tx.revoke_family(record.family_id, now, "logout"):
                return
        await self._revoke_access_tokens(record, now)

    async def export(self, user_id: str) -> AccountExport:
        """What auth holds about the user, opened for them: account, identities, sessions (no tokens)."""
        async with self._store.transaction() as tx:
            exported = await tx.export(user_id)
        if exported is None:
            raise NotFound("this account does not exist")
        return exported

    async def revoke_all(self, user_id: str) -> int:
        """Revokes every session of the user, and the access tokens of each (a sign-in right after is not
        affected); returns how many sessions were still usable. The access tokens' revocation failing
        (Redis down) is logged: the refresh tokens are revoked already, and the access tokens live out
        their lifetime."""
        now = self._clock()
        async with self._store.transaction() as tx:
            exported = await tx.export(user_id)
            live = [s.id for s in exported.sessions if s.revoked_at is None] if exported else []
            revoked = await tx.revoke_user_families(user_id, now, "revoke_all")
        for family_id in live:
            try:
                await self._revocations.revoke(
                    self._issuer.revocation(RevocationKind.SESSION, family_id, now)
                )
            except Unavailable:
                security_log.error(
                    "the revoked session's access tokens could not be revoked; they stay valid until they "
                    "expire",
                    extra={"event": "session_revocation_failed", "user_id": user_id, "family_id": family_id},
                )
        return revoked

    async def purge_expired(self) -> None:
        async with self._store.transaction() as tx:
            await tx.purge_expired(self._clock())


def _check_refresh_token(refresh_token: str) -> str:
    """Presence is the contract's rule; a token longer than any we issue is simply not valid."""
    if len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        raise Unauthenticated("refresh token is not valid")
    return refresh_token


def _ids(record: RefreshTokenRecord) -> dict[str, str]:
    return {"family_id": record.family_id, "user_id": record.user_id, "token_id": record.id}
