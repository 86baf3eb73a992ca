"""The webhooks service started in-process (as `python -m webhooks` builds it) against a real Valkey:
what each provider sends, verified as its reference documents, and what reaches the event bus.

Each test registers its own subscriptions for a person of its own and reads the stream for that person
only, so tests sharing the session's Valkey never see each other's events.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from athena.events.v1 import events_pb2
from conftest import StartService, service_settings
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from tracing_fixtures import recording_spans

from devstack.valkey import EmbeddedValkey
from mesh.app import Deps
from mesh.events import STREAM, decode
from mesh.subscriptions import SubscriptionRegistry, health_subscription_id
from mesh.tokens import TokenVerifier
from webhooks.app import WEBHOOKS
from webhooks.settings import WebhooksSettings

Kind = events_pb2.ProviderEvent.Kind
HEALTH_SECRET = "Bearer health-subscriber-secret"
CLIENT_STATE = "graph-client-state-secret"
CHANNEL_TOKEN = "google-channel-token"


@dataclass
class Hooks:
    client: httpx.AsyncClient
    registry: SubscriptionRegistry
    redis: Redis
    key: ec.EllipticCurvePrivateKey
    user_id: str

    async def events(self) -> list[events_pb2.ProviderEvent]:
        """Every event on the bus for this test's person."""
        entries = await self.redis.xrange(STREAM, "-", "+")
        found = [decode({str(k): str(v) for k, v in fields.items()}) for _, fields in entries]
        return [event for event in found if event.user_id == self.user_id]

    async def metric(self, provider: str, reason: str) -> float:
        text = (await self.client.get("/metrics")).text
        line = f'athena_webhooks_refused_total{{provider="{provider}",reason="{reason}"}} '
        values = [float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)]
        return values[0] if values else 0.0

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


HooksFactory = Callable[..., Awaitable[Hooks]]


@pytest_asyncio.fixture
async def make_hooks(
    start_service: StartService, valkey: EmbeddedValkey, verifier: TokenVerifier, tmp_path: Path
) -> AsyncIterator[HooksFactory]:
    clients: list[httpx.AsyncClient] = []
    redis = Redis.from_url(valkey.url, decode_responses=True)
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "health-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    async def make(**overrides: Any) -> Hooks:
        settings = WebhooksSettings(
            **service_settings(
                tmp_path,
                **{
                    "redis_url": valkey.url,
                    "google_health_secret": HEALTH_SECRET,
                    "google_health_public_keys": public,
                    **overrides,
                },
            )
        )
        running = await start_service(WEBHOOKS, settings, Deps(verifier=verifier))
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}", timeout=5)
        clients.append(client)
        return Hooks(client, SubscriptionRegistry(redis), redis, key, f"user-{uuid.uuid4().hex}")

    yield make
    for client in clients:
        await client.aclose()
    await redis.aclose()


@pytest_asyncio.fixture
async def hooks(make_hooks: HooksFactory) -> Hooks:
    return await make_hooks()


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(days=2)


async def graph_subscription(hooks: Hooks, kind: str = "calendar") -> str:
    subscription_id = str(uuid.uuid4())
    await hooks.registry.register(
        "microsoft",
        subscription_id,
        user_id=hooks.user_id,
        kind=kind,
        resource="me/events",
        secret=CLIENT_STATE,
        expires_at=soon(),
    )
    return subscription_id


def graph_item(subscription_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2026-11-08T10:00:00.0000000Z",
        "changeType": "updated",
        "resource": "Users/abc/Events/AAMk1",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Event",
            "@odata.id": "Users/abc/Events/AAMk1",
            "id": "AAMk1",
        },
        "clientState": CLIENT_STATE,
        "tenantId": str(uuid.uuid4()),
        **fields,
    }


# --- Microsoft Graph


async def test_graph_validation_handshake_echoes_the_decoded_token_as_plain_text(hooks: Hooks) -> None:
    for path in ("/webhooks/graph", "/webhooks/graph/lifecycle"):
        answer = await hooks.client.post(f"{path}?validationToken=Validation%3A%20Testing%20%3Cclient%3E")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.text == "Validation: Testing <client>"


async def test_graph_notifications_publish_one_event_each_and_answer_202(hooks: Hooks) -> None:
    subscription_id = await graph_subscription(hooks)
    batch = {"value": [graph_item(subscription_id), graph_item(subscription_id, changeType="deleted")]}
    answer = await hooks.client.post("/webhooks/graph", json=batch)
    assert answer.status_code == 202
    events = await hooks.events()
    assert [(e.kind, e.change, e.provider, e.subscription_id) for e in events] == [
        (Kind.KIND_CALENDAR_CHANGED, "updated", "microsoft", subscription_id),
        (Kind.KIND_CALENDAR_CHANGED, "deleted", "microsoft", subscription_id),
    ]
    assert events[0].resource == "Users/abc/Events/AAMk1"
    assert events[0].id != events[1].id


async def test_a_notification_continues_the_edge_s_trace_into_each_publish(hooks: Hooks) -> None:
    """While tracing: the request's span continues the trace of the `traceparent` Envoy sent, and each event
    is published in a PRODUCER span under it whose context its stream entry carries."""
    subscription_id = await graph_subscription(hooks)
    batch = {"value": [graph_item(subscription_id), graph_item(subscription_id, changeType="deleted")]}
    trace_id, edge_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with recording_spans() as exporter:
        answer = await hooks.client.post(
            "/webhooks/graph", json=batch, headers={"traceparent": f"00-{trace_id}-{edge_span}-01"}
        )
    assert answer.status_code == 202
    spans = exporter.get_finished_spans()
    (request,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert request.name == "POST /webhooks/graph"
    assert format(request.context.trace_id, "032x") == trace_id
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == edge_span
    assert dict(request.attributes or {})["http.response.status_code"] == 202
    sends = [span for span in spans if span.kind is SpanKind.PRODUCER]
    assert len(sends) == 2
    assert all(send.parent is not None and send.parent.span_id == request.context.span_id for send in sends)
    entries = await hooks.redis.xrange(STREAM)
    carried = {fields["traceparent"].split("-")[2] for _, fields in entries if "traceparent" in fields}
    assert {format(send.context.span_id, "016x") for send in sends} <= carried


async def test_graph_batch_with_one_wrong_client_state_publishes_only_the_good_ones(hooks: Hooks) -> None:
    subscription_id = await graph_subscription(hooks, kind="files")
    before = await hooks.metric("microsoft", "client_state")
    batch = {"value": [graph_item(subscription_id, clientState="forged"), graph_item(subscription_id)]}
    answer = await hooks.client.post("/webhooks/graph", json=batch)
    assert answer.status_code == 202
    assert [e.kind for e in await hooks.events()] == [Kind.KIND_FILES_CHANGED]
    assert await hooks.metric("microsoft", "client_state") == before + 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"clientState": "forged"}, "client_state"),
        ({"clientState": None}, "missing_client_state"),
        ({"subscriptionId": "00000000-0000-0000-0000-000000000000"}, "unknown_subscription"),
    ],
)
async def test_graph_notifications_failing_verification_are_refused_403(
    hooks: Hooks, change: dict[str, Any], reason: str
) -> None:
    subscription_id = await graph_subscription(hooks)
    before = await hooks.metric("microsoft", reason)
    answer = await hooks.client.post(
        "/webhooks/graph", json={"value": [graph_item(subscription_id, **change)]}
    )
    assert answer.status_code == 403
    assert await hooks.events() == []
    assert await hooks.metric("microsoft", reason) == before + 1


async def test_the_same_graph_notification_twice_is_published_once(hooks: Hooks) -> None:
    subscription_id = await graph_subscription(hooks)
    batch = {"value": [graph_item(subscription_id, id="notification-1")]}
    first = await hooks.client.post("/webhooks/graph", json=batch)
    again = await hooks.client.post("/webhooks/graph", json=batch)
    assert (first.status_code, again.status_code) == (202, 202)  # Graph must stop retrying
    assert len(await hooks.events()) == 1
    assert (await hooks.events())[0].id == "graph:notification-1"


async def test_graph_lifecycle_notifications_are_published_as_lifecycle_events(hooks: Hooks) -> None:
    subscription_id = await graph_subscription(hooks)
    items = [
        {
            "subscriptionId": subscription_id,
            "subscriptionExpirationDateTime": "2026-11-08T10:00:00.0000000Z",
            "tenantId": str(uuid.uuid4()),
            "clientState": CLIENT_STATE,
            "lifecycleEvent": event,
        }
        for event in ("reauthorizationRequired", "subscriptionRemoved", "missed")
    ]
    answer = await hooks.client.post("/webhooks/graph/lifecycle", json={"value": items})
    assert answer.status_code == 202
    events = await hooks.events()
    assert [(e.kind, e.change) for e in events] == [
        (Kind.KIND_SUBSCRIPTION_LIFECYCLE, "reauthorizationRequired"),
        (Kind.KIND_SUBSCRIPTION_LIFECYCLE, "subscriptionRemoved"),
        (Kind.KIND_SUBSCRIPTION_LIFECYCLE, "missed"),
    ]


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"value": []}', b"[]", b'{"value": [{"changeType": "updated"}]}']
)
async def test_malformed_graph_posts_are_refused_400(hooks: Hooks, body: bytes) -> None:
    answer = await hooks.client.post(
        "/webhooks/graph", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert "Traceback" not in answer.text


# --- Google Calendar and Drive channels


async def google_channel(hooks: Hooks, kind: str = "calendar") -> str:
    channel_id = str(uuid.uuid4())
    await hooks.registry.register(
        "google",
        channel_id,
        user_id=hooks.user_id,
        kind=kind,
        resource="resource-1",
        secret=CHANNEL_TOKEN,
        expires_at=soon(),
    )
    return channel_id


def channel_headers(channel_id: str, number: int, state: str = "exists", **extra: str) -> dict[str, str]:
    headers = {
        "X-Goog-Channel-ID": channel_id,
        "X-Goog-Channel-Token": CHANNEL_TOKEN,
        "X-Goog-Channel-Expiration": "Tue, 19 Nov 2026 01:13:52 GMT",
        "X-Goog-Resource-ID": "resource-1",
        "X-Goog-Resource-URI": "https://www.googleapis.com/calendar/v3/calendars/primary/events",
        "X-Goog-Resource-State": state,
        "X-Goog-Message-Number": str(number),
    }
    headers.update(extra)
    return headers


async def test_google_channel_messages_publish_one_event_each_and_sync_publishes_nothing(
    hooks: Hooks,
) -> None:
    channel_id = await google_channel(hooks)
    sync = await hooks.client.post("/webhooks/google", headers=channel_headers(channel_id, 1, "sync"))
    assert sync.status_code == 200
    assert await hooks.events() == []
    for number, state in ((2, "exists"), (5, "not_exists")):
        answer = await hooks.client.post(
            "/webhooks/google", headers=channel_headers(channel_id, number, state)
        )
        assert answer.status_code == 200
    events = await hooks.events()
    assert [(e.kind, e.change, e.id) for e in events] == [
        (Kind.KIND_CALENDAR_CHANGED, "exists", f"google:{channel_id}:2"),
        (Kind.KIND_CALENDAR_CHANGED, "not_exists", f"google:{channel_id}:5"),
    ]
    assert events[0].resource == "https://www.googleapis.com/calendar/v3/calendars/primary/events"


async def test_a_replayed_google_message_number_is_acknowledged_and_not_published(hooks: Hooks) -> None:
    channel_id = await google_channel(hooks, kind="files")
    before = await hooks.metric("google", "replay")
    first = await hooks.client.post("/webhooks/google", headers=channel_headers(channel_id, 7, "change"))
    same = await hooks.client.post("/webhooks/google", headers=channel_headers(channel_id, 7, "change"))
    older = await hooks.client.post("/webhooks/google", headers=channel_headers(channel_id, 3, "change"))
    assert (first.status_code, same.status_code, older.status_code) == (200, 200, 200)
    assert [e.kind for e in await hooks.events()] == [Kind.KIND_FILES_CHANGED]
    assert await hooks.metric("google", "replay") == before + 2


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"X-Goog-Channel-Token": "forged"}, 403, "channel_token"),
        ({"X-Goog-Resource-ID": "another-resource"}, 403, "resource_mismatch"),
        ({"X-Goog-Channel-ID": "unknown-channel"}, 403, "unknown_channel"),
        ({"X-Goog-Channel-Token": ""}, 403, "missing_channel_token"),
        ({"X-Goog-Message-Number": ""}, 400, "missing_headers"),
        ({"X-Goog-Message-Number": "-3"}, 400, "malformed_message_number"),
        ({"X-Goog-Resource-State": "exploded"}, 400, "unknown_resource_state"),
    ],
)
async def test_google_channel_messages_failing_verification_are_refused(
    hooks: Hooks, change: dict[str, str], status: int, reason: str
) -> None:
    channel_id = await google_channel(hooks)
    before = await hooks.metric("google", reason)
    answer = await hooks.client.post("/webhooks/google", headers=channel_headers(channel_id, 2, **change))
    assert answer.status_code == status
    assert await hooks.events() == []
    assert await hooks.metric("google", reason) == before + 1
    # A refused message does not take its number: Google's genuine one still goes through.
    genuine = await hooks.client.post("/webhooks/google", headers=channel_headers(channel_id, 2))
    assert genuine.status_code == 200
    assert len(await hooks.events()) == 1


# --- Google Health API


async def test_health_verification_is_answered_201_with_the_secret_and_401_without(hooks: Hooks) -> None:
    body = {"type": "verification"}
    with_secret = await hooks.client.post(
        "/webhooks/google-health", json=body, headers={"Authorization": HEALTH_SECRET}
    )
    without = await hooks.client.post("/webhooks/google-health", json=body)
    wrong = await hooks.client.post(
        "/webhooks/google-health", json=body, headers={"Authorization": "Bearer x"}
    )
    assert (with_secret.status_code, without.status_code, wrong.status_code) == (201, 401, 401)


def health_body(health_user_id: str, data_type: str = "steps") -> bytes:
    notification = {
        "data": {
            "healthUserId": health_user_id,
            "dataType": data_type,
            "operation": "UPSERT",
            "civilIso8601TimeInterval": {
                "startTime": "2026-11-02T08:00:00",
                "endTime": "2026-11-02T09:00:00",
            },
        }
    }
    return json.dumps(notification).encode()


async def health_subscription(hooks: Hooks) -> str:
    health_user_id = uuid.uuid4().hex
    await hooks.registry.register(
        "google",
        health_subscription_id(health_user_id),
        user_id=hooks.user_id,
        kind="health",
        resource=f"users/{health_user_id}",
        secret=HEALTH_SECRET,
        expires_at=soon(),
    )
    return health_user_id


async def test_signed_health_notifications_publish_one_event_and_a_replay_none(hooks: Hooks) -> None:
    health_user_id = await health_subscription(hooks)
    body = health_body(health_user_id)
    headers = {"X-HEALTHAPI-SIGNATURE": hooks.sign(body), "content-type": "application/json"}
    first = await hooks.client.post("/webhooks/google-health", content=body, headers=headers)
    again = await hooks.client.post("/webhooks/google-health", content=body, headers=headers)
    assert (first.status_code, again.status_code) == (204, 204)
    events = await hooks.events()
    assert [(e.kind, e.change, e.resource, e.interval_start, e.interval_end) for e in events] == [
        (Kind.KIND_HEALTH_CHANGED, "UPSERT", "steps", "2026-11-02T08:00:00", "2026-11-02T09:00:00")
    ]
    assert events[0].provider == "google"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_signature"),
        ({"X-HEALTHAPI-SIGNATURE": "bm90IGEgc2lnbmF0dXJl"}, "bad_signature"),
        ({"X-HEALTHAPI-SIGNATURE": "%%%"}, "bad_signature"),
    ],
)
async def test_health_notifications_without_a_valid_signature_are_refused_401(
    hooks: Hooks, headers: dict[str, str], reason: str
) -> None:
    health_user_id = await health_subscription(hooks)
    before = await hooks.metric("google-health", reason)
    answer = await hooks.client.post(
        "/webhooks/google-health", content=health_body(health_user_id), headers=headers
    )
    assert answer.status_code == 401
    assert await hooks.events() == []
    assert await hooks.metric("google-health", reason) == before + 1


async def test_a_health_signature_of_another_body_is_refused(hooks: Hooks) -> None:
    health_user_id = await health_subscription(hooks)
    signed_for = health_body(health_user_id, "sleep")
    answer = await hooks.client.post(
        "/webhooks/google-health",
        content=health_body(health_user_id, "steps"),
        headers={"X-HEALTHAPI-SIGNATURE": hooks.sign(signed_for)},
    )
    assert answer.status_code == 401
    assert await hooks.events() == []


async def test_a_health_signature_by_another_key_is_refused(hooks: Hooks) -> None:
    health_user_id = await health_subscription(hooks)
    body = health_body(health_user_id)
    other = ec.generate_private_key(ec.SECP256R1())
    signature = base64.b64encode(other.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    answer = await hooks.client.post(
        "/webhooks/google-health", content=body, headers={"X-HEALTHAPI-SIGNATURE": signature}
    )
    assert answer.status_code == 401
    assert await hooks.events() == []


async def test_malformed_health_json_is_refused_400(hooks: Hooks) -> None:
    answer = await hooks.client.post("/webhooks/google-health", content=b"{nope")
    assert answer.status_code == 400


# --- limits, refusals


async def test_bodies_above_the_limit_are_refused_413_and_nothing_is_published(hooks: Hooks) -> None:
    subscription_id = await graph_subscription(hooks)
    padding = "x" * (1024 * 1024)
    batch = {"value": [graph_item(subscription_id, padding=padding)]}
    answer = await hooks.client.post("/webhooks/graph", json=batch)
    assert answer.status_code == 413
    assert await hooks.events() == []


async def test_each_source_address_is_rate_limited_429(make_hooks: HooksFactory) -> None:
    hooks = await make_hooks(rate_limit=3, rate_window_seconds=600)
    client_ip = {"X-Forwarded-For": f"203.0.113.7, 10.{uuid.uuid4().int % 250}.0.1"}
    answers = [
        (await hooks.client.post("/webhooks/graph?validationToken=t", headers=client_ip)).status_code
        for _ in range(4)
    ]
    assert answers == [200, 200, 200, 429]
    another = await hooks.client.post(
        "/webhooks/graph?validationToken=t", headers={"X-Forwarded-For": "198.51.100.9"}
    )
    assert another.status_code == 200
    assert await hooks.metric("microsoft", "rate_limited") >= 1


async def test_refusals_are_logged_in_one_line_without_the_body(
    hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    subscription_id = await graph_subscription(hooks)
    secret_marker = "do-not-log-this-body"
    await hooks.client.post(
        "/webhooks/graph", json={"value": [graph_item(subscription_id, clientState=secret_marker)]}
    )
    refusals = [r for r in caplog.records if r.getMessage() == "webhook refused"]
    assert refusals, "the refusal is logged"
    assert all(secret_marker not in str(vars(r)) for r in caplog.records)
    assert getattr(refusals[-1], "reason", None) == "client_state"


async def test_a_notification_redis_cannot_take_is_answered_503_and_counted_against_the_budget(
    make_hooks: HooksFactory,
) -> None:
    from devstack.process import free_port

    hooks = await make_hooks(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there

    def failed(text: str) -> float:
        line = 'athena_webhooks_failed_total{provider="google",reason="unavailable"} '
        return next((float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)), 0.0)

    before = failed((await hooks.client.get("/metrics")).text)
    answer = await hooks.client.post("/webhooks/google", headers=channel_headers("a-channel", 2))
    assert answer.status_code == 503
    assert failed((await hooks.client.get("/metrics")).text) == before + 1
