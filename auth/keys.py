"""The key ring that signs access tokens: RSA keys as PEM files named by their `kid`.

A key file is `<kid>.pem` (PKCS#8, mode 0600) and its `kid` starts with its creation time in UTC,
`20250101T120000Z-1a2b3c4d`, so a directory of files (a Kubernetes Secret included) is the whole state.

Rotation (`python -m auth rotate-keys`) adds a key. Its life:

1. published: in the JWKS at once, not signing yet, for `activation_delay`, so every JWKS cache learns
   it before any token needs it;
2. active: the newest active key signs;
3. retired: once a newer key has been active for `retention` (the access-token lifetime plus the
   verifiers' leeway), no unexpired token can carry its `kid`: it leaves the JWKS and the next rotation
   deletes its file.

When no key is active yet (first start, or a compromised key removed by hand), the oldest key signs.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

log = logging.getLogger(__name__)

KEY_SIZE = 2048
ALGORITHM = "RS256"
_KID = re.compile(r"^(?P<created>\d{8}T\d{6}Z)-[0-9a-f]{8}$")
_KID_TIME = "%Y%m%dT%H%M%SZ"


class KeyRingError(Exception):
    """The key directory cannot give a signing key (missing, unreadable or malformed files)."""


@dataclass(frozen=True)
class SigningKey:
    """One RSA private key and when it was created (from its `kid`)."""

    kid: str
    created_at: datetime
    private: RSAKey

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with `kid`, `use` "sig" and `alg` "RS256"."""
        jwk = dict(self.private.as_dict(private=False))
        jwk.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return jwk


def new_kid(now: datetime) -> str:
    return f"{now.astimezone(UTC).strftime(_KID_TIME)}-{secrets.token_hex(4)}"


def kid_created_at(kid: str) -> datetime:
    match = _KID.match(kid)
    if match is None:
        raise KeyRingError(f"key id {kid!r} is not of the form 20250101T120000Z-1a2b3c4d")
    try:
        return datetime.strptime(match["created"], _KID_TIME).replace(tzinfo=UTC)
    except ValueError as exc:
        raise KeyRingError(f"key id {kid!r} does not start with a valid UTC time") from exc


def generate_key(now: datetime) -> SigningKey:
    kid = new_kid(now)
    private = RSAKey.generate_key(
        KEY_SIZE, parameters={"kid": kid, "use": "sig", "alg": ALGORITHM}, private=True
    )
    return SigningKey(kid=kid, created_at=kid_created_at(kid), private=private)


class KeyRing:
    """The signing keys known now, and the rules that say which one signs and which are published."""

    def __init__(
        self, keys: Iterable[SigningKey], *, activation_delay: timedelta, retention: timedelta
    ) -> None:
        self.keys: tuple[SigningKey, ...] = tuple(sorted(keys, key=lambda key: (key.created_at, key.kid)))
        if not self.keys:
            raise KeyRingError("the key ring is empty")
        self.activation_delay = activation_delay
        self.retention = retention

    def _active(self, now: datetime) -> list[SigningKey]:
        return [key for key in self.keys if key.created_at + self.activation_delay <= now]

    def signing_key(self, now: datetime) -> SigningKey:
        active = self._active(now)
        return active[-1] if active else self.keys[0]

    def retired(self, now: datetime) -> list[SigningKey]:
        """Keys no unexpired token can name: a newer key has been active for longer than `retention`
        (from its activation on, the newest active key signs, so older keys sign nothing)."""
        settled = [key for key in self.keys if key.created_at + self.activation_delay + self.retention <= now]
        if not settled:
            return []
        newest_settled = settled[-1]
        return [key for key in self.keys if key.created_at < newest_settled.created_at]

    def published(self, now: datetime) -> list[SigningKey]:
        """Keys in the JWKS: every key except the retired ones (pending keys included)."""
        retired = {key.kid for key in self.retired(now)}
        return [key for key in self.keys if key.kid not in retired]

    def jwks(self, now: datetime) -> dict[str, list[dict[str, Any]]]:
        return {"keys": [key.public_jwk() for key in self.published(now)]}

    def public_key_set(self, now: datetime) -> KeySet:
        """What the service's own `TokenVerifier` trusts."""
        return KeySet([RSAKey.import_key(jwk) for jwk in self.jwks(now)["keys"]])


class KeyDirectory:
    """`<kid>.pem` files in one directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[SigningKey]:
        if not self.path.is_dir():
            return []
        keys = []
        for file in sorted(self.path.glob("*.pem")):
            kid = file.stem
            created_at = kid_created_at(kid)
            try:
                private = RSAKey.import_key(
                    file.read_bytes(), parameters={"kid": kid, "use": "sig", "alg": ALGORITHM}
                )
            except (OSError, ValueError, JoseError) as exc:
                raise KeyRingError(f"cannot read signing key {file}: {exc}") from exc
            if not private.is_private or private.raw_value.key_size < KEY_SIZE:
                raise KeyRingError(f"{file} is not an RSA private key of at least {KEY_SIZE} bits")
            keys.append(SigningKey(kid=kid, created_at=created_at, private=private))
        return keys

    def save(self, key: SigningKey) -> Path:
        """Writes the key with mode 0600, atomically (a reader never sees half a file)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path / f"{key.kid}.pem"
        partial = self.path / f".{key.kid}.pem.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(key.private.as_pem(private=True))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(partial, 0o600)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    def delete(self, keys: Sequence[SigningKey]) -> None:
        for key in keys:
            (self.path / f"{key.kid}.pem").unlink(missing_ok=True)


def load_key_ring(
    directory: Path,
    *,
    now: datetime,
    activation_delay: timedelta,
    retention: timedelta,
    create_if_empty: bool,
) -> KeyRing:
    """The ring of `directory`; with `create_if_empty` (dev only) a first key is made when there is none."""
    store = KeyDirectory(directory)
    keys = store.load()
    if not keys:
        if not create_if_empty:
            raise KeyRingError(
                f"no signing keys in {directory}: create one with `python -m auth rotate-keys --keys-dir "
                f"{directory}` (in Kubernetes, mount them as a Secret), or run with ATHENA_ENV=dev"
            )
        key = generate_key(now)
        store.save(key)
        log.warning("generated a first signing key", extra={"kid": key.kid, "keys_dir": str(directory)})
        keys = [key]
    return KeyRing(keys, activation_delay=activation_delay, retention=retention)


def rotate_keys(
    directory: Path, *, now: datetime, activation_delay: timedelta, retention: timedelta
) -> tuple[SigningKey, list[SigningKey]]:
    """Adds a new key and deletes retired ones; returns the new key and the deleted ones."""
    store = KeyDirectory(directory)
    new = generate_key(now)
    store.save(new)
    ring = KeyRing([*store.load()], activation_delay=activation_delay, retention=retention)
    retired = ring.retired(now)
    store.delete(retired)
    return new, retired
