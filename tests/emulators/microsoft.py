"""A local stand-in for the Microsoft identity platform v2 and the Microsoft Graph v1.0 calls AthenaOS makes.

One aiohttp application serves both hosts under their real paths; a client is given
`authorize_url(tenant)` / `token_url(tenant)` for https://login.microsoftonline.com/{tenant}/oauth2/v2.0/…
and `graph_base_url` for https://graph.microsoft.com/v1.0.

- Authorization-code flow with PKCE
  (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow): the authorize endpoint
  approves at once as the signed-in account and redirects back with `code` and `state` (or
  `error=access_denied&error_subcode=cancel`); codes are one-time and bound to the client, the redirect
  URI and the S256 challenge. A refresh token comes only when `offline_access` was asked for, and
  `offline_access` is never echoed in `scope`. Consent accumulates: a token carries every Graph permission
  the account has granted the client. Each refresh answers a new refresh token and the old one stays valid
  (https://learn.microsoft.com/entra/identity-platform/refresh-tokens). Errors have the platform's form
  `{"error","error_description":"AADSTS…","error_codes":[…],"timestamp","trace_id","correlation_id",
  "error_uri"}`. There is no revocation endpoint, as there is none at Microsoft: `revoke_grant` plays the
  user removing the app (refresh: `invalid_grant` AADSTS50173).
- Graph (https://learn.microsoft.com/graph/api/overview): `POST /me/calendar/getSchedule`
  (api/calendar-getschedule), `GET /me/calendarView` (api/user-list-calendarview: `$top` default 10,
  `@odata.nextLink` with `$skiptoken`, `Prefer: outlook.timezone`; an all-day event's start and end stay
  the midnights of its dates whatever zone is preferred, labelled with the preferred zone, its own zone in
  `originalStartTimeZone`, as Outlook answers: microsoftgraph/microsoft-graph-docs issues 1802 and 6003),
  `GET /me/drive/root/search(q='…')` (api/driveitem-search),
  `GET /me/drive/items/{id}` and `/content` (api/driveitem-get-content: 302 to a pre-authenticated,
  short-lived download URL this server also serves, with `Range`).
- Change-notification subscriptions (api/subscription-post-subscriptions, change-notifications-delivery-
  webhooks, change-notifications-lifecycle-events): `POST /subscriptions` validates `notificationUrl` and
  `lifecycleNotificationUrl` first (`POST {url}?validationToken=<opaque, URL-encoded>`, `Content-Type:
  text/plain`; anything but a 200 `text/plain` echo of the decoded token within `validation_timeout` seconds,
  10 at Graph, answers 400 `InvalidRequest`), checks `expirationDateTime` against the resource's maximum
  (Outlook event 10,080 minutes, driveItem 42,300; an HTTPS URL, or http on loopback here) and the
  permission (events: Calendars.Read; a drive root: Files.ReadWrite or Files.ReadWrite.All, `changeType`
  `updated` only), and answers 201 with the subscription. `PATCH /subscriptions/{id}` renews (200),
  `DELETE` answers 204, `POST /subscriptions/{id}/reauthorize` 204; an expired subscription is gone (404).
  `notify` and `notify_lifecycle` deliver change and lifecycle notifications as Graph POSTs them.

Graph errors are `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`:
401 `InvalidAuthenticationToken` for a missing, expired or revoked token, 403 for a missing permission,
404, and 429 `TooManyRequests` with `Retry-After` (https://learn.microsoft.com/graph/throttling).

Recurring events are not expanded: `add_event` refuses `recurrence`; add the occurrences instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from aiohttp import web

from .serving import RecordedRequest, recording, s256, serve

GRAPH = "https://graph.microsoft.com/"
OIDC_SCOPES = frozenset(["openid", "profile", "email", "offline_access"])
CONSUMER_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
"""The tenant of personal Microsoft accounts."""

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_CALENDAR_READ = frozenset(["calendars.read", "calendars.readwrite", "calendars.read.shared"])
_SCHEDULE_READ = _CALENDAR_READ | {"calendars.readbasic"}
_FILES_READ = frozenset(
    ["files.read", "files.read.all", "files.readwrite", "files.readwrite.all", "sites.read.all"]
)
_DRIVE_SUBSCRIBE = frozenset(["files.readwrite", "files.readwrite.all"])
"""A driveItem subscription needs Files.ReadWrite (personal) or Files.ReadWrite.All (work or school):
Files.Read is not enough (api/subscription-post-subscriptions, permissions)."""

SUBSCRIPTION_MAX_MINUTES = {"events": 10_080, "drive": 42_300}
"""The maximum lifetime of a subscription, by resource (api/resources/subscription: Outlook event under 7
days without resource data; OneDrive driveItem under 30 days)."""
_EVENTS_RESOURCES = frozenset(["me/events", "me/calendar/events"])
_DRIVE_RESOURCES = frozenset(["me/drive/root"])
_CHANGE_TYPES = frozenset(["created", "updated", "deleted"])
LIFECYCLE_EVENTS = frozenset(["reauthorizationRequired", "subscriptionRemoved", "missed"])

WINDOWS_ZONES = {
    "UTC": "UTC",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "Pacific Standard Time": "America/Los_Angeles",
    "Tokyo Standard Time": "Asia/Tokyo",
}
"""The Windows time-zone names Graph also accepts, for the zones the tests use; IANA names work too."""

_AVAILABILITY = {"free": "0", "tentative": "1", "busy": "2", "oof": "3", "workingElsewhere": "4"}
_PRIORITY = {"free": 0, "workingElsewhere": 1, "tentative": 2, "busy": 3, "oof": 4}
"""Which status wins a slot of `availabilityView` when events overlap."""


@dataclass
class _Client:
    client_id: str
    secret: str
    redirect_uris: tuple[str, ...]


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    code_challenge: str
    account: str
    offline: bool
    expires_at: float
    redeemed: bool = False


@dataclass
class _Refresh:
    account: str
    client_id: str
    expires_at: float


@dataclass
class _Access:
    account: str
    client_id: str
    scopes: frozenset[str]
    """Lower-case Graph permission names (`calendars.read`)."""
    expires_at: float
    serial: int
    """Order of issue: a revocation refuses every token issued before it."""


@dataclass
class _Item:
    id: str
    name: str
    mime_type: str
    content: bytes
    modified: datetime
    created: datetime


@dataclass
class _Subscription:
    id: str
    account: str
    client_id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: float

    def kind(self) -> str:
        return "drive" if _resource_key(self.resource) in _DRIVE_RESOURCES else "events"

    def render(self, creator_id: str) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _graph_utc(self.expires_at),
            "creatorId": creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationQueryOptions": None,
            "notificationUrlAppId": None,
        }


class _GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class MicrosoftEmulator:
    """The identity platform and Graph on one local server.

    Serve with `await start()` (then `base_url` is set), or mount `app` on a server of your own and set
    `base_url`. `clock` is wall-clock seconds (a `FakeClock.time` moves expiry).
    """

    expires_in: int = 3599
    refresh_token_lifetime: int = 90 * 24 * 3600
    download_url_lifetime: int = 3600
    clock: Callable[[], float] = time.time
    account: str | None = "person@contoso.com"
    tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    """The tenant of the (work) accounts; `consumers` sign-ins get CONSUMER_TENANT."""
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    clients: dict[str, _Client] = field(default_factory=dict)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _refresh: dict[str, _Refresh] = field(default_factory=dict)
    _access: dict[str, _Access] = field(default_factory=dict)
    _consented: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(account, client_id) -> scopes granted (full names, e.g. https://graph.microsoft.com/Calendars.Read)."""
    _revoked_at: dict[str, int] = field(default_factory=dict)
    """Account -> serial of the last access token issued before its grant was revoked."""
    _serial: int = 0
    _refuse_next: bool = False
    _rate_limited: int = 0
    _retry_after: int = 1
    _events: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _mailbox_zones: dict[str, str] = field(default_factory=dict)
    _items: dict[str, dict[str, _Item]] = field(default_factory=dict)
    _downloads: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    """Download token -> (account, item id, expiry)."""
    validation_timeout: float = 10.0
    """Seconds a notification URL has to answer its validation request (10 at Graph)."""
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    """Every subscription created and not deleted (an expired one is gone for the API, kept here)."""
    _app: web.Application | None = None
    _runner: web.AppRunner | None = None

    # --- serving ----------------------------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self._build_app()
        return self._app

    def authorize_url(self, tenant: str = "common") -> str:
        """Stands for https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize."""
        return f"{self.base_url}/{tenant}/oauth2/v2.0/authorize"

    def token_url(self, tenant: str = "common") -> str:
        """Stands for https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token."""
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    @property
    def oauth_authorize_url(self) -> str:
        return self.authorize_url()

    @property
    def oauth_token_url(self) -> str:
        return self.token_url()

    @property
    def login_base_url(self) -> str:
        """Stands for https://login.microsoftonline.com."""
        return self.base_url

    @property
    def graph_base_url(self) -> str:
        """Stands for https://graph.microsoft.com/v1.0."""
        return f"{self.base_url}/v1.0"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.base_url = await serve(self.app, host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[recording(self.requests)])
        add = app.router
        add.add_get("/{tenant}/oauth2/v2.0/authorize", self._authorize)
        add.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        add.add_post("/v1.0/me/calendar/getSchedule", self._get_schedule)
        add.add_get("/v1.0/me/calendarView", self._calendar_view)
        add.add_get("/v1.0/me/calendar/calendarView", self._calendar_view)
        add.add_get(r"/v1.0/me/drive/root/{search:search\(q=.*\)}", self._search)
        add.add_get("/v1.0/me/drive/items/{id}", self._item)
        add.add_get("/v1.0/me/drive/items/{id}/content", self._content)
        add.add_get("/download/{token}", self._download)
        add.add_post("/v1.0/subscriptions", self._create_subscription)
        add.add_patch("/v1.0/subscriptions/{id}", self._update_subscription)
        add.add_delete("/v1.0/subscriptions/{id}", self._delete_subscription)
        add.add_post("/v1.0/subscriptions/{id}/reauthorize", self._reauthorize_subscription)
        return app

    # --- test controls ----------------------------------------------------------------------------------

    def register_client(self, client_id: str, secret: str, redirect_uris: Iterable[str]) -> None:
        """An app registration with a client secret and "Web" redirect URIs."""
        self.clients[client_id] = _Client(client_id, secret, tuple(redirect_uris))

    def sign_in(self, account: str | None) -> None:
        """Who the authorize page approves as; None: nobody (`prompt=none` gets login_required)."""
        self.account = account

    def refuse_next_consent(self) -> None:
        """The next authorization is declined: `error=access_denied&error_subcode=cancel`."""
        self._refuse_next = True

    def mint_code(
        self,
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        scopes: Iterable[str],
        *,
        account: str | None = None,
    ) -> str:
        """A code as if `account` (default: the signed-in one) had consented to `scopes` in a browser; a
        refresh token comes with it when `offline_access` is among them."""
        who = account or self.account
        assert who is not None, "mint_code needs an account (sign_in or account=)"
        wanted = {_full_scope(s) for s in scopes}
        self._consented.setdefault((who, client_id), set()).update(wanted - {"offline_access"})
        return self._new_code(client_id, redirect_uri, code_challenge, who, "offline_access" in wanted)

    def expire_access_tokens(self) -> None:
        """Every access token minted so far expires now."""
        now = self.clock()
        for token in self._access.values():
            token.expires_at = min(token.expires_at, now - 1)

    def expire_refresh_tokens(self) -> None:
        """Every refresh token minted so far has run out (AADSTS700082 on use)."""
        now = self.clock()
        for token in self._refresh.values():
            token.expires_at = min(token.expires_at, now - 1)

    def revoke_grant(self, account: str, *, access_tokens_too: bool = True) -> None:
        """The user removes the app (or an admin revokes the sessions): refresh tokens answer invalid_grant.
        Access tokens are JWTs that Microsoft may honour until they expire; by default Graph refuses them at
        once (as with continuous access evaluation), `access_tokens_too=False` lets them run out."""
        for refresh in self._refresh.values():
            if refresh.account == account:
                refresh.expires_at = float("-inf")
        for key in [k for k in self._consented if k[0] == account]:
            del self._consented[key]
        if access_tokens_too:
            self._revoked_at[account] = self._serial

    def rate_limit_next(self, n: int, retry_after_seconds: int = 1) -> None:
        """The next `n` Graph calls answer 429 TooManyRequests with `Retry-After`."""
        self._rate_limited, self._retry_after = n, retry_after_seconds

    def add_mailbox(self, account: str, time_zone: str = "UTC") -> None:
        """A mailbox getSchedule can look up (adding an event adds its mailbox too)."""
        self._mailbox_zones[account] = time_zone
        self._events.setdefault(account, {})

    def add_event(self, account: str, event: dict[str, Any]) -> dict[str, Any]:
        """An event in Graph's JSON form: `subject`, `start`/`end` as dateTimeTimeZone (`{"dateTime":
        "2026-11-02T09:00:00","timeZone":"Europe/Berlin"}`; an all-day event has midnights and `isAllDay`),
        `showAs`, `sensitivity`... The fields Graph fills in are filled in (`originalStartTimeZone` and
        `originalEndTimeZone` from the zones of `start` and `end`, `webLink`...); the stored event is
        returned."""
        if event.get("recurrence"):
            raise ValueError("the emulator does not expand recurrences: add each occurrence as an event")
        self._mailbox_zones.setdefault(account, "UTC")
        stamp = _graph_utc(self.clock())
        stored: dict[str, Any] = {
            "id": "AAMkAG" + secrets.token_urlsafe(24),
            "createdDateTime": stamp,
            "lastModifiedDateTime": stamp,
            "isAllDay": False,
            "isCancelled": False,
            "showAs": "busy",
            "sensitivity": "normal",
            "type": "singleInstance",
            "seriesMasterId": None,
            "bodyPreview": "",
            "location": {"displayName": ""},
            **event,
        }
        stored.setdefault("originalStartTimeZone", stored["start"].get("timeZone") or "UTC")
        stored.setdefault("originalEndTimeZone", stored["end"].get("timeZone") or "UTC")
        stored.setdefault(
            "webLink",
            f"https://outlook.office365.com/owa/?itemid={quote(stored['id'], safe='')}"
            "&exvsurl=1&path=/calendar/item",
        )
        stored.setdefault("iCalUId", "040000008200E00074C5B7101A82E008" + secrets.token_hex(16).upper())
        stored.setdefault("@odata.etag", f'W/"{secrets.token_urlsafe(12)}"')
        for key in ("start", "end"):
            _graph_moment(stored[key])  # malformed times fail here
        self._events.setdefault(account, {})[stored["id"]] = stored
        return stored

    def add_file(
        self,
        account: str,
        name: str,
        mime_type: str,
        content: bytes,
        modified_time: datetime | None = None,
        *,
        item_id: str | None = None,
    ) -> str:
        """A file at the root of `account`'s OneDrive. Returns its driveItem id."""
        moment = modified_time or datetime.fromtimestamp(self.clock(), UTC)
        ident = item_id or "01" + base64.b32encode(secrets.token_bytes(20)).decode()[:32]
        self._items.setdefault(account, {})[ident] = _Item(ident, name, mime_type, content, moment, moment)
        return ident

    def live_subscriptions(self, account: str | None = None) -> list[_Subscription]:
        """Subscriptions not deleted nor expired (of `account`, or everyone's)."""
        now = self.clock()
        return [
            s
            for s in self.subscriptions.values()
            if s.expires_at > now and (account is None or s.account == account)
        ]

    def user_id(self, account: str) -> str:
        """The account's directory object id (stable: derived from the address)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"graph-user:{account}"))

    async def notify(self, account: str, resource: str, change_type: str, resource_data_id: str) -> list[int]:
        """A change to `account`'s `resource` ("me/events" or "me/drive/root"): every live subscription of
        theirs on it that asked for `change_type` gets a change notification POSTed to its notificationUrl,
        as Graph sends it (change-notifications-delivery-webhooks). An event's notification names the event
        (`Users/{id}/Events/{id}` with `resourceData`); a drive's names the subscribed folder and carries no
        resourceData, as OneDrive's do. Answers the status each notificationUrl answered."""
        wanted = _resource_key(resource)
        statuses = []
        for subscription in self.live_subscriptions(account):
            if _resource_key(subscription.resource) != wanted:
                continue
            if change_type not in subscription.change_type.split(","):
                continue
            item: dict[str, Any] = {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": _graph_utc(subscription.expires_at),
                "changeType": change_type,
                "clientState": subscription.client_state,
                "tenantId": self.tenant_id,
            }
            if subscription.kind() == "events":
                path = f"Users/{self.user_id(account)}/Events/{resource_data_id}"
                item["resource"] = path
                item["resourceData"] = {
                    "@odata.type": "#Microsoft.Graph.Event",
                    "@odata.id": path,
                    "@odata.etag": f'W/"{secrets.token_urlsafe(12)}"',
                    "id": resource_data_id,
                }
            else:
                item["resource"] = subscription.resource
            statuses.append(await self._deliver(subscription.notification_url, {"value": [item]}))
        return statuses

    async def notify_lifecycle(self, subscription_id: str, lifecycle_event: str) -> int:
        """A lifecycle notification of the subscription to its lifecycleNotificationUrl
        (change-notifications-lifecycle-events); `subscriptionRemoved` also removes it. Answers the status
        the URL answered."""
        if lifecycle_event not in LIFECYCLE_EVENTS:
            raise ValueError(f"unknown lifecycle event {lifecycle_event!r}")
        subscription = self.subscriptions[subscription_id]
        if subscription.lifecycle_url is None:
            raise ValueError("the subscription has no lifecycleNotificationUrl: Graph sends it nothing")
        if lifecycle_event == "subscriptionRemoved":
            del self.subscriptions[subscription_id]
        item = {
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": _graph_utc(subscription.expires_at),
            "tenantId": self.tenant_id,
            "clientState": subscription.client_state,
            "lifecycleEvent": lifecycle_event,
        }
        return await self._deliver(subscription.lifecycle_url, {"value": [item]})

    def remove_subscription(self, subscription_id: str) -> None:
        """Graph drops the subscription without a word (as when a lifecycle notification went unheard)."""
        del self.subscriptions[subscription_id]

    async def _deliver(self, url: str, payload: dict[str, Any]) -> int:
        async with httpx.AsyncClient(timeout=self.validation_timeout) as http:
            try:
                answer = await http.post(url, json=payload)
            except httpx.HTTPError:
                return 0
        return answer.status_code

    # --- identity platform ------------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        """Client and redirect URI errors are shown on the page; the others go back to the redirect URI."""
        query = request.query
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            return _error_page(
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{query.get('client_id', '')}' was not found in "
                "the directory.",
            )
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return _error_page(
                "invalid_request",
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does not match the "
                f"redirect URIs configured for the application '{client.client_id}'.",
            )
        state = query.get("state")

        def back(**params: str) -> web.StreamResponse:
            if state is not None:
                params["state"] = state
            raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")

        if query.get("response_type") != "code":
            return back(
                error="unsupported_response_type",
                error_description="AADSTS700054: response_type 'id_token' is not enabled for the "
                "application.",
            )
        if query.get("response_mode", "query") != "query":
            return back(
                error="invalid_request", error_description="AADSTS900144: only response_mode=query here"
            )
        wanted = {_full_scope(s) for s in query.get("scope", "").split()}
        if not wanted:
            return back(
                error="invalid_request",
                error_description="AADSTS900144: The request body must contain the following parameter: "
                "'scope'.",
            )
        challenge = query.get("code_challenge", "")
        if not challenge or query.get("code_challenge_method") != "S256":
            return back(
                error="invalid_request",
                error_description="AADSTS501491: Invalid size of Code_Challenge parameter or method "
                "not S256.",
            )
        prompts = set(query.get("prompt", "").split())
        if self.account is None:
            if "none" in prompts:
                return back(
                    error="login_required",
                    error_description="AADSTS50058: A silent sign-in request "
                    "was sent but no user is signed in.",
                )
            return web.Response(
                text="<html><body>Sign in to your account</body></html>", content_type="text/html"
            )
        earlier = self._consented.get((self.account, client.client_id), set())
        fresh = wanted - {"offline_access"}
        if "none" in prompts and not fresh <= earlier:
            return back(
                error="consent_required",
                error_description="AADSTS65001: The user or administrator has not consented to use the "
                f"application with ID '{client.client_id}'.",
            )
        if self._refuse_next:
            self._refuse_next = False
            return back(
                error="access_denied",
                error_subcode="cancel",
                error_description="AADSTS65004: User declined to consent to access the app.",
            )
        self._consented.setdefault((self.account, client.client_id), set()).update(fresh)
        code = self._new_code(
            client.client_id, redirect_uri, challenge, self.account, "offline_access" in wanted
        )
        return back(code=code)

    def _new_code(
        self, client_id: str, redirect_uri: str, challenge: str, account: str, offline: bool
    ) -> str:
        code = "0.A" + secrets.token_urlsafe(48)
        self._codes[code] = _Code(client_id, redirect_uri, challenge, account, offline, self.clock() + 600)
        return code

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, given = base64.b64decode(basic[6:]).decode().partition(":")
            secret = given
        client = self.clients.get(client_id)
        if client is None:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        if secret is None:
            return _aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        if not secrets.compare_digest(secret, client.secret):
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{client.client_id}'.",
            )
        grant_type = form.get("grant_type", "")
        if grant_type == "authorization_code":
            return self._redeem(client, form)
        if grant_type == "refresh_token":
            return self._refresh_grant(client, form)
        return _aad_error(
            400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
        )

    def _redeem(self, client: _Client, form: dict[str, str]) -> web.Response:
        code = self._codes.get(form.get("code", ""))
        if code is None or code.client_id != client.client_id:
            return _aad_error(
                400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
            )
        if code.redeemed:
            return _aad_error(
                400,
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or "
                "use an existing refresh token.",
            )
        if code.expires_at <= self.clock():
            return _aad_error(
                400,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token "
                "has expired due to inactivity. Send a new interactive authorization request.",
            )
        code.redeemed = True  # one-time, even when the rest of the request fails
        if form.get("redirect_uri") != code.redirect_uri:
            return _aad_error(
                400,
                "invalid_grant",
                500112,
                "The reply address does not match the reply address provided when requesting the "
                "authorization code.",
            )
        if not secrets.compare_digest(s256(form.get("code_verifier", "")), code.code_challenge):
            return _aad_error(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            )
        return self._tokens(code.account, client.client_id, offline=code.offline, asked=form.get("scope"))

    def _refresh_grant(self, client: _Client, form: dict[str, str]) -> web.Response:
        refresh = self._refresh.get(form.get("refresh_token", ""))
        if refresh is None or refresh.client_id != client.client_id:
            return _aad_error(
                400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
            )
        if refresh.expires_at == float("-inf"):
            return _aad_error(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
                "The user might have changed or reset their password.",
            )
        if refresh.expires_at <= self.clock():
            return _aad_error(
                400,
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity. The token was issued and was inactive for "
                "90.00:00:00.",
            )
        return self._tokens(refresh.account, client.client_id, offline=True, asked=form.get("scope"))

    def _tokens(self, account: str, client_id: str, *, offline: bool, asked: str | None) -> web.Response:
        granted = self._consented.get((account, client_id), set())
        graph = {s for s in granted if s.startswith(GRAPH)}
        if asked is not None:
            wanted = {_full_scope(s) for s in asked.split()} - OIDC_SCOPES
            if not wanted <= granted:
                return _aad_error(
                    400,
                    "invalid_grant",
                    65001,
                    "The user or administrator has not consented to use the application with ID "
                    f"'{client_id}'.",
                    suberror="consent_required",
                )
        now = self.clock()
        token = "EwB" + secrets.token_urlsafe(48)
        self._serial += 1
        permissions = frozenset(s.removeprefix(GRAPH).lower() for s in graph)
        self._access[token] = _Access(account, client_id, permissions, now + self.expires_in, self._serial)
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(sorted(granted - {"offline_access"})),
            "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in,
            "access_token": token,
        }
        if offline:
            refresh = "M.C5" + secrets.token_urlsafe(64)
            self._refresh[refresh] = _Refresh(account, client_id, now + self.refresh_token_lifetime)
            answer["refresh_token"] = refresh
        return web.json_response(answer, headers=_NO_STORE)

    # --- Graph plumbing ---------------------------------------------------------------------------------

    def _caller(self, request: web.Request, permissions: frozenset[str]) -> str:
        if self._rate_limited > 0:
            self._rate_limited -= 1
            raise _GraphError(429, "TooManyRequests", "Too many requests, please try again later.")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        token = self._access.get(header[7:].strip())
        if token is None:
            raise _GraphError(401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed.")
        if token.expires_at <= self.clock():
            raise _GraphError(
                401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            )
        if token.serial <= self._revoked_at.get(token.account, -1):
            raise _GraphError(
                401,
                "InvalidAuthenticationToken",
                "Continuous access evaluation resulted in challenge with result: InteractionRequired and "
                "code: TokenIssuedBeforeRevocationTimestamp",
            )
        if not token.scopes & permissions:
            raise _GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        return token.account

    def _graph_error(self, request: web.Request, error: _GraphError) -> web.Response:
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id", request_id)
        body = {
            "error": {
                "code": error.code,
                "message": error.message,
                "innerError": {
                    "date": datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": client_request_id,
                },
            }
        }
        headers = {"request-id": request_id, "client-request-id": client_request_id}
        if error.status == 401:
            headers["WWW-Authenticate"] = (
                'Bearer realm="", '
                'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                'client_id="00000003-0000-0000-c000-000000000000"'
            )
        if error.status == 429:
            headers["Retry-After"] = str(self._retry_after)
        return web.json_response(body, status=error.status, headers=headers)

    # --- calendar ---------------------------------------------------------------------------------------

    async def _get_schedule(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/calendar-getschedule"""
        try:
            self._caller(request, _SCHEDULE_READ)
            try:
                body = await request.json()
                start = _graph_moment(body["startTime"])
                end = _graph_moment(body["endTime"])
                schedules = [str(s) for s in body["schedules"]]
            except (ValueError, KeyError, TypeError):
                raise _GraphError(
                    400, "ErrorInvalidRequest", "schedules, startTime and endTime are required."
                ) from None
            interval = int(body.get("availabilityViewInterval", 30))
            if not 5 <= interval <= 1440:
                raise _GraphError(400, "ErrorInvalidParameter", "availabilityViewInterval must be 5 to 1440.")
            if end <= start:
                raise _GraphError(400, "ErrorInvalidParameter", "endTime must be after startTime.")
            zone_name, zone = _preferred_zone(request)
        except _GraphError as error:
            return self._graph_error(request, error)
        answers: list[dict[str, Any]] = []
        for address in schedules:
            if address not in self._mailbox_zones:
                answers.append(
                    {
                        "scheduleId": address,
                        "availabilityView": "",
                        "scheduleItems": [],
                        "workingHours": None,
                        "error": {
                            "message": f"The recipient {address} was not found.",
                            "responseCode": "ErrorMailRecipientNotFound",
                        },
                    }
                )
                continue
            items: list[tuple[datetime, datetime, dict[str, Any]]] = []
            for event in self._events.get(address, {}).values():
                s, e = _graph_moment(event["start"]), _graph_moment(event["end"])
                if not event.get("isCancelled") and s < end and e > start:
                    items.append((s, e, event))
            items.sort(key=lambda t: (t[0], t[2]["id"]))
            view = ""
            slot = start
            while slot < end:
                upper = slot + timedelta(minutes=interval)
                statuses = [ev.get("showAs", "busy") for s, e, ev in items if s < upper and e > slot]
                winner = max(statuses, key=lambda st: _PRIORITY.get(st, 0), default="free")
                view += _AVAILABILITY.get(winner, "0")
                slot = upper
            answers.append(
                {
                    "scheduleId": address,
                    "availabilityView": view,
                    "scheduleItems": [
                        {
                            "isPrivate": ev.get("sensitivity") == "private",
                            "status": ev.get("showAs", "busy"),
                            "subject": ev.get("subject", ""),
                            "location": (ev.get("location") or {}).get("displayName", ""),
                            "isMeeting": False,
                            "isRecurring": ev.get("type") in ("occurrence", "exception"),
                            "isException": ev.get("type") == "exception",
                            "isReminderSet": True,
                            "start": _graph_time(s, zone, zone_name),
                            "end": _graph_time(e, zone, zone_name),
                        }
                        for s, e, ev in items
                    ],
                    "workingHours": {
                        "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                        "startTime": "08:00:00.0000000",
                        "endTime": "17:00:00.0000000",
                        "timeZone": {"name": self._mailbox_zones[address]},
                    },
                }
            )
        return web.json_response(
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.scheduleInformation)",
                "value": answers,
            },
            headers=_applied(request, zone_name),
        )

    async def _calendar_view(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/user-list-calendarview"""
        query = request.query
        try:
            account = self._caller(request, _CALENDAR_READ)
            if "startDateTime" not in query or "endDateTime" not in query:
                raise _GraphError(
                    400,
                    "ErrorInvalidParameter",
                    "This request requires a time window specified by the query string parameters "
                    "StartDateTime and EndDateTime.",
                )
            low, high = _query_moment(query["startDateTime"]), _query_moment(query["endDateTime"])
            top = _top(request, default=10)
            offset = _skip(query)
            zone_name, zone = _preferred_zone(request)
        except _GraphError as error:
            return self._graph_error(request, error)
        listed = sorted(
            (
                (_graph_moment(e["start"]), e)
                for e in self._events.get(account, {}).values()
                if _graph_moment(e["start"]) < high and _graph_moment(e["end"]) > low
            ),
            key=lambda pair: (pair[0], pair[1]["id"]),
        )
        select = [s for s in query.get("$select", "").split(",") if s]
        page = [_render_event(e, zone, zone_name, select) for _, e in listed[offset : offset + top]]
        answer: dict[str, Any] = {
            "@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#users('{account}')/calendarView",
            "value": page,
        }
        if offset + top < len(listed):
            kept = {
                k: v for k, v in query.items() if k in ("startDateTime", "endDateTime", "$top", "$select")
            }
            kept["$skiptoken"] = _skiptoken(offset + top)
            answer["@odata.nextLink"] = f"{request.url.origin()}{request.path}?{_query_string(kept)}"
        return web.json_response(answer, headers=_applied(request, zone_name))

    # --- OneDrive ---------------------------------------------------------------------------------------

    async def _search(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/driveitem-search"""
        try:
            account = self._caller(request, _FILES_READ)
            match = re.fullmatch(r"search\(q='((?:[^']|'')*)'\)", request.match_info["search"])
            if match is None:
                raise _GraphError(400, "invalidRequest", "Invalid request")
            text = match.group(1).replace("''", "'")
            top = _top(request, default=200)
            offset = _skip(request.query)
        except _GraphError as error:
            return self._graph_error(request, error)
        words = _words(text)
        found = [
            item
            for item in self._items.get(account, {}).values()
            if words
            and (
                text.lower() in item.name.lower()
                or _contains_words(_words(item.name + " " + item.content.decode("utf-8", "ignore")), words)
            )
        ]
        page = found[offset : offset + top]
        answer: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(driveItem)",
            "value": [self._drive_item(account, item, request, download=False) for item in page],
        }
        if offset + top < len(found):
            kept = {k: v for k, v in request.query.items() if k in ("$top", "$select")}
            kept["$skiptoken"] = _skiptoken(offset + top)
            answer["@odata.nextLink"] = (
                f"{request.url.origin()}{quote(request.path, safe='/()=')}?{_query_string(kept)}"
            )
        return web.json_response(answer)

    def _find(self, account: str, item_id: str) -> _Item:
        item = self._items.get(account, {}).get(item_id)
        if item is None:
            raise _GraphError(404, "itemNotFound", "The resource could not be found.")
        return item

    async def _item(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/driveitem-get"""
        try:
            account = self._caller(request, _FILES_READ)
            item = self._find(account, request.match_info["id"])
        except _GraphError as error:
            return self._graph_error(request, error)
        return web.json_response(self._drive_item(account, item, request, download=True))

    async def _content(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/driveitem-get-content: 302 to a pre-authenticated URL."""
        try:
            account = self._caller(request, _FILES_READ)
            item = self._find(account, request.match_info["id"])
        except _GraphError as error:
            return self._graph_error(request, error)
        raise web.HTTPFound(self._download_url(account, item, request))

    def _download_url(self, account: str, item: _Item, request: web.Request) -> str:
        token = secrets.token_urlsafe(32)
        self._downloads[token] = (account, item.id, self.clock() + self.download_url_lifetime)
        return f"{request.url.origin()}/download/{token}?tempauth=1"

    async def _download(self, request: web.Request) -> web.Response:
        """The pre-authenticated download URL: no Authorization needed; `Range` answers 206."""
        entry = self._downloads.get(request.match_info["token"])
        if entry is None or entry[2] <= self.clock():
            return web.Response(status=401, text="The download URL has expired.")
        item = self._items.get(entry[0], {}).get(entry[1])
        if item is None:
            return web.Response(status=404)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match is None:
            return web.Response(body=item.content, content_type=item.mime_type)
        first = int(match[1])
        last = min(int(match[2]) if match[2] else len(item.content) - 1, len(item.content) - 1)
        if first > last:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(item.content)}"})
        return web.Response(
            status=206,
            body=item.content[first : last + 1],
            content_type=item.mime_type,
            headers={"Content-Range": f"bytes {first}-{last}/{len(item.content)}"},
        )

    # --- subscriptions ----------------------------------------------------------------------------------

    def _own_subscription(self, request: web.Request) -> tuple[str, _Subscription]:
        account = self._caller(request, _CALENDAR_READ | _FILES_READ)
        found = self.subscriptions.get(request.match_info["id"])
        if found is None or found.account != account or found.expires_at <= self.clock():
            raise _GraphError(
                404, "ResourceNotFound", f"The object '{request.match_info['id']}' doesn't exist."
            )
        return account, found

    def _expiry(self, value: Any, kind: str) -> float:
        try:
            moment = datetime.fromisoformat(_trim_fraction(str(value)).replace("Z", "+00:00"))
        except ValueError:
            raise _GraphError(400, "InvalidRequest", "expirationDateTime is not a valid date.") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        at = moment.timestamp()
        now = self.clock()
        if at <= now:
            raise _GraphError(400, "InvalidRequest", "Subscription expiration must be in the future.")
        maximum = SUBSCRIPTION_MAX_MINUTES[kind]
        if at > now + maximum * 60:
            raise _GraphError(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {maximum} minutes in the future.",
            )
        return at

    async def _validate(self, url: str) -> None:
        """The validation request of a notification URL (change-notifications-delivery-webhooks)."""
        parts = urlsplit(url)
        loopback = parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}
        if parts.scheme != "https" and not loopback:
            raise _GraphError(400, "InvalidRequest", f"The Url '{url}' must use HTTPS.")
        token = (
            f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        )
        separator = "&" if parts.query else "?"
        try:
            async with httpx.AsyncClient(timeout=self.validation_timeout) as http:
                answer = await http.post(
                    f"{url}{separator}validationToken={quote(token, safe='')}",
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                )
        except httpx.TimeoutException:
            raise _GraphError(400, "InvalidRequest", "Subscription validation request timed out.") from None
        except httpx.HTTPError:
            raise _GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK "
                "to validation request.",
            ) from None
        if answer.status_code != 200:
            raise _GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK "
                "to validation request.",
            )
        content_type = answer.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "text/plain" or answer.text != token:
            raise _GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. Response must exactly match validationToken "
                "query parameter.",
            )

    async def _create_subscription(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/subscription-post-subscriptions"""
        try:
            try:
                body = await request.json()
            except ValueError:
                raise _GraphError(400, "BadRequest", "Unable to read JSON request payload.") from None
            if not isinstance(body, dict):
                raise _GraphError(400, "BadRequest", "Unable to read JSON request payload.")
            resource = str(body.get("resource") or "")
            key = _resource_key(resource)
            if key in _EVENTS_RESOURCES:
                kind, permissions = "events", _CALENDAR_READ
            elif key in _DRIVE_RESOURCES:
                kind, permissions = "drive", _DRIVE_SUBSCRIBE
            else:
                self._caller(request, _CALENDAR_READ | _FILES_READ)
                raise _GraphError(400, "InvalidRequest", f"Resource '{resource}' is not supported.")
            account = self._caller(request, permissions)
            for name in ("changeType", "notificationUrl", "expirationDateTime"):
                if not body.get(name):
                    raise _GraphError(400, "InvalidRequest", f"The '{name}' property is required.")
            change_type = str(body["changeType"])
            kinds = change_type.split(",")
            if not kinds or any(k not in _CHANGE_TYPES for k in kinds):
                raise _GraphError(400, "InvalidRequest", f"Invalid changeType '{change_type}'.")
            if kind == "drive" and kinds != ["updated"]:
                raise _GraphError(
                    400,
                    "InvalidRequest",
                    "Drive root item notifications support only the 'updated' changeType.",
                )
            client_state = body.get("clientState")
            if client_state is not None and len(str(client_state)) > 128:
                raise _GraphError(400, "InvalidRequest", "clientState is longer than 128 characters.")
            expires_at = self._expiry(body["expirationDateTime"], kind)
            notification_url = str(body["notificationUrl"])
            lifecycle_url = body.get("lifecycleNotificationUrl")
            await self._validate(notification_url)
            if lifecycle_url:
                await self._validate(str(lifecycle_url))
        except _GraphError as error:
            return self._graph_error(request, error)
        token = self._access[request.headers["Authorization"][7:].strip()]
        subscription = _Subscription(
            id=str(uuid.uuid4()),
            account=account,
            client_id=token.client_id,
            resource=resource,
            change_type=change_type,
            notification_url=notification_url,
            lifecycle_url=str(lifecycle_url) if lifecycle_url else None,
            client_state=None if client_state is None else str(client_state),
            expires_at=expires_at,
        )
        self.subscriptions[subscription.id] = subscription
        return web.json_response(subscription.render(self.user_id(account)), status=201)

    async def _update_subscription(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/subscription-update"""
        try:
            account, subscription = self._own_subscription(request)
            try:
                body = await request.json()
            except ValueError:
                raise _GraphError(400, "BadRequest", "Unable to read JSON request payload.") from None
            if not isinstance(body, dict) or not body.get("expirationDateTime"):
                raise _GraphError(400, "InvalidRequest", "The 'expirationDateTime' property is required.")
            subscription.expires_at = self._expiry(body["expirationDateTime"], subscription.kind())
        except _GraphError as error:
            return self._graph_error(request, error)
        return web.json_response(subscription.render(self.user_id(account)))

    async def _delete_subscription(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/subscription-delete"""
        try:
            _, subscription = self._own_subscription(request)
        except _GraphError as error:
            return self._graph_error(request, error)
        del self.subscriptions[subscription.id]
        return web.Response(status=204)

    async def _reauthorize_subscription(self, request: web.Request) -> web.Response:
        """https://learn.microsoft.com/graph/api/subscription-reauthorize: the caller still holds the
        resource's permission; the expiry stays."""
        try:
            _, subscription = self._own_subscription(request)
            self._caller(request, _CALENDAR_READ if subscription.kind() == "events" else _DRIVE_SUBSCRIBE)
        except _GraphError as error:
            return self._graph_error(request, error)
        return web.Response(status=204)

    def _drive_item(
        self, account: str, item: _Item, request: web.Request, *, download: bool
    ) -> dict[str, Any]:
        drive_id = "b!" + hashlib.sha256(account.encode()).hexdigest()[:40]
        resource: dict[str, Any] = {
            "@odata.etag": f'"{{{item.id[-8:]}}},1"',
            "id": item.id,
            "name": item.name,
            "size": len(item.content),
            "createdDateTime": _graph_utc(item.created.timestamp()),
            "lastModifiedDateTime": _graph_utc(item.modified.timestamp()),
            "webUrl": f"https://contoso-my.sharepoint.com/personal/me/Documents/{quote(item.name)}",
            "file": {"mimeType": item.mime_type},
            "parentReference": {
                "driveType": "business",
                "driveId": drive_id,
                "id": "01ROOT",
                "path": "/drive/root:",
            },
        }
        if download:
            resource["@microsoft.graph.downloadUrl"] = self._download_url(account, item, request)
        select = [s for s in request.query.get("$select", "").split(",") if s]
        if select:
            resource = {k: v for k, v in resource.items() if k in select or k in ("id", "@odata.etag")}
        return resource


# --- helpers --------------------------------------------------------------------------------------------


def _resource_key(resource: str) -> str:
    """A subscription resource as compared: no leading slash, lower case."""
    return resource.strip().lstrip("/").lower()


def _full_scope(scope: str) -> str:
    if scope in OIDC_SCOPES or "://" in scope:
        return scope
    return GRAPH + scope


def _error_page(error: str, description: str) -> web.Response:
    """What the sign-in page shows instead of redirecting (an unknown app, an unregistered redirect URI)."""
    return web.Response(
        status=400,
        content_type="text/html",
        text=f"<html><body><p>Sorry, but we're having trouble signing you in.</p><p>{error}</p>"
        f"<p>{description}</p></body></html>",
    )


def _aad_error(status: int, error: str, code: int, message: str, **extra: str) -> web.Response:
    now = datetime.now(UTC)
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    body: dict[str, Any] = {
        "error": error,
        "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
        f"Timestamp: {now.strftime('%Y-%m-%d %H:%M:%S')}Z",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        **extra,
    }
    return web.json_response(body, status=status, headers=_NO_STORE)


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except (ZoneInfoNotFoundError, ValueError):
        raise _GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. "
            f"The following TimeZone value is not supported: '{name}'.",
        ) from None


def _graph_moment(value: Mapping[str, Any]) -> datetime:
    """A dateTimeTimeZone as an instant."""
    moment = datetime.fromisoformat(_trim_fraction(str(value["dateTime"])))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(str(value.get("timeZone") or "UTC")))
    return moment


def _trim_fraction(text: str) -> str:
    """Graph writes seven fractional digits; Python reads at most six."""
    return re.sub(r"(\.\d{6})\d+", r"\1", text)


def _query_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(_trim_fraction(text))
    except ValueError:
        raise _GraphError(400, "ErrorInvalidParameter", f"Invalid date/time: '{text}'.") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # no offset: UTC


def _graph_time(moment: datetime, zone: tzinfo, zone_name: str) -> dict[str, str]:
    local = moment.astimezone(zone)
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone_name}


def _graph_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "0000Z"


def _preferred_zone(request: web.Request) -> tuple[str, tzinfo]:
    """`Prefer: outlook.timezone="…"` (several Prefer headers or comma-joined preferences allowed)."""
    for header in request.headers.getall("Prefer", []):
        match = re.search(r'outlook\.timezone\s*=\s*"([^"]+)"', header)
        if match:
            return match.group(1), _zone(match.group(1))
    return "UTC", UTC


def _applied(request: web.Request, zone_name: str) -> dict[str, str]:
    if any("outlook.timezone" in h for h in request.headers.getall("Prefer", [])):
        return {"Preference-Applied": f'outlook.timezone="{zone_name}"'}
    return {}


def _top(request: web.Request, *, default: int) -> int:
    text = request.query.get("$top")
    if text is None:
        match = re.search(r"odata\.maxpagesize=(\d+)", ",".join(request.headers.getall("Prefer", [])))
        text = match.group(1) if match else None
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise _GraphError(400, "BadRequest", f"Invalid value '{text}' for $top.")
    return min(int(text), 1000)


def _query_string(params: Mapping[str, str]) -> str:
    """A nextLink's query as Graph writes it: `$top`, `$skiptoken` with their dollar signs."""
    return "&".join(f"{quote(k, safe='$')}={quote(v, safe=':')}" for k, v in params.items())


def _skiptoken(offset: int) -> str:
    raw = json.dumps({"o": offset, "n": secrets.token_hex(4)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _skip(query: Mapping[str, str]) -> int:
    if "$skiptoken" in query:
        try:
            token = query["$skiptoken"]
            return int(json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["o"])
        except (ValueError, KeyError, TypeError):
            raise _GraphError(400, "BadRequest", "Invalid $skiptoken.") from None
    if "$skip" in query:
        if not query["$skip"].isdigit():
            raise _GraphError(400, "BadRequest", "Invalid value for $skip.")
        return int(query["$skip"])
    return 0


def _render_event(event: dict[str, Any], zone: tzinfo, zone_name: str, select: list[str]) -> dict[str, Any]:
    """Timed events in the preferred zone; all-day events keep the midnights of their dates (Outlook does
    not move them) under the preferred zone's name."""
    rendered = dict(event)
    if not event.get("isAllDay"):
        rendered["start"] = _graph_time(_graph_moment(event["start"]), zone, zone_name)
        rendered["end"] = _graph_time(_graph_moment(event["end"]), zone, zone_name)
    else:
        for key in ("start", "end"):
            rendered[key] = {
                "dateTime": _graph_moment(event[key]).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                "timeZone": zone_name,
            }
    if select:
        rendered = {k: v for k, v in rendered.items() if k in select or k in ("id", "@odata.etag")}
    return rendered


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _contains_words(haystack: list[str], words: list[str]) -> bool:
    return any(haystack[i : i + len(words)] == words for i in range(len(haystack) - len(words) + 1))
