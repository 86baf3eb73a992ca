"""Issuing access tokens: RS256 JWTs (RFC 9068 profile) that `mesh.tokens.TokenVerifier` accepts.

Each names the session it was issued in (`sid`: the id of its family of refresh tokens), so revoking a
session revokes its access tokens too (`mesh.revocation`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from joserfc import jwt

from auth.keys import ALGORITHM, KeyRing
from mesh.revocation import Revocation, RevocationKind
from mesh.tokens import ACCESS_TOKEN_TYPE, LEEWAY_SECONDS


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: datetime


class AccessTokenIssuer:
    """Signs access tokens with the current key of the key ring `keys()` returns (it may be reloaded)."""

    def __init__(self, keys: Callable[[], KeyRing], *, issuer: str, audience: str, ttl: timedelta) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl
        """How long a token lives."""

    def issue(self, *, user_id: str, email: str, session_id: str, now: datetime) -> AccessToken:
        key = self.keys().signing_key(now)
        issued_at = int(now.timestamp())
        expires_at = issued_at + int(self.ttl.total_seconds())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "sid": session_id,
            "iat": issued_at,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
            "email": email,
        }
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        token = jwt.encode(header, claims, key.private, algorithms=[ALGORITHM])
        return AccessToken(token=token, expires_at=datetime.fromtimestamp(expires_at, tz=now.tzinfo))

    def revocation(self, kind: RevocationKind, subject: str, now: datetime) -> Revocation:
        """The entry of the revocation list refusing the tokens of `subject` (a user or a session) issued
        until `now`. It lasts as long as such a token can be accepted: its lifetime and the verifiers'
        leeway on `exp`, and the leeway again for a token issued while the revocation was being written."""
        revoked_at = int(now.timestamp())
        lasting = int(self.ttl.total_seconds()) + 2 * LEEWAY_SECONDS
        return Revocation(kind=kind, subject=subject, revoked_at=revoked_at, expires_at=revoked_at + lasting)
