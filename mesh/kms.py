"""Key-encryption keys: the KMS port of envelope encryption (`mesh.envelope`).

A KMS holds key-encryption keys (KEKs) that never leave it; it wraps and unwraps the small data keys that
encrypt a user's data, each bound to a context (the service and the user) that must be presented again to
unwrap it. Adapters:

- `LocalKeyFile`: KEKs as files in a directory (`<kek id>.key`, 32 random bytes in base64, mode 0600), the
  newest wrapping. For `make run` and single-node installs: the first start of a dev deployment creates the
  directory under the data directory, like the token signing keys. In Kubernetes mount them as a Secret.
- `mesh.kms_aws.AwsKms`: AWS KMS through boto3 (the official client).

Rotation (`python -m mesh.kms rotate`, then each service's `rewrap-keys` command) adds a KEK and rewraps
every stored data key under it without touching the data those keys encrypt.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from mesh.settings import ServiceSettings

log = logging.getLogger(__name__)

DATA_KEY_BYTES = 32
"""AES-256."""


class KmsError(Exception):
    """The KMS cannot wrap or unwrap: unreachable, misconfigured, or the wrapped key does not open with
    this context (tampered, or another user's)."""


class KeyMismatch(KmsError):
    """A wrapped key that does not open with its context: tampered, or moved to another owner."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key as the KMS wrapped it, and which KEK did."""

    kek_id: str
    blob: bytes


class KeyEncryptionKeys(Protocol):
    """A KMS."""

    @property
    def current_kek_id(self) -> str:
        """The KEK that wraps new data keys (and that `rewrap` moves keys to)."""
        ...

    async def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey: ...

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """The data key; raises `KmsError` when it does not open with `context`."""
        ...

    async def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """The same data key wrapped by the current KEK."""
        ...


def context_bytes(context: Mapping[str, str]) -> bytes:
    """A context as associated data: sorted `name=value` pairs, unambiguous (names and values are
    length-prefixed)."""
    parts = []
    for name, value in sorted(context.items()):
        for item in (name.encode(), value.encode()):
            parts.append(len(item).to_bytes(4, "big"))
            parts.append(item)
    return b"".join(parts)


_KEK_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
_NONCE_BYTES = 12


def new_kek_id(now: datetime) -> str:
    """`20260101T120000Z-1a2b3c4d`: sorts by creation time, like the signing keys' ids."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


class LocalKeyFile:
    """KEKs in a directory; the newest wraps, every one present unwraps."""

    def __init__(self, keys: Mapping[str, bytes], directory: Path | None = None) -> None:
        if not keys:
            raise KmsError("no key-encryption keys")
        self._keys = {kek_id: AESGCM(key) for kek_id, key in keys.items()}
        self._current = max(keys)
        self._directory = directory

    @classmethod
    def load(cls, directory: Path, *, create_if_empty: bool = False) -> LocalKeyFile:
        keys = read_keys(directory)
        if not keys:
            if not create_if_empty:
                raise KmsError(
                    f"no key-encryption keys in {directory}: create one with `python -m mesh.kms rotate "
                    f"--keys-dir {directory}` (in Kubernetes, mount them as a Secret), or run with "
                    "ATHENA_ENV=dev"
                )
            kek_id = add_key(directory, datetime.now(UTC))
            log.warning("generated a first key-encryption key", extra={"kek_id": kek_id})
            keys = read_keys(directory)
        return cls(keys, directory)

    @property
    def current_kek_id(self) -> str:
        return self._current

    async def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, data_key, context_bytes(context))
        return WrappedKey(self._current, nonce + sealed)

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        kek = self._keys.get(wrapped.kek_id)
        if kek is None and self._directory is not None:  # added since this process started
            self._keys = {kek_id: AESGCM(key) for kek_id, key in read_keys(self._directory).items()}
            kek = self._keys.get(wrapped.kek_id)
        if kek is None:
            raise KmsError(f"key-encryption key {wrapped.kek_id} is not in the key directory")
        nonce, sealed = wrapped.blob[:_NONCE_BYTES], wrapped.blob[_NONCE_BYTES:]
        try:
            return kek.decrypt(nonce, sealed, context_bytes(context))
        except InvalidTag:
            raise KeyMismatch("a wrapped data key does not open with its context") from None

    async def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        return await self.wrap(await self.unwrap(wrapped, context), context)


def read_keys(directory: Path) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    if not directory.is_dir():
        return keys
    for file in sorted(directory.glob("*.key")):
        if not _KEK_ID.match(file.stem):
            continue
        try:
            key = base64.b64decode(file.read_text().strip(), validate=True)
        except (OSError, ValueError) as exc:
            raise KmsError(f"cannot read key-encryption key {file.name}: {exc}") from exc
        if len(key) != DATA_KEY_BYTES:
            raise KmsError(f"key-encryption key {file.name} is not {DATA_KEY_BYTES} bytes")
        keys[file.stem] = key
    return keys


def add_key(directory: Path, now: datetime) -> str:
    """Writes a new KEK (mode 0600, written whole or not at all); returns its id."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    kek_id = new_kek_id(now)
    target = directory / f"{kek_id}.key"
    partial = directory / f".{kek_id}.partial"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(base64.b64encode(secrets.token_bytes(DATA_KEY_BYTES)).decode() + "\n")
        partial.rename(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return kek_id


def from_settings(settings: ServiceSettings) -> KeyEncryptionKeys:
    """The KMS the settings name."""
    if settings.kms == "aws-kms":
        from mesh.kms_aws import AwsKms

        if not settings.kms_aws_key_id:
            raise KmsError("ATHENA_KMS=aws-kms needs ATHENA_KMS_AWS_KEY_ID")
        return AwsKms(
            settings.kms_aws_key_id,
            region=settings.kms_aws_region,
            endpoint_url=settings.kms_aws_endpoint_url,
        )
    return LocalKeyFile.load(settings.kms_directory, create_if_empty=settings.env == "dev")


def main(argv: list[str] | None = None) -> None:
    """`python -m mesh.kms rotate --keys-dir DIR`: adds a local KEK, which wraps from the next start of each
    service on; then each service's `rewrap-keys` command moves the stored data keys under it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mesh.kms", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rotate = commands.add_parser("rotate", help="add a key-encryption key to a local key directory")
    rotate.add_argument("--keys-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    kek_id = add_key(args.keys_dir, datetime.now(UTC))
    print(f"added key-encryption key {kek_id} to {args.keys_dir}")


if __name__ == "__main__":
    main()
