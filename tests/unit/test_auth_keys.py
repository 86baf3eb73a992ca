"""The signing key ring: which key signs, which are published, files on disk, rotation."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from auth.access import AccessTokenIssuer
from auth.app import AUTH
from auth.keys import (
    KeyDirectory,
    KeyRing,
    KeyRingError,
    SigningKey,
    generate_key,
    kid_created_at,
    load_key_ring,
    rotate_keys,
)
from mesh.app import main
from mesh.tokens import StaticKeySource, TokenVerifier

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
DELAY = timedelta(minutes=5)
RETENTION = timedelta(minutes=16)


@pytest.fixture(scope="module")
def three_keys() -> list[SigningKey]:
    """Keys created at T0, T0+1h and T0+2h (generating RSA keys is slow: share them)."""
    return [generate_key(T0 + timedelta(hours=hours)) for hours in range(3)]


def ring(keys: list[SigningKey]) -> KeyRing:
    return KeyRing(keys, activation_delay=DELAY, retention=RETENTION)


def test_kid_carries_the_creation_time(three_keys: list[SigningKey]) -> None:
    assert [key.created_at for key in three_keys] == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert three_keys[0].kid.startswith("20250101T120000Z-")
    for bad in (
        "../../etc/passwd",
        "key",
        "20250101T120000Z-XYZ",
        "' OR 1=1 --",
        "20251399T990000Z-0123abcd",
    ):
        with pytest.raises(KeyRingError):
            kid_created_at(bad)


def test_a_rotated_key_is_published_at_once_but_signs_only_after_the_activation_delay(
    three_keys: list[SigningKey],
) -> None:
    old, new = three_keys[0], three_keys[1]
    keys = ring([old, new])
    just_rotated = new.created_at + timedelta(seconds=1)
    assert keys.signing_key(just_rotated).kid == old.kid
    assert {key.kid for key in keys.published(just_rotated)} == {old.kid, new.kid}
    assert keys.signing_key(new.created_at + DELAY).kid == new.kid


def test_the_previous_key_stays_published_until_every_token_it_signed_has_expired(
    three_keys: list[SigningKey],
) -> None:
    old, new = three_keys[0], three_keys[1]
    keys = ring([old, new])
    activated = new.created_at + DELAY
    assert {key.kid for key in keys.published(activated + RETENTION - timedelta(seconds=1))} == {
        old.kid,
        new.kid,
    }
    assert [key.kid for key in keys.published(activated + RETENTION)] == [new.kid]
    assert [key.kid for key in keys.retired(activated + RETENTION)] == [old.kid]


def test_the_oldest_key_signs_while_none_is_active(three_keys: list[SigningKey]) -> None:
    keys = ring(three_keys[1:])
    assert keys.signing_key(three_keys[1].created_at).kid == three_keys[1].kid
    assert keys.signing_key(three_keys[2].created_at + DELAY).kid == three_keys[2].kid


def test_jwks_holds_public_keys_only(three_keys: list[SigningKey]) -> None:
    document = ring(three_keys[:2]).jwks(T0 + timedelta(hours=1, minutes=1))
    assert [key["kid"] for key in document["keys"]] == [three_keys[0].kid, three_keys[1].kid]
    for key in document["keys"]:
        assert key["kty"] == "RSA"
        assert key["alg"] == "RS256"
        assert key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


async def test_issued_access_tokens_pass_the_mesh_verifier(three_keys: list[SigningKey]) -> None:
    keys = ring([three_keys[0]])
    now = datetime.now(UTC)
    issuer = AccessTokenIssuer(
        lambda: keys, issuer="athenaos", audience="athenaos-api", ttl=timedelta(minutes=15)
    )
    access = issuer.issue(user_id="user-1", email="a@example.com", session_id="session-1", now=now)
    verifier = TokenVerifier(
        StaticKeySource(keys.public_key_set(now)), issuer="athenaos", audience="athenaos-api"
    )
    principal = await verifier.verify(access.token)
    assert principal.user_id == "user-1"
    assert principal.email == "a@example.com"
    token = jwt.decode(access.token, KeySet.import_key_set(keys.jwks(now)))
    assert token.header == {"alg": "RS256", "kid": three_keys[0].kid, "typ": "at+jwt"}
    assert token.claims["exp"] - token.claims["iat"] == 900
    assert set(token.claims) == {"iss", "aud", "sub", "sid", "iat", "exp", "jti", "email"}
    assert token.claims["sid"] == "session-1"
    assert access.expires_at == datetime.fromtimestamp(token.claims["exp"], UTC)


def test_dev_start_creates_a_first_key_with_private_file_modes(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    keys = load_key_ring(directory, now=T0, activation_delay=DELAY, retention=RETENTION, create_if_empty=True)
    files = list(directory.glob("*.pem"))
    assert [file.stem for file in files] == [keys.signing_key(T0).kid]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    again = load_key_ring(
        directory, now=T0, activation_delay=DELAY, retention=RETENTION, create_if_empty=True
    )
    assert again.signing_key(T0).kid == keys.signing_key(T0).kid


def test_prod_start_without_keys_fails_clearly_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="rotate-keys"):
        load_key_ring(
            tmp_path / "keys", now=T0, activation_delay=DELAY, retention=RETENTION, create_if_empty=False
        )
    assert not (tmp_path / "keys").exists()


def test_a_malformed_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "20250101T120000Z-0123abcd.pem").write_text("not a key")
    with pytest.raises(KeyRingError, match="cannot read signing key"):
        KeyDirectory(tmp_path).load()


def test_rotation_adds_a_key_and_deletes_retired_ones(tmp_path: Path, three_keys: list[SigningKey]) -> None:
    directory = KeyDirectory(tmp_path)
    for key in three_keys[:2]:
        directory.save(key)
    # Long after the second key took over, the first one is deleted; the second stays (it signs until
    # the new key is active).
    later = three_keys[1].created_at + DELAY + RETENTION
    new, deleted = rotate_keys(tmp_path, now=later, activation_delay=DELAY, retention=RETENTION)
    assert [key.kid for key in deleted] == [three_keys[0].kid]
    assert sorted(file.stem for file in tmp_path.glob("*.pem")) == [three_keys[1].kid, new.kid]
    assert stat.S_IMODE((tmp_path / f"{new.kid}.pem").stat().st_mode) == 0o600


def test_rotate_keys_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTH_KEYS_DIR", str(tmp_path))

    def rotate() -> str:
        with pytest.raises(SystemExit) as exited:  # `python -m auth rotate-keys`, in this process
            main(AUTH, ["rotate-keys"])
        assert exited.value.code == 0
        return capsys.readouterr().out

    assert "added key" in rotate()
    assert "added key" in rotate()
    assert len(list(tmp_path.glob("*.pem"))) == 2  # the first key still signs tokens: it stays
