"""Verifying AthenaOS access tokens (RS256 JWTs issued by the auth service).

Every service verifies every token itself, even behind Envoy's `jwt_authn`: signature with a key of the
auth service's JWKS (never a key or URL named by the token: `jku`, `x5u` and `jwk` headers are refused),
RS256 only, `typ` "at+jwt", `iss`, `aud`, `exp`/`nbf` with at most 60 s leeway, and `sub`; `sid`, the
session the token was issued in, when present. Then the revocation list (`mesh.revocation`): a token of a
revoked user or session is refused although it verifies.

A token seen again (each turn presents one to the router, the orchestrator and memory, and a person's
next turn the same one) is answered from a small cache of verified tokens for at most `CACHE_SECONDS`,
never past its own expiry: the signature check is the most expensive step of a call. The revocation list
is consulted on every call, cached tokens included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from joserfc.util import json_b64decode

from mesh.context import Principal
from mesh.errors import Unauthenticated, Unavailable
from mesh.revocation import RevocationList

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)
ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 60
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
"""Headers that would let a token name its own key or rules: a JWS carrying one is refused."""
CACHE_SECONDS = 60.0
"""How long a verified token is taken on trust: a signing key withdrawn from the JWKS stops being
accepted this long after at the latest."""
CACHE_SIZE = 10_000
MAX_SESSION_ID_LENGTH = 128

log = logging.getLogger(__name__)


class KeySource(Protocol):
    """Where verification keys come from."""

    async def key_set(self, kid: str) -> KeySet:
        """A key set that should hold `kid` (refreshed if it did not and refreshing is allowed)."""
        ...


class StaticKeySource:
    """Keys known in-process (the auth service verifying its own tokens; tests)."""

    def __init__(self, key_set: KeySet) -> None:
        self._key_set = key_set

    def replace(self, key_set: KeySet) -> None:
        self._key_set = key_set

    async def key_set(self, kid: str) -> KeySet:
        return self._key_set


class RemoteJwks:
    """The auth service's JWKS over HTTP, cached; refetched when a token names an unknown `kid`, at most
    once per `min_refresh_seconds` so garbage `kid`s cannot make us hammer the auth service."""

    def __init__(
        self,
        url: str,
        *,
        min_refresh_seconds: float = 30.0,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = url
        self._min_refresh = min_refresh_seconds
        self._timeout = timeout
        self._client = client
        """The caller's HTTP client (its timeouts and transport); None: one per fetch."""
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_set(self, kid: str) -> KeySet:
        keys = self._keys
        if keys is not None and (
            _has_kid(keys, kid) or time.monotonic() - self._fetched_at < self._min_refresh
        ):
            return keys
        async with self._lock:
            if self._keys is not None and _has_kid(self._keys, kid):
                return self._keys
            if self._keys is None or time.monotonic() - self._fetched_at >= self._min_refresh:
                await self._fetch()
            assert self._keys is not None
            return self._keys

    async def _fetch(self) -> None:
        try:
            if self._client is not None:
                response = await self._client.get(self._url)
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    response = await client.get(self._url)
            response.raise_for_status()
            document = response.json()
            self._keys = KeySet.import_key_set(document)
            self._fetched_at = time.monotonic()
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.warning("fetching JWKS from %s failed: %s", self._url, exc)
            if self._keys is None:
                raise Unavailable("token keys are not available yet") from exc
            self._fetched_at = time.monotonic()


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature and claims were checked, and what the revocation list needs of it."""

    principal: Principal
    trusted_until: float
    """Epoch second until which it is taken on trust (`CACHE_SECONDS`, never past its expiry)."""
    session_id: str
    """Its `sid`; empty when it has none."""
    issued_at: float
    """Its `iat`."""


class TokenVerifier:
    """Turns a bearer token into a `Principal` or raises `Unauthenticated`."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        revocations: RevocationList | None = None,
    ) -> None:
        self._keys = keys
        self.revocations = revocations if revocations is not None else RevocationList()
        """Tokens refused although they verify; kept current by the service's runtime (`mesh.app`)."""
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        """Verified tokens, least recently used first."""
        self._claims = jwt.JWTClaimsRegistry(
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )

    async def verify(self, token: str) -> Principal:
        now = time.time()
        verified = self._verified.get(token)
        if verified is not None and now < verified.trusted_until:
            self._verified.move_to_end(token)
        else:
            if verified is not None:
                del self._verified[token]
            verified = await self._verify(token)
            self._verified[token] = verified
            if len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        refusal = self.revocations.refusal(
            user_id=verified.principal.user_id,
            session_id=verified.session_id,
            issued_at=verified.issued_at,
            now=now,
        )
        if refusal is not None:
            raise Unauthenticated(refusal)
        return verified.principal

    async def _verify(self, token: str) -> _Verified:
        """The token checked (signature and claims), or Unauthenticated."""
        header = jose_header(token)
        if header is None or header.get("alg") not in ALGORITHMS:
            raise Unauthenticated("invalid access token")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise Unauthenticated("invalid access token")
        if any(name in header for name in FORBIDDEN_HEADERS):
            raise Unauthenticated("invalid access token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 128:
            raise Unauthenticated("invalid access token")
        keys = await self._keys.key_set(kid)
        try:
            decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            self._claims.validate(decoded.claims)
        except JoseError as exc:
            raise Unauthenticated(_reason(exc)) from exc
        except (ValueError, TypeError) as exc:
            raise Unauthenticated("invalid access token") from exc
        claims = decoded.claims
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("invalid access token")
        session_id = claims.get("sid", "")
        if not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID_LENGTH:
            raise Unauthenticated("invalid access token")
        email = claims.get("email")
        principal = Principal(user_id=subject, token=token, email=email if isinstance(email, str) else "")
        trusted_until = min(float(claims["exp"]), time.time() + CACHE_SECONDS)
        return _Verified(principal, trusted_until, session_id, float(claims["iat"]))


def jose_header(token: object, max_length: int = 8192) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS, read before any cryptography (to pick the key and refuse dangerous
    forms); None when `token` is not one, or longer than `max_length`."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > max_length:
        return None
    try:
        header = json_b64decode(token.split(".", 1)[0].encode("ascii"))
    except (ValueError, TypeError, UnicodeError):
        return None
    return header if isinstance(header, dict) else None


def _reason(exc: JoseError) -> str:
    if isinstance(exc, ExpiredTokenError):
        return "access token expired"
    return "invalid access token"
