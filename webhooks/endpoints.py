"""The webhooks' HTTP endpoints (aiohttp, on the service's HTTP port), what the edge routes under `/webhooks/`
with no access token: each provider's own verification instead (`webhooks.notifications`,
`webhooks.signatures`).

    POST /webhooks/graph             Graph change notifications, and the validation handshake
    POST /webhooks/graph/lifecycle   Graph lifecycle notifications, and the validation handshake
    POST /webhooks/google            Google Calendar and Drive push channels (headers only)
    POST /webhooks/google-health     Google Health API subscriber: verification and notifications

Every request is first counted against its source address (429 above `rate_limit`), then its body is read
up to `max_body_bytes` (413 above). A verified notification is published to the event bus
(`mesh.events.EventBus`) before the answer, so a 2xx means "queued": nothing here calls a provider, and
Graph's 3 seconds are a few Redis round trips. A notification seen before (Graph and Health: its event id,
kept `replay_window_seconds`; Google: a message number at or below the channel's last) is answered 2xx, so
the provider stops retrying, and not published again.

Refusals, as answered:

    400  malformed (not JSON, missing fields or headers, unknown state)
    401  Google Health: bad or missing signature, verification without the subscriber's secret
    403  Graph: unknown subscription or wrong clientState; Google: unknown channel, wrong token or resource
    413  body above `max_body_bytes`
    429  rate limit (with Retry-After)
    503  Redis unavailable (the providers retry)
    500  a bug (logged with its traceback, never answered with it)

A Graph batch is checked notification by notification: the good ones are published and the batch answered
202; only when none passes is the first refusal's status answered. Every refusal, per notification, adds to
`athena_webhooks_refused_total{provider,reason}` and logs one line, never the body; a 503 or 500 adds to
`athena_webhooks_failed_total{provider,reason}` (the webhooks' error budget, `observability/rules/`).
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from aiohttp import web
from athena.events.v1 import events_pb2
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from mesh import redis
from mesh.clock import Clock
from mesh.errors import Unavailable
from mesh.events import EventBus
from mesh.ratelimit import WindowCounter
from mesh.subscriptions import GRACE, Subscription, SubscriptionRegistry, health_subscription_id
from mesh.telemetry import traced
from webhooks import notifications, signatures
from webhooks.notifications import FORBIDDEN, UNAUTHORIZED, Notice, Refused
from webhooks.settings import WebhooksSettings
from webhooks.store import WebhookStore

log = logging.getLogger(__name__)

GRAPH = "microsoft"
GOOGLE = "google"
GOOGLE_HEALTH = "google-health"
"""The `provider` label of the counters (events say "google" for Health too)."""

HEALTH_SIGNATURE_HEADERS = ("X-HEALTHAPI-SIGNATURE", "GOOGLE-HEALTH-API-SIGNATURE")
"""The REST reference names the first; one generated client's documentation the second."""

REFUSED = Counter(
    "athena_webhooks_refused_total",
    "Provider notifications refused (never published), by provider and reason.",
    ["provider", "reason"],
)
PUBLISHED = Counter(
    "athena_webhooks_published_total",
    "Verified provider notifications published to the event bus, by provider.",
    ["provider"],
)
FAILED = Counter(
    "athena_webhooks_failed_total",
    "Provider notifications that could not be processed (answered 503 or 500; the provider retries), by "
    "provider and reason: unavailable (Redis), internal (a bug).",
    ["provider", "reason"],
)

Kind = events_pb2.ProviderEvent.Kind
KINDS: Mapping[str, events_pb2.ProviderEvent.Kind.ValueType] = {
    "calendar": Kind.KIND_CALENDAR_CHANGED,
    "files": Kind.KIND_FILES_CHANGED,
    "health": Kind.KIND_HEALTH_CHANGED,
}
ANSWERS = {
    400: "malformed notification\n",
    401: "unauthorized\n",
    403: "forbidden\n",
    413: "request body too large\n",
    429: "too many requests\n",
}

TRANSIENT: tuple[type[BaseException], ...] = (Unavailable, *redis.UNAVAILABLE)
"""Failures that mean "Redis cannot answer now": the provider is answered 503 and retries."""

Handler = Callable[[web.Request, bytes], Awaitable[web.Response]]


class Endpoints:
    """The four webhook routes, with what verifying and publishing need."""

    def __init__(
        self,
        settings: WebhooksSettings,
        *,
        registry: SubscriptionRegistry,
        bus: EventBus,
        store: WebhookStore,
        limiter: WindowCounter,
        health_keys: tuple[signatures.VerificationKey, ...],
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._bus = bus
        self._store = store
        self._limiter = limiter
        self._health_keys = health_keys
        self._health_secret = (
            settings.google_health_secret.get_secret_value() if settings.google_health_secret else None
        )
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/graph", self._guarded(GRAPH, self.graph)),
            web.post("/webhooks/graph/lifecycle", self._guarded(GRAPH, self.graph_lifecycle)),
            web.post("/webhooks/google", self._guarded(GOOGLE, self.google)),
            web.post("/webhooks/google-health", self._guarded(GOOGLE_HEALTH, self.google_health)),
        ]

    # --- what every route does

    def _guarded(self, provider: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            # A SERVER span continuing the edge's trace (its `traceparent`), parent of the publish.
            with traced(
                f"POST {request.path}",
                SpanKind.SERVER,
                attributes={"http.request.method": "POST", "url.path": request.path},
                remote_parent=request.headers,
            ) as span:
                response = await handle_traced(request)
                if span is not None:
                    span.set_attribute("http.response.status_code", response.status)
                return response

        async def handle_traced(request: web.Request) -> web.Response:
            client = self._client(request)
            try:
                limited = await self._rate_limited(client)
                if limited is not None:
                    self._count(provider, "rate_limited", 429, client, request.path)
                    return web.Response(
                        status=429, text=ANSWERS[429], headers={"Retry-After": str(math.ceil(limited))}
                    )
                return await handler(request, await self._body(request))
            except Refused as refusal:
                self._count(provider, refusal.reason, refusal.status, client, request.path)
                return web.Response(status=refusal.status, text=ANSWERS.get(refusal.status, "refused\n"))
            except TRANSIENT as exc:
                FAILED.labels(provider, "unavailable").inc()
                log.warning(
                    "webhook not taken: Redis unavailable",
                    extra={"provider": provider, "path": request.path, "error": str(exc)},
                )
                return web.Response(status=503, text="unavailable, retry later\n")
            except Exception:  # a bug: logged with its traceback, answered without it
                FAILED.labels(provider, "internal").inc()
                log.exception("webhook failed", extra={"provider": provider, "path": request.path})
                return web.Response(status=500, text="internal error\n")

        return handle

    def _client(self, request: web.Request) -> str:
        forwarded = request.headers.get("X-Forwarded-For", "") if self._settings.forwarded_for else ""
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()[:64] or "unknown"
        return request.remote or "unknown"

    async def _rate_limited(self, client: str) -> float | None:
        """Seconds to wait when `client` is over the limit; None when admitted (also when Redis cannot
        count: the request then fails on publishing, or passes without a limit if it publishes nothing)."""
        try:
            admission = await self._limiter.hit(client, self._clock.time())
        except Unavailable:
            return None
        return None if admission.allowed else admission.retry_after

    async def _body(self, request: web.Request) -> bytes:
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused("too_large", 413)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise Refused("too_large", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def _count(self, provider: str, reason: str, status: int, client: str, path: str, **extra: str) -> None:
        REFUSED.labels(provider, reason).inc()
        log.warning(
            "webhook refused",
            extra={
                "provider": provider,
                "reason": reason,
                "status": status,
                "client": client,
                "path": path,
                **extra,
            },
        )

    async def _publish(
        self, provider: str, subscription: Subscription, notice: Notice, *, dedupe: bool
    ) -> bool:
        """Publishes `notice` for `subscription`; False (and counted) when it is a replay."""
        ttl = self._settings.replay_window_seconds
        if dedupe and not await self._store.first_sighting(notice.id, ttl):
            REFUSED.labels(provider, "replay").inc()
            log.info(
                "webhook replay not published",
                extra={
                    "provider": provider,
                    "event_id": notice.id,
                    "subscription_id": subscription.subscription_id,
                },
            )
            return False
        try:
            await self._bus.publish(_event(subscription, notice, self._clock.now()))
        except BaseException:
            if dedupe:
                await _quietly(self._store.forget(notice.id))
            raise
        PUBLISHED.labels(provider).inc()
        return True

    # --- Microsoft Graph

    async def graph(self, request: web.Request, body: bytes) -> web.Response:
        return await self._graph(request, body, lifecycle=False)

    async def graph_lifecycle(self, request: web.Request, body: bytes) -> web.Response:
        return await self._graph(request, body, lifecycle=True)

    async def _graph(self, request: web.Request, body: bytes, *, lifecycle: bool) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            return web.Response(
                text=notifications.graph_validation_token(token),
                content_type="text/plain",
                headers={"X-Content-Type-Options": "nosniff"},
            )
        taken = 0
        first_refusal: Refused | None = None
        for item in notifications.graph_batch(body):
            try:
                notification = notifications.graph_notification(item, lifecycle=lifecycle)
                subscription = await self._registry.lookup(GRAPH, notification.subscription_id)
                if subscription is None:
                    raise Refused("unknown_subscription", FORBIDDEN)
                if not subscription.verifies(notification.client_state):
                    raise Refused("client_state", FORBIDDEN)
                await self._publish(GRAPH, subscription, notification.notice, dedupe=True)
                taken += 1
            except Refused as refusal:
                subscription_id = str(item.get("subscriptionId", ""))[:64]
                self._count(
                    GRAPH,
                    refusal.reason,
                    refusal.status,
                    self._client(request),
                    request.path,
                    subscription_id=subscription_id,
                )
                first_refusal = first_refusal or refusal
        if taken or first_refusal is None:
            return web.Response(status=202)
        return web.Response(status=first_refusal.status, text=ANSWERS.get(first_refusal.status, "refused\n"))

    # --- Google Calendar and Drive channels

    async def google(self, request: web.Request, _: bytes) -> web.Response:
        message = notifications.channel_message(request.headers)
        subscription = await self._registry.lookup(GOOGLE, message.channel_id)
        if subscription is None or subscription.kind not in {"calendar", "files"}:
            raise Refused("unknown_channel", FORBIDDEN)
        if not subscription.verifies(message.token):
            raise Refused("channel_token", FORBIDDEN)
        if message.resource_id != subscription.resource:
            raise Refused("resource_mismatch", FORBIDDEN)
        ttl = int((subscription.expires_at + GRACE - self._clock.now()).total_seconds())
        previous = await self._store.advance_channel(message.channel_id, message.number, ttl)
        if previous is None:
            # Google retried a message we took, or someone replays one: acknowledged, not published. (Google
            # does not promise order either; an older message after a newer one adds nothing, as each only
            # says "read the changes".)
            REFUSED.labels(GOOGLE, "replay").inc()
            log.info(
                "webhook replay not published", extra={"provider": GOOGLE, "event_id": message.notice.id}
            )
            return web.Response(status=200)
        if message.is_sync:
            # The channel's first message says it works, not that anything changed: nothing to publish.
            log.info("google channel started", extra={"subscription_id": message.channel_id})
            return web.Response(status=200)
        try:
            await self._publish(GOOGLE, subscription, message.notice, dedupe=False)
        except BaseException:
            await _quietly(self._store.restore_channel(message.channel_id, message.number, previous))
            raise
        return web.Response(status=200)

    # --- Google Health API

    async def google_health(self, request: web.Request, body: bytes) -> web.Response:
        document = notifications.parse_json(body)
        authorization = request.headers.get("Authorization")
        if notifications.is_health_verification(document):
            if authorization is None or not self._health_authorized(authorization):
                raise Refused("verification_unauthorized", UNAUTHORIZED)
            return web.Response(status=201)
        signature = next((request.headers[h] for h in HEALTH_SIGNATURE_HEADERS if h in request.headers), "")
        if not signature:
            raise Refused("missing_signature", UNAUTHORIZED)
        if not self._health_keys:
            raise Refused("no_public_key", UNAUTHORIZED)
        if not signatures.verify(signature, body, self._health_keys):
            raise Refused("bad_signature", UNAUTHORIZED)
        # The secret is documented as sent with every notification, and reported missing after verification:
        # taken when absent, refused when wrong.
        if authorization is not None and not self._health_authorized(authorization):
            raise Refused("bad_authorization", UNAUTHORIZED)
        for change in notifications.health_changes(document):
            subscription = await self._registry.lookup(GOOGLE, health_subscription_id(change.health_user_id))
            if subscription is None or subscription.kind != "health":
                # Signed by Google, for someone we do not follow (any more): acknowledged, not published.
                self._count(GOOGLE_HEALTH, "unknown_subscription", 204, self._client(request), request.path)
                continue
            await self._publish(GOOGLE_HEALTH, subscription, change.notice, dedupe=True)
        return web.Response(status=204)

    def _health_authorized(self, authorization: str) -> bool:
        if self._health_secret is None:
            return False
        return hmac.compare_digest(authorization.encode(), self._health_secret.encode())


def _event(subscription: Subscription, notice: Notice, now: datetime) -> events_pb2.ProviderEvent:
    event = events_pb2.ProviderEvent(
        id=notice.id,
        provider=subscription.provider,
        kind=Kind.KIND_SUBSCRIPTION_LIFECYCLE
        if notice.lifecycle
        else KINDS.get(subscription.kind, Kind.KIND_UNSPECIFIED),
        user_id=subscription.user_id,
        subscription_id=subscription.subscription_id,
        resource=notice.resource or subscription.resource,
        change=notice.change,
        interval_start=notice.interval_start,
        interval_end=notice.interval_end,
    )
    event.received_at.FromDatetime(now)
    return event


async def _quietly(undo: Awaitable[None]) -> None:
    """Runs an undo after a failed publish; its own failure is logged, the publish's error stands."""
    try:
        await undo
    except TRANSIENT as exc:
        log.warning("undoing a webhook's record failed", extra={"error": str(exc)})
