"""Web Push (RFC 8030) with VAPID (RFC 8292): the deployment's key, and sending through pywebpush.

The VAPID key is one P-256 private key per deployment, PKCS#8 PEM in a file (mode 0600): every replica
must sign with the same key, the one browsers subscribed with (`applicationServerKey`). A dev start makes
it when the file is missing (`load_vapid_key(create_if_missing=True)`), as auth makes its first signing
key; in Kubernetes it is the Secret `memory-vapid-key` (`python -m memory generate-vapid-key` makes one),
mounted read-only. Without a key, Web Push is off: notifications are still stored and streamed.

`WebPushSender.send` encrypts (RFC 8291, aes128gcm) and posts with `pywebpush.webpush`, a blocking call
run in a worker thread so the event loop never waits on a push service. A 404 or 410 says the subscription
is gone; anything else is logged with the push service's origin only (the rest of an endpoint identifies a
device).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from memory.notifications import PushOutcome, PushSubscription, b64url_encode

log = logging.getLogger(__name__)

Urgency = Literal["very-low", "low", "normal", "high"]

GONE_STATUSES = frozenset({404, 410})
"""Push-service answers meaning the subscription no longer exists (RFC 8030 names 404; services send 410)."""


class VapidKeyError(Exception):
    """The VAPID key file cannot be read as a P-256 private key."""


@dataclass(frozen=True)
class VapidKey:
    """The deployment's VAPID key pair."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> VapidKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> str:
        """The public key as browsers take it: the uncompressed point (65 bytes), base64url unpadded."""
        point = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url_encode(point)

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def vapid(self) -> Vapid:
        """The key as pywebpush signs with it (`vapid t=<JWT>, k=<key>`, RFC 8292)."""
        return Vapid(self.private)

    def save(self, path: Path) -> None:
        """Writes the key with mode 0600, atomically; never replaces an existing file."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(self.pem())
                handle.flush()
                os.fsync(handle.fileno())
            os.link(partial, path)  # fails if another process made the key first
        finally:
            partial.unlink(missing_ok=True)


def load_vapid_key(path: Path, *, create_if_missing: bool) -> VapidKey | None:
    """The key in `path`; when there is none, a new one saved there (`create_if_missing`, dev) or None."""
    if not path.exists():
        if not create_if_missing:
            return None
        key = VapidKey.generate()
        try:
            key.save(path)
        except FileExistsError:
            pass  # made by another process meanwhile: read theirs
        else:
            log.warning("generated a VAPID key for Web Push", extra={"path": str(path)})
            return key
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise VapidKeyError(f"cannot read the VAPID key {path}: {exc}") from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise VapidKeyError(f"{path} is not a P-256 private key")
    return VapidKey(private)


class WebPushSender:
    """Sends notifications to devices through their push services, signed with the deployment's key."""

    def __init__(
        self,
        key: VapidKey,
        *,
        subject: str,
        ttl_seconds: int,
        urgency: Urgency = "normal",
        timeout_seconds: float = 10.0,
    ) -> None:
        self._key = key
        self._vapid = key.vapid()
        self._subject = subject
        self._ttl = ttl_seconds
        self._urgency = urgency
        self._timeout = timeout_seconds

    @property
    def public_key(self) -> str:
        return self._key.public_key

    async def send(self, subscription: PushSubscription, payload: bytes) -> PushOutcome:
        try:
            await asyncio.to_thread(self._post, subscription, payload)
        except WebPushException as exc:
            status = exc.status_code
            if status in GONE_STATUSES:
                return PushOutcome.GONE
            log.warning(
                "a push service refused a notification",
                extra={"push_service": subscription.origin, "status": status},
            )
            return PushOutcome.FAILED
        except (requests.RequestException, ValueError, TypeError) as exc:
            log.warning(
                "a push service could not be reached",
                extra={"push_service": subscription.origin, "error": type(exc).__name__},
            )
            return PushOutcome.FAILED
        return PushOutcome.DELIVERED

    def _post(self, subscription: PushSubscription, payload: bytes) -> None:
        webpush(
            subscription_info=subscription.as_webpush(),
            data=payload.decode(),
            vapid_private_key=self._vapid,
            # A fresh dict each time: pywebpush writes `aud` and `exp` into it.
            vapid_claims={"sub": self._subject},
            ttl=self._ttl,
            timeout=self._timeout,
            headers={"Urgency": self._urgency},
        )
