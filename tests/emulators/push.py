"""A local stand-in for a Web Push service (what Mozilla's autopush, FCM or Apple's service are to a browser).

- RFC 8030 §5 (https://www.rfc-editor.org/rfc/rfc8030#section-5): `POST /push/{id}`, the endpoint a browser
  got from `PushManager.subscribe`, takes a message with `TTL` (required: 400 without it, echoed back),
  `Urgency` (`very-low`, `low`, `normal`, `high`; 400 otherwise) and `Topic` (at most 32 base64url
  characters); it answers `201 Created` with `Location` (the message's URL). An endpoint the service does
  not know answers 404; a subscription the test marked gone answers 404 or 410 (`expire`).
- RFC 8292 (VAPID): `Authorization: vapid t=<JWT>, k=<public key>`. The JWT is ES256, signed by the key
  `k` (base64url of the uncompressed P-256 point), its `aud` is the endpoint's origin, its `exp` is in the
  future and at most 24 hours ahead, its `sub` a `mailto:` or `https:` URI: otherwise 401. A `k` other than
  the subscription's `applicationServerKey` (when it was given one) answers 403.
- RFC 8291 / RFC 8188: the body is `Content-Encoding: aes128gcm` (400 otherwise), at most 4096 bytes (413),
  and is decrypted with the subscription's private key and auth secret (http_ece): one that does not
  decrypt answers 400. What decrypts is recorded as a `PushMessage`.

`subscribe()` makes a subscription as a browser does (a P-256 key pair and a 16-byte auth secret, the
endpoint on this server) and answers it as `PushSubscription.toJSON()` would, with its private half kept
for decryption. Tests read `messages` (and `requests`, every request as received).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import http_ece
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .serving import RecordedRequest, recording, serve

MAX_BODY_BYTES = 4096
"""RFC 8030 §7.2: a push service must accept at least 4096 bytes of body; this one accepts exactly that."""
MAX_EXP_SECONDS = 24 * 60 * 60
"""RFC 8292 §2: `exp` no more than 24 hours ahead."""
URGENCIES = ("very-low", "low", "normal", "high")
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_VAPID = re.compile(r"^vapid\s+(?P<params>.+)$", re.IGNORECASE)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@dataclass
class BrowserSubscription:
    """A device's subscription, as the browser holds it: the public half goes to the application server
    (`as_json`, `PushSubscription.toJSON()`), the private key decrypts what arrives."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    application_server_key: str | None = None
    """The VAPID public key it was subscribed with (`applicationServerKey`), if any."""
    gone_status: int | None = None
    """404 or 410 once the test said the subscription expired."""

    @property
    def p256dh(self) -> str:
        return b64url(_point(self.private_key.public_key()))

    @property
    def auth(self) -> str:
        return b64url(self.auth_secret)

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        }


def browser_subscription(endpoint: str, application_server_key: str | None = None) -> BrowserSubscription:
    """A subscription made like a browser makes one (a fresh P-256 key pair and a random 16-byte auth
    secret) for `endpoint`."""
    return BrowserSubscription(
        id=endpoint.rstrip("/").rsplit("/", 1)[-1],
        endpoint=endpoint,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        auth_secret=secrets.token_bytes(16),
        application_server_key=application_server_key,
    )


@dataclass(frozen=True)
class PushMessage:
    """One message the push service accepted, decrypted."""

    subscription_id: str
    payload: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    vapid_key: str
    """`k` of the Authorization header: the application server's public key."""
    claims: dict[str, Any]
    """The VAPID JWT's claims (`aud`, `exp`, `sub`)."""

    def json(self) -> Any:
        return json.loads(self.payload)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class PushEmulator:
    """A push service on one local server. Serve with `await start()` (then `base_url` is set), or mount
    `app` on a server of your own and set `base_url`. `clock` is wall-clock seconds (VAPID `exp`)."""

    clock: Callable[[], float] = time.time
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    messages: list[PushMessage] = field(default_factory=list)
    subscriptions: dict[str, BrowserSubscription] = field(default_factory=dict)
    _app: web.Application | None = None
    _runner: web.AppRunner | None = None

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = web.Application(middlewares=[recording(self.requests)])
            self._app.router.add_post("/push/{id}", self._push)
        return self._app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.base_url = await serve(self.app, host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what a test does -------------------------------------------------------------------------------

    def subscribe(self, application_server_key: str | None = None) -> BrowserSubscription:
        """A new subscription on this service, as `PushManager.subscribe` makes one."""
        subscription = browser_subscription(
            f"{self.base_url}/push/{uuid.uuid4().hex}", application_server_key
        )
        self.subscriptions[subscription.id] = subscription
        return subscription

    def expire(self, subscription: BrowserSubscription, status: int = 410) -> None:
        """From now on the service answers `status` (404 or 410) for the subscription: it is gone."""
        if status not in (404, 410):
            raise ValueError("a gone subscription answers 404 or 410")
        subscription.gone_status = status

    def messages_for(self, subscription: BrowserSubscription) -> list[PushMessage]:
        return [message for message in self.messages if message.subscription_id == subscription.id]

    # --- the service ------------------------------------------------------------------------------------

    async def _push(self, request: web.Request) -> web.Response:
        subscription = self.subscriptions.get(request.match_info["id"])
        if subscription is None:
            return web.Response(status=404, text="no such subscription")
        if subscription.gone_status is not None:
            return web.Response(status=subscription.gone_status, text="subscription expired")
        try:
            message = self._accept(request, subscription, await request.read())
        except _Refused as refused:
            return web.Response(status=refused.status, text=refused.reason)
        self.messages.append(message)
        location = f"{self.base_url}/message/{uuid.uuid4().hex}"
        return web.Response(status=201, headers={"Location": location, "TTL": str(message.ttl)})

    def _accept(self, request: web.Request, subscription: BrowserSubscription, body: bytes) -> PushMessage:
        ttl_header = request.headers.get("TTL", "")
        if not ttl_header.isdigit():
            raise _Refused(400, "TTL is required (seconds)")
        urgency = request.headers.get("Urgency")
        if urgency is not None and urgency not in URGENCIES:
            raise _Refused(400, "Urgency must be very-low, low, normal or high")
        topic = request.headers.get("Topic")
        if topic is not None and not _TOPIC.match(topic):
            raise _Refused(400, "Topic must be at most 32 base64url characters")
        key, claims = self._vapid(request.headers.get("Authorization", ""), subscription)
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, "payload too large")
        if request.headers.get("Content-Encoding", "").lower() != "aes128gcm":
            raise _Refused(400, "Content-Encoding must be aes128gcm")
        try:
            payload = http_ece.decrypt(
                body,
                private_key=subscription.private_key,
                auth_secret=subscription.auth_secret,
                version="aes128gcm",
            )
        except (
            Exception
        ) as exc:  # http_ece raises its own, ValueError or InvalidTag: all mean "does not open"
            raise _Refused(400, f"the payload does not decrypt: {type(exc).__name__}") from exc
        return PushMessage(subscription.id, bytes(payload), int(ttl_header), urgency, topic, key, claims)

    def _vapid(self, header: str, subscription: BrowserSubscription) -> tuple[str, dict[str, Any]]:
        match = _VAPID.match(header.strip())
        if match is None:
            raise _Refused(401, "Authorization: vapid t=..., k=... is required")
        params = dict(part.strip().split("=", 1) for part in match["params"].split(",") if "=" in part)
        token, key = params.get("t", ""), params.get("k", "")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
            header_b64, claims_b64, signature_b64 = token.split(".")
            jose = json.loads(unb64url(header_b64))
            claims = json.loads(unb64url(claims_b64))
            signature = unb64url(signature_b64)
        except (ValueError, TypeError):
            raise _Refused(401, "malformed VAPID credentials") from None
        if jose.get("alg") != "ES256" or len(signature) != 64:
            raise _Refused(401, "the VAPID JWT must be ES256")
        der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
        try:
            public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise _Refused(401, "the VAPID JWT is not signed by k") from None
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(subscription.endpoint))
        if claims.get("aud") != origin:
            raise _Refused(401, f"aud must be the endpoint's origin, {origin}")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now or exp > now + MAX_EXP_SECONDS:
            raise _Refused(401, "exp must be in the future and at most 24 hours ahead")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            raise _Refused(401, "sub must be a mailto: or https: URI")
        if subscription.application_server_key is not None and key != subscription.application_server_key:
            raise _Refused(403, "k is not the key this subscription was made with")
        return key, claims
