"""What each provider's notification says, read and checked as its reference documents, with no I/O.

Microsoft Graph (learn.microsoft.com/graph/change-notifications-delivery-webhooks,
`change-notifications-lifecycle-events`, `api/resources/changenotification`):
- validation: `POST {url}?validationToken=<token>`, answered within 10 s with 200, `text/plain`, the
  URL-decoded token as the body (both the notification and the lifecycle URL);
- notifications: `{"value": [changeNotification, ...]}`; each carries `subscriptionId`, `clientState`
  (compared with the subscription's), `changeType` (change notifications) or `lifecycleEvent`
  (`reauthorizationRequired`, `subscriptionRemoved`, `missed`: lifecycle notifications), `resource`,
  `subscriptionExpirationDateTime`, `tenantId` and, optionally, `id` ("unique ID for the notification");
- any 2xx means delivered; answer within 3 s, 202 when the work is queued; anything else is retried for up
  to 4 hours. A notification whose clientState does not match is not processed.

Google Calendar and Drive push channels (developers.google.com/workspace/calendar/api/guides/push,
`drive/api/guides/push`): a POST with no meaningful body; `X-Goog-Channel-ID`, `X-Goog-Channel-Token` (what
we gave `watch`), `X-Goog-Resource-ID`, `X-Goog-Resource-URI`, `X-Goog-Resource-State` (`sync` when the
channel starts; Calendar `exists`/`not_exists`; Drive `add`, `remove`, `update`, `trash`, `untrash`,
`change`) and `X-Goog-Message-Number` (1 for `sync`, rising after, not necessarily by one).

Google Health API subscribers (developers.google.com/health/webhooks, `reference/rest/v4/
projects.subscribers`): verification is `{"type": "verification"}` POSTed twice, once with the subscriber's
`Authorization` secret (answer 201) and once without (answer 401 or 403); notifications are signed
(`webhooks.signatures`). The payload is not documented officially; clients of the live API read
`{"data": {"healthUserId", "dataType", "operation", "civilIso8601TimeInterval": {"startTime", "endTime"}}}`,
one object or a list of them.

Everything here raises `Refused` for what must not be published; `webhooks.endpoints` turns that into an
HTTP status, a counter and a log line (never the body).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MALFORMED = 400
UNAUTHORIZED = 401
FORBIDDEN = 403

GRAPH_LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
GRAPH_CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
GOOGLE_STATES = frozenset(
    {"sync", "exists", "not_exists", "add", "remove", "update", "trash", "untrash", "change"}
)
"""Calendar's and Drive's `X-Goog-Resource-State` values."""
GOOGLE_SYNC = "sync"
MAX_VALIDATION_TOKEN = 1024
"""Graph's validation tokens are opaque and short; a longer one is not Graph's."""
MAX_FIELD = 2048
"""The longest id, resource or state taken from a notification."""


class Refused(Exception):
    """A notification (or a whole request) that must not be published: `reason` for the counter and the log,
    `status` for the provider."""

    def __init__(self, reason: str, status: int = MALFORMED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Notice:
    """A verified notification, as the event bus will carry it (`athena.events.v1.ProviderEvent`)."""

    id: str
    """The dedupe key: equal for the same notification delivered twice."""
    subscription_id: str
    resource: str
    change: str
    lifecycle: bool = False
    interval_start: str = ""
    interval_end: str = ""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _text(item: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = item.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
        raise Refused("malformed")
    return value


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused("malformed_json") from exc


# --- Microsoft Graph


def graph_validation_token(token: str) -> str:
    """The body of the answer to a validation request: the token as given (aiohttp URL-decoded it)."""
    if not token or len(token) > MAX_VALIDATION_TOKEN:
        raise Refused("malformed_validation_token")
    return token


def graph_batch(body: bytes) -> list[Mapping[str, Any]]:
    """The notifications of a Graph POST (`value`), each still to be checked on its own."""
    document = parse_json(body)
    if not isinstance(document, dict) or not isinstance(document.get("value"), list) or not document["value"]:
        raise Refused("malformed")
    return [item if isinstance(item, dict) else {} for item in document["value"]]


@dataclass(frozen=True)
class GraphNotification:
    subscription_id: str
    client_state: str
    notice: Notice


def graph_notification(item: Mapping[str, Any], *, lifecycle: bool) -> GraphNotification:
    """One item of `value`: a change notification, or (`lifecycle`) a lifecycle notification."""
    subscription_id = _text(item, "subscriptionId")
    client_state = item.get("clientState")
    if not isinstance(client_state, str) or not client_state:
        raise Refused("missing_client_state", FORBIDDEN)
    expires = _text(item, "subscriptionExpirationDateTime", required=False)
    notification_id = _text(item, "id", required=False)
    if lifecycle:
        event = _text(item, "lifecycleEvent")
        if event not in GRAPH_LIFECYCLE_EVENTS:
            raise Refused("unknown_lifecycle_event")
        resource = _text(item, "resource", required=False)
        key = notification_id or _digest(subscription_id, event, expires)
        notice = Notice(f"graph:{key}", subscription_id, resource, event, lifecycle=True)
    else:
        change = _text(item, "changeType")
        if not set(change.split(",")) <= GRAPH_CHANGE_TYPES:
            raise Refused("unknown_change_type")
        resource = _text(item, "resource")
        data = item.get("resourceData")
        data_id = data.get("id", "") if isinstance(data, dict) else ""
        key = notification_id or _digest(subscription_id, change, resource, str(data_id), expires)
        notice = Notice(f"graph:{key}", subscription_id, resource, change)
    return GraphNotification(subscription_id, client_state, notice)


# --- Google Calendar and Drive channels


@dataclass(frozen=True)
class ChannelMessage:
    channel_id: str
    token: str
    resource_id: str
    state: str
    number: int
    notice: Notice

    @property
    def is_sync(self) -> bool:
        """The channel's first message: it says the channel works, not that anything changed."""
        return self.state == GOOGLE_SYNC


def channel_message(headers: Mapping[str, str]) -> ChannelMessage:
    """A channel notification from its headers (`headers` looked up case-insensitively by the caller)."""
    names = ("X-Goog-Channel-ID", "X-Goog-Resource-ID", "X-Goog-Resource-State", "X-Goog-Message-Number")
    values = [headers.get(name, "") for name in names]
    if not all(values) or any(len(value) > MAX_FIELD for value in values):
        raise Refused("missing_headers")
    channel_id, resource_id, state, number_text = values
    token = headers.get("X-Goog-Channel-Token", "")
    if not token:
        raise Refused("missing_channel_token", FORBIDDEN)
    if state not in GOOGLE_STATES:
        raise Refused("unknown_resource_state")
    if not number_text.isdigit() or not 0 < int(number_text) < 2**63:
        raise Refused("malformed_message_number")
    number = int(number_text)
    resource = headers.get("X-Goog-Resource-URI", "")[:MAX_FIELD] or resource_id
    notice = Notice(f"google:{channel_id}:{number}", channel_id, resource, state)
    return ChannelMessage(channel_id, token, resource_id, state, number, notice)


# --- Google Health API


def is_health_verification(document: Any) -> bool:
    """Whether a Health POST is the subscriber verification (`{"type": "verification"}`)."""
    return isinstance(document, dict) and document.get("type") == "verification"


@dataclass(frozen=True)
class HealthChange:
    health_user_id: str
    data_type: str
    notice: Notice


def health_changes(document: Any) -> list[HealthChange]:
    """The changes a (signature-verified) Health notification announces."""
    items = document if isinstance(document, list) else [document]
    if not items:
        raise Refused("malformed")
    changes = []
    for item in items:
        data = item.get("data") if isinstance(item, dict) else None
        if not isinstance(data, dict):
            raise Refused("malformed")
        user = _text(data, "healthUserId")
        data_type = _text(data, "dataType")
        operation = _text(data, "operation")
        interval = data.get("civilIso8601TimeInterval")
        if not isinstance(interval, dict):
            raise Refused("malformed")
        start, end = _text(interval, "startTime"), _text(interval, "endTime")
        # The payload carries no message id: what it identifies is whose data of which type changed how,
        # over which interval. The same payload twice is the same notification.
        key = _digest(user, data_type, operation, start, end)
        notice = Notice(f"health:{key}", user, data_type, operation, interval_start=start, interval_end=end)
        changes.append(HealthChange(user, data_type, notice))
    return changes
