"""Erasure receipts: a genuine one verifies against the JWKS and says what was erased; a changed, forged or
misused one fails, and a receipt is never accepted as an access token."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jwt_attacks import ATTACKER, b64, hs256, rs_exact_header, segment

from auth.access import AccessTokenIssuer
from auth.keys import KeyRing, SigningKey, generate_key
from auth.receipts import RECEIPT_TYPE, InvalidReceipt, ReceiptSigner, verify_receipt
from mesh.errors import Unauthenticated
from mesh.tokens import StaticKeySource, TokenVerifier

ISSUER = "athenaos"
NOW = datetime.now(UTC).replace(microsecond=0)
ERASED = {"account": 1, "identities": 1, "sessions": 2, "refresh_tokens": 3, "memory_rows": 14}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_key(NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def ring(key: SigningKey) -> KeyRing:
    return KeyRing([key], activation_delay=timedelta(0), retention=timedelta(minutes=16))


@pytest.fixture(scope="module")
def jwks(ring: KeyRing) -> dict[str, Any]:
    return ring.jwks(NOW)


@pytest.fixture(scope="module")
def receipt(ring: KeyRing) -> str:
    return ReceiptSigner(lambda: ring, issuer=ISSUER).sign(user_id="user-1", erased=ERASED, now=NOW).token


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, read without checking anything."""
    header, payload, _ = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload))


def unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def test_a_genuine_receipt_verifies_and_states_what_was_erased(receipt: str, jwks: dict[str, Any]) -> None:
    verified = verify_receipt(receipt, jwks, issuer=ISSUER)
    assert verified.user_id == "user-1"
    assert verified.erased == ERASED
    assert verified.erased_at == NOW
    assert verified.receipt_id
    header, claims = parts(receipt)
    assert header["typ"] == RECEIPT_TYPE
    assert header["alg"] == "RS256"
    assert set(claims) == {"iss", "sub", "iat", "jti", "erased"}


def test_a_tampered_payload_fails(receipt: str, jwks: dict[str, Any]) -> None:
    header, _, signature = receipt.split(".")
    _, claims = parts(receipt)
    claims["erased"] = {**claims["erased"], "memory_rows": 0}
    with pytest.raises(InvalidReceipt, match="do not verify"):
        verify_receipt(f"{header}.{segment(claims)}.{signature}", jwks, issuer=ISSUER)


def test_a_receipt_signed_with_another_key_under_our_kid_fails(
    receipt: str, key: SigningKey, jwks: dict[str, Any]
) -> None:
    _, claims = parts(receipt)
    forged = rs_exact_header({"kid": key.kid, "typ": RECEIPT_TYPE}, claims, ATTACKER)
    with pytest.raises(InvalidReceipt, match="do not verify"):
        verify_receipt(forged, jwks, issuer=ISSUER)
    own_kid = rs_exact_header({"kid": "attacker-key", "typ": RECEIPT_TYPE}, claims, ATTACKER)
    with pytest.raises(InvalidReceipt, match="key the JWKS does not hold"):
        verify_receipt(own_kid, jwks, issuer=ISSUER)


def test_a_receipt_checked_against_another_deployments_keys_fails(receipt: str) -> None:
    other = KeyRing(
        [generate_key(NOW - timedelta(days=2))], activation_delay=timedelta(0), retention=timedelta(1)
    )
    with pytest.raises(InvalidReceipt):
        verify_receipt(receipt, other.jwks(NOW), issuer=ISSUER)


def test_alg_none_and_hs256_with_the_public_key_fail(
    receipt: str, key: SigningKey, jwks: dict[str, Any]
) -> None:
    _, claims = parts(receipt)
    unsigned = f"{segment({'alg': 'none', 'kid': key.kid, 'typ': RECEIPT_TYPE})}.{segment(claims)}."
    with pytest.raises(InvalidReceipt, match="not signed with RS256"):
        verify_receipt(unsigned, jwks, issuer=ISSUER)
    public_pem = key.private.as_pem(private=False)
    hmac_forged = hs256({"alg": "HS256", "kid": key.kid, "typ": RECEIPT_TYPE}, claims, public_pem)
    with pytest.raises(InvalidReceipt, match="not signed with RS256"):
        verify_receipt(hmac_forged, jwks, issuer=ISSUER)


async def test_an_access_token_is_not_a_receipt_and_a_receipt_is_not_an_access_token(
    receipt: str, ring: KeyRing, jwks: dict[str, Any]
) -> None:
    issuer = AccessTokenIssuer(
        lambda: ring, issuer=ISSUER, audience="athenaos-api", ttl=timedelta(minutes=15)
    )
    access = issuer.issue(user_id="user-1", email="a@example.com", session_id="s", now=datetime.now(UTC))
    with pytest.raises(InvalidReceipt, match="not an erasure receipt"):
        verify_receipt(access.token, jwks, issuer=ISSUER)

    verifier = TokenVerifier(
        StaticKeySource(ring.public_key_set(NOW)), issuer=ISSUER, audience="athenaos-api"
    )
    with pytest.raises(Unauthenticated, match="invalid access token"):
        await verifier.verify(receipt)


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "someone-else"},
        {"erased": {"account": -1}},
        {"erased": {"account": True}},
        {"erased": ["account"]},
        {"iat": "yesterday"},
    ],
)
def test_claims_that_do_not_hold_fail_even_when_signed(
    change: dict[str, Any], key: SigningKey, jwks: dict[str, Any], receipt: str
) -> None:
    _, claims = parts(receipt)
    signed = rs_exact_header({"kid": key.kid, "typ": RECEIPT_TYPE}, {**claims, **change}, key.private)
    with pytest.raises(InvalidReceipt):
        verify_receipt(signed, jwks, issuer=ISSUER)


@pytest.mark.parametrize("header", [{"jku": "https://attacker.example/jwks"}, {"jwk": {"kty": "RSA"}}])
def test_a_receipt_naming_its_own_key_fails(
    header: dict[str, Any], key: SigningKey, jwks: dict[str, Any], receipt: str
) -> None:
    _, claims = parts(receipt)
    signed = rs_exact_header({"kid": key.kid, "typ": RECEIPT_TYPE, **header}, claims, key.private)
    with pytest.raises(InvalidReceipt, match="names its own key"):
        verify_receipt(signed, jwks, issuer=ISSUER)


@pytest.mark.parametrize("garbage", ["", "a.b", "a.b.c", b64(b"[1]") + ".e30.", "x" * 20_000])
def test_what_is_not_a_jws_fails(garbage: str, jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidReceipt):
        verify_receipt(garbage, jwks, issuer=ISSUER)
