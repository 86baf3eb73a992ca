"""Issuing access tokens: RS256 JWTs (RFC 9068 profile) that `mesh.tokens.TokenVerifier` accepts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from joserfc import jwt

from auth.keys import ALGORITHM, KeyRing
from mesh.tokens import ACCESS_TOKEN_TYPE


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
        self._ttl = ttl

    def issue(self, *, user_id: str, email: str, now: datetime) -> AccessToken:
        key = self.keys().signing_key(now)
        issued_at = int(now.timestamp())
        expires_at = issued_at + int(self._ttl.total_seconds())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "iat": issued_at,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
            "email": email,
        }
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        token = jwt.encode(header, claims, key.private, algorithms=[ALGORITHM])
        return AccessToken(token=token, expires_at=datetime.fromtimestamp(expires_at, tz=now.tzinfo))
