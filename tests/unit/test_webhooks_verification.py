"""The webhooks' verification rules as pure functions: Graph items, Google channel headers, Health payloads
and signatures in every key form the service reads (a Tink keyset like Google's, a JWK, a PEM)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from webhooks import notifications, signatures
from webhooks.notifications import Refused


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def tink_keyset(
    key: ec.EllipticCurvePrivateKey, key_id: int, *, encoding: int = 2, prefix: str = "TINK"
) -> str:
    """A Tink JSON public keyset holding `key`, as Google publishes its webhooks key."""
    numbers = key.public_key().public_numbers()
    params = _field(1, 3) + _field(2, 2) + _field(3, encoding)  # SHA256, NIST_P256, DER / IEEE_P1363
    value = _field(1, 0) + _field(2, params) + _field(3, b"\x00" + numbers.x.to_bytes(32, "big"))
    value += _field(4, b"\x00" + numbers.y.to_bytes(32, "big"))
    return json.dumps(
        {
            "primaryKeyId": key_id,
            "key": [
                {
                    "keyData": {
                        "typeUrl": signatures.ECDSA_PUBLIC_KEY_TYPE,
                        "value": base64.b64encode(value).decode(),
                        "keyMaterialType": "ASYMMETRIC_PUBLIC",
                    },
                    "status": "ENABLED",
                    "keyId": key_id,
                    "outputPrefixType": prefix,
                }
            ],
        }
    )


BODY = b'{"data":{"healthUserId":"u1","dataType":"steps"}}'


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_tink_signature_verifies_with_the_tink_keyset(
    key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "keyset.json"
    path.write_text(tink_keyset(key, 123456789))
    keys = signatures.load_keys(path)
    der = key.sign(BODY, ec.ECDSA(hashes.SHA256()))
    tink = b"\x01" + (123456789).to_bytes(4, "big") + der
    assert signatures.verify(base64.b64encode(tink).decode(), BODY, keys)
    assert not signatures.verify(base64.b64encode(tink).decode(), BODY + b" ", keys)
    other_id = b"\x01" + (7).to_bytes(4, "big") + der
    assert not signatures.verify(base64.b64encode(other_id).decode(), BODY, keys)
    assert not signatures.verify(base64.b64encode(der).decode(), BODY, keys)  # the prefix is required


def test_a_p1363_keyset_takes_r_and_s(key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    path.write_text(tink_keyset(key, 5, encoding=1, prefix="RAW"))
    r, s = decode_dss_signature(key.sign(BODY, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert signatures.verify(base64.b64encode(raw).decode(), BODY, signatures.load_keys(path))


def test_jwk_and_pem_keys_take_der_and_p1363_signatures(
    key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    numbers = key.public_key().public_numbers()

    def b64url(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    jwks = tmp_path / "keys.json"
    jwks.write_text(
        json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": b64url(numbers.x), "y": b64url(numbers.y)}]})
    )
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    der = key.sign(BODY, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    for path in (jwks, pem):
        keys = signatures.load_keys(path)
        assert signatures.verify(base64.b64encode(der).decode(), BODY, keys)
        assert signatures.verify(
            base64.urlsafe_b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode(), BODY, keys
        )
        assert not signatures.verify("not base64 !", BODY, keys)


def test_a_key_file_of_another_kind_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "rsa.json"
    path.write_text(json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB"}))
    with pytest.raises(signatures.KeyFileError):
        signatures.load_keys(path)


def test_graph_ids_use_the_notification_id_or_hash_what_identifies_it() -> None:
    item = {
        "subscriptionId": "s1",
        "clientState": "c",
        "changeType": "updated",
        "resource": "me/events/1",
        "resourceData": {"id": "1"},
        "subscriptionExpirationDateTime": "2026-11-08T10:00:00Z",
    }
    hashed = notifications.graph_notification(item, lifecycle=False).notice.id
    assert hashed == notifications.graph_notification(dict(item), lifecycle=False).notice.id
    assert (
        hashed
        != notifications.graph_notification({**item, "changeType": "deleted"}, lifecycle=False).notice.id
    )
    assert notifications.graph_notification({**item, "id": "n-1"}, lifecycle=False).notice.id == "graph:n-1"


@pytest.mark.parametrize(
    ("item", "lifecycle", "reason"),
    [
        (
            {"subscriptionId": "s", "clientState": "c", "changeType": "exploded", "resource": "r"},
            False,
            "unknown_change_type",
        ),
        (
            {"subscriptionId": "s", "clientState": "c", "lifecycleEvent": "other"},
            True,
            "unknown_lifecycle_event",
        ),
        ({"subscriptionId": "s", "changeType": "updated", "resource": "r"}, False, "missing_client_state"),
        ({"clientState": "c", "changeType": "updated", "resource": "r"}, False, "malformed"),
        ({"subscriptionId": "s", "clientState": "c", "lifecycleEvent": "missed"}, False, "malformed"),
    ],
)
def test_graph_items_that_are_not_graphs_are_refused(
    item: dict[str, str], lifecycle: bool, reason: str
) -> None:
    with pytest.raises(Refused) as refused:
        notifications.graph_notification(item, lifecycle=lifecycle)
    assert refused.value.reason == reason


def test_google_channel_headers_make_one_id_per_channel_and_number() -> None:
    headers = {
        "X-Goog-Channel-ID": "c1",
        "X-Goog-Channel-Token": "t",
        "X-Goog-Resource-ID": "r1",
        "X-Goog-Resource-State": "sync",
        "X-Goog-Message-Number": "1",
    }
    message = notifications.channel_message(headers)
    assert message.is_sync
    assert message.notice.id == "google:c1:1"
    assert message.notice.resource == "r1"


def test_health_payloads_as_one_object_or_a_list() -> None:
    data = {
        "healthUserId": "u",
        "dataType": "sleep",
        "operation": "DELETE",
        "civilIso8601TimeInterval": {"startTime": "2026-11-01T00:00:00", "endTime": "2026-11-02T00:00:00"},
    }
    one = notifications.health_changes({"data": data})
    listed = notifications.health_changes([{"data": data}, {"data": {**data, "dataType": "steps"}}])
    assert one[0].notice.id == listed[0].notice.id
    assert listed[0].notice.id != listed[1].notice.id
    with pytest.raises(Refused):
        notifications.health_changes({"data": {**data, "civilIso8601TimeInterval": None}})
    assert notifications.is_health_verification({"type": "verification"})
