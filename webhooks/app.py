"""The webhooks service, assembled (what `python -m webhooks`, `make run` and the tests start through
`mesh.app`): its endpoints on the HTTP port (`webhooks.endpoints`), gRPC for health only (probes, `make
run`), Redis for the subscriptions it verifies against, replays, rate limits and the event bus."""

from __future__ import annotations

import logging

from mesh.app import Assembly, Deps, ServiceApp
from mesh.events import EventBus
from mesh.ratelimit import WindowCounter
from mesh.subscriptions import SubscriptionRegistry
from webhooks.endpoints import Endpoints
from webhooks.settings import WebhooksSettings
from webhooks.signatures import load_keys
from webhooks.store import PREFIX, WebhookStore

log = logging.getLogger(__name__)


async def build(settings: WebhooksSettings, deps: Deps) -> Assembly:
    client = deps.redis(settings.redis_url, settings.redis_timeout_seconds)
    store = WebhookStore(client)
    keys_file = settings.google_health_public_keys
    # A key file that is named but absent (the optional ConfigMap of k8s/base/webhooks.yaml not created yet)
    # leaves Health refused, as no key does; a file that is there must be a key.
    health_keys = load_keys(keys_file) if keys_file is not None and keys_file.exists() else ()
    if not health_keys:
        log.warning(
            "no Google Health public key (WEBHOOKS_GOOGLE_HEALTH_PUBLIC_KEYS): its notifications are refused"
        )
    endpoints = Endpoints(
        settings,
        registry=SubscriptionRegistry(client),
        bus=EventBus(client),
        store=store,
        limiter=WindowCounter(
            client, f"{PREFIX}:rate", limit=settings.rate_limit, window_seconds=settings.rate_window_seconds
        ),
        health_keys=health_keys,
        clock=deps.clock,
    )
    # No gRPC service of its own: the server's overall health ("") follows Redis, which probes ask.
    return Assembly(services=[], readiness=store.ping, http_routes=endpoints.routes())


WEBHOOKS = ServiceApp(
    name="webhooks",
    description="AthenaOS webhooks service: provider notifications (Microsoft Graph, Google Calendar and "
    "Drive channels, Google Health API) verified as each provider documents, then published to the event "
    "bus. Serves them on its HTTP port under /webhooks/.",
    settings=WebhooksSettings,
    deps=Deps,
    build=build,
)
