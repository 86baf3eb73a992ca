"""The access-token revocation list: tokens every service refuses although they verify.

An entry names what it revokes and lasts until every token it can name has expired:

- a **user** (`sub`): the tokens issued to them at or before `revoked_at` (`iat` <= it). DeleteAccount
  writes one, so no token of an erased account is accepted any more;
- a **session** (`sid`, the family of refresh tokens an access token was issued from): all its tokens. A
  spent refresh token presented again (theft) revokes its family, and the family's access tokens with it.

The auth service writes entries through a `RevocationWriter`; every service process keeps the whole list in
memory (`RevocationList`), kept current from Redis by `mesh.revocation_feed`, and `mesh.tokens.TokenVerifier`
consults it on every call, cached tokens included: two dictionary lookups, no network.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

REVOKED = "access token revoked"
"""What the caller of a revoked token is told (UNAUTHENTICATED)."""


class RevocationKind(enum.Enum):
    USER = "user"
    """Every token of the user issued at or before the revocation."""
    SESSION = "session"
    """Every token of the session family."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the list."""

    kind: RevocationKind
    subject: str
    """The user id (`sub`) or the session id (`sid`) it revokes."""
    revoked_at: int
    """When, in seconds since the epoch: a user's tokens with `iat` at or before it are refused."""
    expires_at: int
    """Seconds since the epoch after which no token it names can be accepted anyway (each expired): the
    entry is forgotten then."""


class RevocationWriter(Protocol):
    """Where the auth service records revocations for every service."""

    async def revoke(self, revocation: Revocation) -> None:
        """Records `revocation`; `mesh.errors.Unavailable` when it cannot be recorded now."""
        ...


class RevocationList:
    """The entries known to this process. Entries are only ever added (a revocation is never taken back),
    and forgotten once expired."""

    def __init__(self) -> None:
        self._users: dict[str, Revocation] = {}
        self._sessions: dict[str, Revocation] = {}

    def __len__(self) -> int:
        return len(self._users) + len(self._sessions)

    def add(self, revocation: Revocation) -> None:
        """Adds an entry; of two for one user, the later revocation holds (it refuses more tokens)."""
        entries = self._users if revocation.kind is RevocationKind.USER else self._sessions
        known = entries.get(revocation.subject)
        if known is None or _order(revocation) > _order(known):
            entries[revocation.subject] = revocation

    def refusal(self, *, user_id: str, session_id: str, issued_at: float, now: float) -> str | None:
        """Why a token of `user_id` and `session_id` (empty: none) issued at `issued_at` is refused at
        `now` (all in seconds since the epoch), or None when it is not revoked."""
        if session_id:
            session = self._sessions.get(session_id)
            if session is not None and now < session.expires_at:
                return REVOKED
        user = self._users.get(user_id)
        if user is not None and issued_at <= user.revoked_at and now < user.expires_at:
            return REVOKED
        return None

    def prune(self, now: float) -> None:
        """Forgets the entries that expired by `now`."""
        for entries in (self._users, self._sessions):
            for subject in [subject for subject, entry in entries.items() if entry.expires_at <= now]:
                del entries[subject]


def _order(revocation: Revocation) -> tuple[int, int]:
    return revocation.revoked_at, revocation.expires_at
