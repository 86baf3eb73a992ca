"""Erasure receipts: what DeleteAccount erased, signed with the auth service's key, so that anyone holding
its JWKS (`AuthService/GetJwks`, `/.well-known/jwks.json`) can check it later without asking us.

A receipt is a compact JWS (RFC 7515) signed RS256 by the key that signs access tokens at the time:

    header  {"alg": "RS256", "kid": <signing key>, "typ": "erasure-receipt+jwt"}
    claims  iss     the deployment's issuer (the access tokens')
            sub     the erased user id
            iat     when the erasure completed (seconds since the epoch)
            jti     the receipt's own id
            erased  {category: count}, for example {"account": 1, "sessions": 2, "memory_rows": 14}

It has no `aud` and no `exp`, and its `typ` is not "at+jwt": `mesh.tokens.TokenVerifier` refuses it as an
access token three times over. `verify_receipt` checks one against a JWKS.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from auth.keys import ALGORITHM, KeyRing
from mesh.tokens import FORBIDDEN_HEADERS, jose_header

RECEIPT_TYPE = "erasure-receipt+jwt"
"""The JOSE `typ` of receipts: never "at+jwt", so a receipt is never taken for an access token."""
MAX_RECEIPT_LENGTH = 16_384


class InvalidReceipt(Exception):
    """The receipt is not one we signed, or was changed since (the message says which check failed)."""


@dataclass(frozen=True)
class ErasureReceipt:
    """A signed receipt and what it states."""

    token: str
    """The compact JWS."""
    user_id: str
    erased_at: datetime
    receipt_id: str
    erased: Mapping[str, int]
    """Category -> count."""


class ReceiptSigner:
    """Signs receipts with the current key of the key ring `keys()` returns (the access tokens' key)."""

    def __init__(self, keys: Callable[[], KeyRing], *, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    def sign(self, *, user_id: str, erased: Mapping[str, int], now: datetime) -> ErasureReceipt:
        key = self._keys().signing_key(now)
        issued_at = int(now.timestamp())
        receipt_id = uuid.uuid4().hex
        claims = {
            "iss": self._issuer,
            "sub": user_id,
            "iat": issued_at,
            "jti": receipt_id,
            "erased": dict(erased),
        }
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": RECEIPT_TYPE}
        token = jwt.encode(header, claims, key.private, algorithms=[ALGORITHM])
        return ErasureReceipt(
            token=token,
            user_id=user_id,
            erased_at=datetime.fromtimestamp(issued_at, UTC),
            receipt_id=receipt_id,
            erased=dict(erased),
        )


def verify_receipt(token: str, jwks: Mapping[str, Any] | KeySet, *, issuer: str) -> ErasureReceipt:
    """What `token` states, if it is a receipt signed by a key of `jwks` (a JWKS document or a key set)
    for `issuer`; `InvalidReceipt` otherwise: another algorithm (`none`, HS256), another `typ` (an access
    token), an unknown key, a signature that does not match, or claims missing or malformed."""
    header = jose_header(token, MAX_RECEIPT_LENGTH)
    if header is None:
        raise InvalidReceipt("not a compact JWS")
    if header.get("alg") != ALGORITHM:
        raise InvalidReceipt(f"not signed with {ALGORITHM}")
    if header.get("typ") != RECEIPT_TYPE:
        raise InvalidReceipt(f"not an erasure receipt (typ is not {RECEIPT_TYPE!r})")
    if any(name in header for name in FORBIDDEN_HEADERS):
        raise InvalidReceipt("names its own key or rules")
    keys = jwks if isinstance(jwks, KeySet) else KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    kid = header.get("kid")
    if not isinstance(kid, str) or all(key.kid != kid for key in keys.keys):
        raise InvalidReceipt("signed by a key the JWKS does not hold")
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )
    try:
        claims = jwt.decode(token, keys, algorithms=[ALGORITHM]).claims
        registry.validate(claims)
    except JoseError as exc:
        raise InvalidReceipt(f"signature or claims do not verify ({exc.error})") from exc
    except (ValueError, TypeError) as exc:
        raise InvalidReceipt("not a well-formed JWS") from exc
    erased = claims.get("erased")
    if not isinstance(erased, dict) or not all(
        isinstance(category, str) and type(count) is int and count >= 0 for category, count in erased.items()
    ):
        raise InvalidReceipt("`erased` is not a map of category to count")
    iat = claims["iat"]
    if type(iat) is not int:
        raise InvalidReceipt("`iat` is not a time in seconds")
    return ErasureReceipt(
        token=token,
        user_id=str(claims["sub"]),
        erased_at=datetime.fromtimestamp(iat, UTC),
        receipt_id=str(claims["jti"]),
        erased=erased,
    )
