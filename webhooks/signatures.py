"""Google Health API notification signatures: ECDSA P-256 with SHA-256 over the raw body.

What the references say (developers.google.com/health/reference/rest/v4/projects.subscribers,
`EndpointAuthorization`): every request the Webhooks service sends carries `X-HEALTHAPI-SIGNATURE`, "an
ECDSA (NIST P256) signature of the JSON payload", to be verified "using Google Health API's public key".
The official pages name neither the header's encoding nor where the key is published. Clients that work
against the live API decode the header as base64 and verify it with Tink against the public keyset at
https://www.gstatic.com/googlehealthapi/webhooks/webhooks_public_keyset.json: Tink's wire format, a 5-byte
prefix (0x01 and the big-endian key id) before a DER signature. So this module takes the key from a file an
operator downloads and reviews (never fetched at request time), in any of these forms:

- a Tink JSON public keyset (`{"primaryKeyId", "key": [{"keyData": {"typeUrl": ".../EcdsaPublicKey",
  "value"}, "keyId", "status", "outputPrefixType"}]}`): each ENABLED key, its prefix and encoding honoured;
- a JWK (`kty` EC, `crv` P-256) or a JWK set (`{"keys": [...]}`): raw signatures, DER or IEEE P1363;
- a PEM public key (SubjectPublicKeyInfo): the same.

A signature verifies when any key verifies it (a keyset mid-rotation holds two). No gRPC, no Redis here.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ECDSA_PUBLIC_KEY_TYPE = "type.googleapis.com/google.crypto.tink.EcdsaPublicKey"
TINK_NIST_P256 = 2
TINK_SHA256 = 3
TINK_ENCODINGS: dict[int, Literal["p1363", "der"]] = {1: "p1363", 2: "der"}
P1363_LENGTH = 64
"""r and s, 32 bytes each: an IEEE P1363 signature on P-256."""


class KeyFileError(ValueError):
    """The public key file is none of the forms this module reads."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key and how signatures made with it are framed."""

    key: ec.EllipticCurvePublicKey
    prefix: bytes = b""
    """What precedes the signature (Tink's output prefix); empty for raw signatures."""
    encoding: Literal["der", "p1363", "any"] = "any"
    """How r and s are encoded; "any": 64 bytes are P1363, anything else DER."""
    legacy: bool = False
    """Tink's LEGACY prefix signs the message followed by one zero byte."""


def load_keys(path: Path) -> tuple[VerificationKey, ...]:
    """The keys in `path` (see the module docstring). Raises `KeyFileError` when it holds none."""
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("-----BEGIN"):
        return (VerificationKey(_p256(serialization.load_pem_public_key(text.encode()))),)
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: neither PEM nor JSON") from exc
    if isinstance(document, dict) and isinstance(document.get("key"), list):
        keys = tuple(_tink_keys(document["key"]))
    elif isinstance(document, dict) and isinstance(document.get("keys"), list):
        keys = tuple(
            _jwk(jwk) for jwk in document["keys"] if isinstance(jwk, dict) and jwk.get("kty") == "EC"
        )
    elif isinstance(document, dict) and document.get("kty") == "EC":
        keys = (_jwk(document),)
    else:
        raise KeyFileError(f"{path}: not a Tink keyset, a JWK or a JWK set")
    if not keys:
        raise KeyFileError(f"{path}: no enabled ECDSA P-256 key")
    return keys


def verify(signature: str, body: bytes, keys: tuple[VerificationKey, ...]) -> bool:
    """Whether `signature` (the header's value, base64) is a signature of `body` by one of `keys`."""
    raw = _b64decode(signature.strip())
    if raw is None:
        return False
    for candidate in keys:
        if not raw.startswith(candidate.prefix) or len(raw) <= len(candidate.prefix):
            continue
        der = _der(raw[len(candidate.prefix) :], candidate.encoding)
        if der is None:
            continue
        message = body + b"\x00" if candidate.legacy else body
        try:
            candidate.key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return True
    return False


def _b64decode(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _der(signature: bytes, encoding: str) -> bytes | None:
    if encoding == "p1363" or (encoding == "any" and len(signature) == P1363_LENGTH):
        if len(signature) != P1363_LENGTH:
            return None
        half = P1363_LENGTH // 2
        return encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
    return signature


def _p256(key: Any) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError("not an ECDSA P-256 public key")
    return key


def _jwk(jwk: dict[str, Any]) -> VerificationKey:
    if jwk.get("crv") != "P-256":
        raise KeyFileError(f"JWK curve {jwk.get('crv')!r}: only P-256")
    x, y = (_b64decode(str(jwk.get(name, ""))) for name in ("x", "y"))
    if not x or not y:
        raise KeyFileError("JWK without x and y")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    try:
        return VerificationKey(numbers.public_key())
    except ValueError as exc:
        raise KeyFileError("JWK: not a point on P-256") from exc


def _tink_keys(entries: list[Any]) -> list[VerificationKey]:
    keys = []
    for entry in entries:
        data = entry.get("keyData", {}) if isinstance(entry, dict) else {}
        if entry.get("status") != "ENABLED" or data.get("typeUrl") != ECDSA_PUBLIC_KEY_TYPE:
            continue
        fields = _protobuf_fields(base64.b64decode(data.get("value", "")))
        params = _protobuf_fields(fields.get(2, b""))  # type: ignore[arg-type]
        if params.get(2) != TINK_NIST_P256 or params.get(1) != TINK_SHA256:
            continue
        x, y = fields.get(3), fields.get(4)
        if not isinstance(x, bytes) or not isinstance(y, bytes):
            continue
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        )
        key_id = int(entry.get("keyId", 0)).to_bytes(4, "big")
        prefix_type = entry.get("outputPrefixType", "TINK")
        prefix = {"TINK": b"\x01" + key_id, "CRUNCHY": b"\x00" + key_id, "LEGACY": b"\x00" + key_id}.get(
            prefix_type, b""
        )
        encoding_id = params.get(3, 2)
        encoding: Literal["p1363", "der"] = (
            TINK_ENCODINGS.get(encoding_id, "der") if isinstance(encoding_id, int) else "der"
        )
        keys.append(VerificationKey(numbers.public_key(), prefix, encoding, legacy=prefix_type == "LEGACY"))
    return keys


def _protobuf_fields(data: bytes) -> dict[int, int | bytes]:
    """The top-level fields of a serialised protobuf message (varints and length-delimited only: what
    Tink's EcdsaPublicKey and EcdsaParams hold)."""
    fields: dict[int, int | bytes] = {}
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            fields[number], position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            fields[number] = data[position : position + length]
            position += length
        else:
            raise KeyFileError(f"unexpected protobuf wire type {wire_type} in a Tink key")
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise KeyFileError("truncated protobuf in a Tink key")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
