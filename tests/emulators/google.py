"""A local stand-in for the Google APIs AthenaOS calls: OAuth 2.0, Calendar v3, Drive v3 and Health v4.

One aiohttp application serves every host under the paths the real hosts use, so a client configured with
one base URL per host (`oauth_authorize_url`, `oauth_token_url`, `oauth_revoke_url`, `calendar_base_url`,
`drive_base_url`, `health_base_url`) talks to it exactly as it would to Google:

- OAuth 2.0 for web-server apps (https://developers.google.com/identity/protocols/oauth2/web-server):
  `GET /o/oauth2/v2/auth` approves at once as the signed-in account and redirects back with `code`,
  `scope` and `state` (or `error=access_denied`); `POST /token` redeems one-time codes bound to the client,
  the redirect URI and the PKCE S256 challenge, and refreshes; `POST /revoke` revokes a token and the grant
  it belongs to (an access token's refresh token with it). A refresh token comes only with
  `access_type=offline` and only when the consent screen was shown (first consent, new scopes or
  `prompt=consent`), as Google does. `include_granted_scopes=true` answers the union of earlier and new
  scopes. Errors are Google's: `400 invalid_grant` ("Token has been expired or revoked."),
  `401 invalid_client`, `400 {"error":"invalid_token"}` from /revoke. No ID token is issued (sign-in is
  tests/doubles/oidc_provider.py's business).
- Calendar v3 (https://developers.google.com/workspace/calendar/api/v3/reference): `freeBusy.query`,
  `events.list` (timeMin/timeMax, singleEvents expanding DAILY/WEEKLY RRULEs with INTERVAL, COUNT, UNTIL,
  BYDAY, orderBy, maxResults/pageToken, timeZone, a minimal syncToken) and `calendarList.list`.
- Drive v3 (https://developers.google.com/workspace/drive/api/reference/rest/v3): `files.list` with a `q`
  subset (https://developers.google.com/workspace/drive/api/guides/search-files) and `fields` (only
  `kind,id,name,mimeType` by default, as Drive does), `files.get` (metadata, `alt=media`; a Docs Editors
  file answers 403 `fileNotDownloadable`), `files.export` (Docs Editors files only, 10 MB limit:
  403 `exportSizeLimitExceeded`), and `changes.getStartPageToken` / `changes.list` over a change log per
  account (`add_file`, `update_file`, `trash_file`, `delete_file` record one each): a page token is a
  position in it; `pageSize`, `includeRemoved`, `fields` (`changes(...,file(...))`); the last page carries
  `newStartPageToken`, the others `nextPageToken`; a token never given out answers 400 `invalid`.
- Health API v4 (https://developers.google.com/health/reference/rest/v4): `users.dataTypes.dataPoints`
  `list` (newest first, pageSize/pageToken) with the AIP-160 filters of https://developers.google.com/health/filters
  (only `>=` and `<`; per record type: Interval `interval.start_time`/`civil_start_time`, Sample
  `sample_time.physical_time`/`civil_time`, Daily `date`, exercise `interval.civil_start_time`, sleep
  `interval.end_time`/`civil_end_time`; anything else is 400 `INVALID_DATA_POINT_FILTER`), `rollUp` and
  `dailyRollUp` (steps, heart-rate, active-energy-burned, weight; a closed-open civil range of at most 14
  days for heart-rate, 90 for the others, else 400 INVALID_ARGUMENT), and `users.getIdentity`. Data types:
  steps, active-energy-burned, heart-rate, weight, sleep, exercise and daily-resting-heart-rate.

Push notifications (https://developers.google.com/workspace/calendar/api/guides/push,
https://developers.google.com/workspace/drive/api/guides/push): `events.watch` on a calendar and Drive's
`changes.watch` (`pageToken` required; `changes.getStartPageToken` gives one) open a channel (`id` unique, at
most 64 characters, `type` "web_hook" or "webhook", `params.ttl` in seconds, default 604800; Drive's changes
channels live at most 604800 s) and answer `{kind:"api#channel", id, resourceId, resourceUri, token,
expiration}` (milliseconds, as a string); right after, the address gets the `sync` message: a POST with no
body and the `X-Goog-Channel-ID`, `X-Goog-Channel-Token`, `X-Goog-Channel-Expiration` (an HTTP date),
`X-Goog-Resource-ID`, `X-Goog-Resource-URI`, `X-Goog-Resource-State` and `X-Goog-Message-Number` headers.
`notify_channel` sends the next message (`exists` for an events channel, `change` for a changes channel, the
message number rising). `channels.stop` (`POST /calendar/v3/channels/stop`, `/drive/v3/channels/stop`)
answers 204, or 404 for a channel it does not know. An expired channel sends nothing.

API errors have Google's JSON form: Calendar and Drive `{"error":{"code","message","errors":[{"domain",
"reason","message"}],"status"}}`, Health (a newer AIP API) `{"error":{"code","message","status"}}` (with an
ErrorInfo in `details` where Health names a reason, such as `INVALID_DATA_POINT_FILTER`). A missing,
expired or revoked bearer gets 401, a token without the method's scope 403, and `rate_limit_next` makes the
next API calls answer 429 `rateLimitExceeded` / `RESOURCE_EXHAUSTED`. Google documents no `Retry-After` on
these; the emulator sends one unless told `retry_after_seconds=None`, so clients are tested both ways.

Tests drive it with Python methods: `register_client`, `sign_in`, `refuse_next_consent`,
`narrow_next_consent`, `mint_code`, `expire_access_tokens`, `revoke_grant`, `rate_limit_next`,
`add_calendar`, `add_event`, `add_file`, `update_file`, `trash_file`, `delete_file`, `add_data_point` (and
typed `add_steps`, `add_heart_rate`, `add_weight`, `add_active_energy`, `add_sleep`, `add_exercise`,
`add_resting_heart_rate`), and read what clients sent in `requests`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from operator import attrgetter
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from aiohttp import web

from .serving import RecordedRequest, recording, s256, serve

SCOPE_PREFIX = "https://www.googleapis.com/auth/"

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""Headers of every token-endpoint answer (RFC 6749 §5.1, §5.2)."""

GOOGLE_DOC = "application/vnd.google-apps.document"
GOOGLE_SHEET = "application/vnd.google-apps.spreadsheet"
GOOGLE_SLIDES = "application/vnd.google-apps.presentation"
_EXPORTS = {
    GOOGLE_DOC: {"text/plain", "text/html", "text/markdown"},
    GOOGLE_SHEET: {"text/csv"},
    GOOGLE_SLIDES: {"text/plain"},
}
"""What the emulator exports each Docs Editors type to (the content given to `add_file`, as is)."""

_CALENDAR_READ = frozenset(
    SCOPE_PREFIX + s for s in ("calendar", "calendar.readonly", "calendar.events", "calendar.events.readonly")
)
_FREEBUSY = frozenset(
    SCOPE_PREFIX + s
    for s in ("calendar", "calendar.readonly", "calendar.freebusy", "calendar.events.freebusy")
)
_CALENDAR_LIST = frozenset(
    SCOPE_PREFIX + s
    for s in ("calendar", "calendar.readonly", "calendar.calendarlist", "calendar.calendarlist.readonly")
)
_DRIVE_METADATA = frozenset(
    SCOPE_PREFIX + s
    for s in ("drive", "drive.readonly", "drive.file", "drive.metadata", "drive.metadata.readonly")
)
_DRIVE_CONTENT = frozenset(SCOPE_PREFIX + s for s in ("drive", "drive.readonly", "drive.file"))


def _health_scopes(*families: str) -> frozenset[str]:
    return frozenset(
        f"{SCOPE_PREFIX}googlehealth.{f}{suffix}" for f in families for suffix in ("", ".readonly")
    )


HEALTH_SCOPES: dict[str, frozenset[str]] = {
    "steps": _health_scopes("activity_and_fitness"),
    "active-energy-burned": _health_scopes("activity_and_fitness"),
    "exercise": _health_scopes("activity_and_fitness"),
    # https://developers.google.com/health/data-types/workouts maps heart-rate to this family.
    "heart-rate": _health_scopes("health_metrics_and_measurements"),
    "weight": _health_scopes("health_metrics_and_measurements"),
    "daily-resting-heart-rate": _health_scopes("health_metrics_and_measurements"),
    "sleep": _health_scopes("sleep"),
}
"""The data types the emulator serves and the scopes that read each (health/data-types)."""
_RECORD_FILTERS: dict[str, tuple[str, ...]] = {
    "steps": ("interval.start_time", "interval.civil_start_time"),
    "active-energy-burned": ("interval.start_time", "interval.civil_start_time"),
    "heart-rate": ("sample_time.physical_time", "sample_time.civil_time"),
    "weight": ("sample_time.physical_time", "sample_time.civil_time"),
    "daily-resting-heart-rate": ("date",),
    "exercise": ("interval.civil_start_time",),
    "sleep": ("interval.end_time", "interval.civil_end_time"),
}
"""The filter fields of each data type, by its record type (https://developers.google.com/health/filters)."""
_ANY_HEALTH = frozenset().union(*HEALTH_SCOPES.values()) | _health_scopes("profile", "settings")

_ROLLUP_TYPES = frozenset(["steps", "heart-rate", "active-energy-burned", "weight"])
_SHORT_ROLLUP_RANGE = frozenset(
    ["heart-rate", "calories-in-heart-rate-zone", "active-minutes", "total-calories"]
)
"""Daily roll-ups of these accept at most 14 days, others 90."""


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
    scopes: frozenset[str]
    refresh: bool
    expires_at: float


@dataclass
class _Grant:
    """What one code exchange starts: a refresh token (when offline) and every access token minted from it."""

    id: str
    account: str
    client_id: str
    scopes: frozenset[str]
    refresh_token: str | None
    revoked: bool = False


@dataclass
class _AccessToken:
    grant_id: str
    expires_at: float


@dataclass
class _Calendar:
    id: str
    summary: str
    time_zone: str
    primary: bool
    events: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _File:
    id: str
    name: str
    mime_type: str
    content: bytes
    modified_time: datetime
    created_time: datetime
    trashed: bool


@dataclass
class _Change:
    """One entry of an account's Drive change log (what changes.list pages through)."""

    file_id: str
    time: datetime
    removed: bool = False


@dataclass
class _Channel:
    id: str
    account: str
    kind: str
    """"events" (a calendar's events) or "changes" (Drive's changes)."""
    resource_id: str
    resource_uri: str
    address: str
    token: str | None
    expiration_ms: int
    message_number: int = 0


CHANNEL_DEFAULT_TTL = 604800
DRIVE_CHANGES_MAX_TTL = 604800
_CHANNEL_ID = re.compile(r"[A-Za-z0-9\-_+/=]{1,64}")


class _ApiError(Exception):
    """An API refusal: status, reason (Calendar/Drive `errors[].reason`), message, extra error fields."""

    def __init__(self, status: int, reason: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.extra = status, reason, message, extra


_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    410: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
}


@dataclass
class GoogleEmulator:
    """Google's OAuth, Calendar, Drive and Health endpoints on one local server.

    Serve with `await start()` (then `base_url` is set), or mount `app` on a server of your own and set
    `base_url` to its URL. `clock` is wall-clock seconds (a `FakeClock.time` moves token expiry).
    """

    expires_in: int = 3599
    """`expires_in` of access tokens, seconds: tests make it short."""
    clock: Callable[[], float] = time.time
    account: str | None = "person@example.com"
    """The signed-in account the authorize endpoint approves as (`sign_in` changes it)."""
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    export_limit_bytes: int = 10 * 1024 * 1024
    clients: dict[str, _Client] = field(default_factory=dict)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _access: dict[str, _AccessToken] = field(default_factory=dict)
    _refresh: dict[str, str] = field(default_factory=dict)
    """Refresh token -> grant id."""
    _consented: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(account, client_id) -> scopes the account has granted the client (until revoked)."""
    _refuse_next: bool = False
    _narrow_next: frozenset[str] | None = None
    _rate_limited: int = 0
    _retry_after: int | None = None
    _calendars: dict[str, dict[str, _Calendar]] = field(default_factory=dict)
    _files: dict[str, dict[str, _File]] = field(default_factory=dict)
    _points: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    channels: dict[str, _Channel] = field(default_factory=dict)
    """Every open channel by id (an expired one stays here, silent; a stopped one is gone)."""
    _change_counter: int = 1000
    """Drive page tokens count changes from here: an account's token is this plus its changes so far."""
    _changes: dict[str, list[_Change]] = field(default_factory=dict)
    """Each account's Drive change log, oldest first (a page token is a position in it)."""
    _deliveries: set[asyncio.Task[int]] = field(default_factory=set)
    _app: web.Application | None = None
    _runner: web.AppRunner | None = None

    # --- serving ----------------------------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self._build_app()
        return self._app

    @property
    def oauth_authorize_url(self) -> str:
        """Stands for https://accounts.google.com/o/oauth2/v2/auth."""
        return f"{self.base_url}/o/oauth2/v2/auth"

    @property
    def oauth_token_url(self) -> str:
        """Stands for https://oauth2.googleapis.com/token."""
        return f"{self.base_url}/token"

    @property
    def oauth_revoke_url(self) -> str:
        """Stands for https://oauth2.googleapis.com/revoke."""
        return f"{self.base_url}/revoke"

    @property
    def calendar_base_url(self) -> str:
        """Stands for https://www.googleapis.com/calendar/v3."""
        return f"{self.base_url}/calendar/v3"

    @property
    def drive_base_url(self) -> str:
        """Stands for https://www.googleapis.com/drive/v3."""
        return f"{self.base_url}/drive/v3"

    @property
    def health_base_url(self) -> str:
        """Stands for https://health.googleapis.com/v4."""
        return f"{self.base_url}/v4"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.base_url = await serve(self.app, host, port)

    async def stop(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[recording(self.requests)])
        add = app.router
        add.add_get("/o/oauth2/v2/auth", self._authorize)
        add.add_post("/token", self._token)
        add.add_post("/revoke", self._revoke)
        add.add_post("/calendar/v3/freeBusy", self._freebusy)
        add.add_get("/calendar/v3/calendars/{calendarId}/events", self._events_list)
        add.add_get("/calendar/v3/users/me/calendarList", self._calendar_list)
        add.add_post("/calendar/v3/calendars/{calendarId}/events/watch", self._events_watch)
        add.add_post("/calendar/v3/channels/stop", self._channels_stop)
        add.add_get("/drive/v3/changes/startPageToken", self._start_page_token)
        add.add_get("/drive/v3/changes", self._changes_list)
        add.add_post("/drive/v3/changes/watch", self._changes_watch)
        add.add_post("/drive/v3/channels/stop", self._channels_stop)
        add.add_get("/drive/v3/files", self._files_list)
        add.add_get("/drive/v3/files/{fileId}", self._files_get)
        add.add_get("/drive/v3/files/{fileId}/export", self._files_export)
        add.add_get("/v4/users/{user}/identity", self._health_identity)
        add.add_get("/v4/users/{user}/dataTypes/{dataType}/dataPoints", self._health_list)
        add.add_post("/v4/users/{user}/dataTypes/{dataType}/dataPoints:rollUp", self._health_rollup)
        add.add_post("/v4/users/{user}/dataTypes/{dataType}/dataPoints:dailyRollUp", self._health_daily)
        return app

    # --- test controls ----------------------------------------------------------------------------------

    def register_client(self, client_id: str, secret: str, redirect_uris: Iterable[str]) -> None:
        """An OAuth client as registered in the Cloud console (a "Web application")."""
        self.clients[client_id] = _Client(client_id, secret, tuple(redirect_uris))

    def sign_in(self, account: str | None) -> None:
        """Who the authorize page approves as; None: nobody is signed in (`prompt=none`: login_required)."""
        self.account = account

    def refuse_next_consent(self) -> None:
        """The next authorization is declined by the user: the redirect carries `error=access_denied`."""
        self._refuse_next = True

    def narrow_next_consent(self, scopes: Iterable[str]) -> None:
        """Granular consent: the user ticks only `scopes` (short names or URLs) on the next consent."""
        self._narrow_next = frozenset(_full_scope(s) for s in scopes)

    def mint_code(
        self,
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        scopes: Iterable[str],
        *,
        account: str | None = None,
        offline: bool = True,
    ) -> str:
        """A code as if `account` (default: the signed-in one) had consented in a browser."""
        who = account or self.account
        assert who is not None, "mint_code needs an account (sign_in or account=)"
        granted = frozenset(_full_scope(s) for s in scopes)
        self._consent(who, client_id, granted)
        return self._new_code(client_id, redirect_uri, code_challenge, who, granted, refresh=offline)

    def expire_access_tokens(self) -> None:
        """Every access token minted so far expires now (their refresh tokens stay good)."""
        now = self.clock()
        for token in self._access.values():
            token.expires_at = min(token.expires_at, now - 1)

    def revoke_grant(self, account: str, client_id: str | None = None) -> None:
        """The user removes the app's access (all clients when `client_id` is None): refreshing answers
        invalid_grant and API calls 401."""
        for grant in self._grants.values():
            if grant.account == account and client_id in (None, grant.client_id):
                grant.revoked = True
        for key in [k for k in self._consented if k[0] == account and client_id in (None, k[1])]:
            del self._consented[key]

    def rate_limit_next(self, n: int, retry_after_seconds: int | None = 1) -> None:
        """The next `n` API calls (not OAuth) answer 429, with `Retry-After` unless it is None."""
        self._rate_limited, self._retry_after = n, retry_after_seconds

    def add_calendar(
        self, account: str, calendar_id: str, summary: str, time_zone: str = "UTC", *, primary: bool = False
    ) -> None:
        """A calendar on `account`'s list. The primary one has the account's address as its id."""
        ZoneInfo(time_zone)  # an unknown zone fails here, not later in a handler
        calendars = self._calendars.setdefault(account, {})
        calendars[calendar_id] = _Calendar(calendar_id, summary, time_zone, primary or calendar_id == account)

    def add_event(self, account: str, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """An event in Calendar's JSON form (`summary`, `start`/`end` with `date` or `dateTime` and optional
        `timeZone`, `recurrence`, `transparency`, `status`...). The missing fields Google fills in (`id`,
        `status`, `created`, `updated`, `iCalUID`...) are filled in; the stored event is returned. An event
        with the id of an existing one replaces it (a change that a syncToken sees)."""
        calendar = self._calendar(account, calendar_id)
        if calendar is None:
            primary = calendar_id in ("primary", account)
            if not primary:
                raise KeyError(f"no calendar {calendar_id!r} for {account!r}: add_calendar first")
            self.add_calendar(account, account, account, primary=True)
            calendar = self._calendars[account][account]
        stamp = _rfc3339_utc(self.clock())
        stored: dict[str, Any] = {
            "kind": "calendar#event",
            "id": secrets.token_hex(13),
            "status": "confirmed",
            "created": stamp,
            "eventType": "default",
            "sequence": 0,
            **event,
            "updated": stamp,
        }
        stored.setdefault("iCalUID", f"{stored['id']}@google.com")
        stored.setdefault("etag", f'"{zlib.crc32(json.dumps(stored, sort_keys=True).encode())}"')
        stored.setdefault("htmlLink", f"https://www.google.com/calendar/event?eid={stored['id']}")
        _event_span(stored, ZoneInfo(calendar.time_zone))  # malformed times fail here
        if "recurrence" in stored:
            _parse_rrule(stored["recurrence"])  # so does an unsupported rule
        calendar.events[stored["id"]] = stored
        return stored

    def add_file(
        self,
        account: str,
        name: str,
        mime_type: str,
        content: bytes,
        modified_time: datetime | None = None,
        *,
        trashed: bool = False,
        file_id: str | None = None,
    ) -> str:
        """A file in `account`'s Drive; for a Docs Editors type (`application/vnd.google-apps.*`) `content` is
        what exporting it gives. Returns its id. Drive's change log records it (now)."""
        moment = modified_time or self._now()
        ident = file_id or _drive_id()
        self._files.setdefault(account, {})[ident] = _File(
            ident, name, mime_type, content, moment, moment, trashed
        )
        self._changes.setdefault(account, []).append(_Change(ident, self._now()))
        return ident

    def update_file(
        self,
        account: str,
        file_id: str,
        *,
        content: bytes | None = None,
        name: str | None = None,
        modified_time: datetime | None = None,
    ) -> None:
        """The person edits a file (its content, its name, or neither: a touch): `modifiedTime` becomes
        `modified_time` (default now), and the change log records a change at that moment."""
        found = self._files[account][file_id]
        found.modified_time = modified_time or self._now()
        if content is not None:
            found.content = content
        if name is not None:
            found.name = name
        self._changes[account].append(_Change(file_id, found.modified_time))

    def trash_file(self, account: str, file_id: str) -> None:
        """The file goes to the bin (`trashed`; not `removed`: it is still there), a change recorded now."""
        self._files[account][file_id].trashed = True
        self._changes[account].append(_Change(file_id, self._now()))

    def delete_file(self, account: str, file_id: str) -> None:
        """The file is deleted for good: its changes list as `removed`, without the file."""
        del self._files[account][file_id]
        self._changes[account].append(_Change(file_id, self._now(), removed=True))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def add_data_point(self, account: str, data_type: str, point: dict[str, Any]) -> dict[str, Any]:
        """A Health API `DataPoint` in its JSON form, e.g. `{"steps": {"count": "120", "interval": {...}}}`;
        `name` is filled in when missing. Returns the stored point."""
        if data_type not in HEALTH_SCOPES:
            raise ValueError(f"the emulator does not serve data type {data_type!r}")
        if _camel(data_type) not in point:
            raise ValueError(f"a {data_type} point holds its value under {_camel(data_type)!r}")
        stored = {
            "name": f"users/{_health_user_id(account)}/dataTypes/{data_type}/dataPoints/"
            f"{secrets.token_hex(8)}",
            **point,
        }
        _point_moments(data_type, stored)  # malformed times fail here
        self._points.setdefault(account, {}).setdefault(data_type, []).append(stored)
        return stored

    def health_user_id(self, account: str) -> str:
        """The account's `healthUserId`, as `users.getIdentity` answers it."""
        return _health_user_id(account)

    def add_steps(self, account: str, start: datetime, end: datetime, count: int) -> dict[str, Any]:
        return self.add_data_point(
            account, "steps", {"steps": {"interval": _interval(start, end), "count": str(count)}}
        )

    def add_heart_rate(self, account: str, at: datetime, bpm: float) -> dict[str, Any]:
        return self.add_data_point(
            account, "heart-rate", {"heartRate": {"sampleTime": _sample_time(at), "beatsPerMinute": bpm}}
        )

    def add_weight(self, account: str, at: datetime, grams: float) -> dict[str, Any]:
        return self.add_data_point(
            account, "weight", {"weight": {"sampleTime": _sample_time(at), "weightGrams": grams}}
        )

    def add_resting_heart_rate(self, account: str, day: date, bpm: int) -> dict[str, Any]:
        """A `DailyRestingHeartRate` for the civil `day` (its int64 `beatsPerMinute` as a string)."""
        return self.add_data_point(
            account,
            "daily-resting-heart-rate",
            {
                "dailyRestingHeartRate": {
                    "date": {"year": day.year, "month": day.month, "day": day.day},
                    "beatsPerMinute": str(bpm),
                }
            },
        )

    def add_active_energy(self, account: str, start: datetime, end: datetime, kcal: float) -> dict[str, Any]:
        return self.add_data_point(
            account,
            "active-energy-burned",
            {"activeEnergyBurned": {"interval": _interval(start, end), "kcal": kcal}},
        )

    def add_sleep(
        self,
        account: str,
        start: datetime,
        end: datetime,
        stages: Sequence[tuple[str, datetime, datetime]] = (),
    ) -> dict[str, Any]:
        """A night: with `stages` ((AWAKE|LIGHT|DEEP|REM, start, end), ...) a STAGES record, else CLASSIC."""
        asleep = (
            sum(((e - s) for kind, s, e in stages if kind != "AWAKE"), timedelta()) if stages else end - start
        )
        sleep: dict[str, Any] = {
            "interval": _interval(start, end),
            "type": "STAGES" if stages else "CLASSIC",
            "summary": {"minutesAsleep": str(int(asleep.total_seconds() // 60))},
        }
        if stages:
            sleep["stages"] = [
                {
                    "type": kind,
                    "startTime": _rfc3339_utc(s.timestamp()),
                    "endTime": _rfc3339_utc(e.timestamp()),
                }
                for kind, s, e in stages
            ]
        return self.add_data_point(account, "sleep", {"sleep": sleep})

    def add_exercise(
        self,
        account: str,
        start: datetime,
        end: datetime,
        exercise_type: str,
        *,
        calories_kcal: float | None = None,
        distance_millimeters: float | None = None,
        steps: int | None = None,
        average_heart_rate: float | None = None,
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if calories_kcal is not None:
            summary["caloriesKcal"] = calories_kcal
        if distance_millimeters is not None:
            summary["distanceMillimeters"] = distance_millimeters
        if steps is not None:
            summary["steps"] = str(steps)
        if average_heart_rate is not None:
            summary["averageHeartRateBeatsPerMinute"] = average_heart_rate
        exercise = {
            "interval": _interval(start, end),
            "exerciseType": exercise_type,
            "activeDuration": f"{int((end - start).total_seconds())}s",
            "metricsSummary": summary,
        }
        return self.add_data_point(account, "exercise", {"exercise": exercise})

    # --- OAuth ------------------------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        """The consent page, approved (or refused) at once. Client and redirect errors are shown to the user
        (an error page, no redirect: RFC 6749 §4.1.2.1); the others go back to the redirect URI."""
        query = request.query
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            return _error_page(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return _error_page(
                400, "redirect_uri_mismatch", "The redirect URI is not registered for the client."
            )
        state = query.get("state")

        def back(**params: str) -> web.StreamResponse:
            if state is not None:
                params["state"] = state
            raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        requested = frozenset(_full_scope(s) for s in query.get("scope", "").split())
        if not requested:
            return _error_page(400, "invalid_request", "Missing required parameter: scope")
        if any(not _known_scope(s) for s in requested):
            return _error_page(400, "invalid_scope", "Some requested scopes were invalid.")
        challenge = query.get("code_challenge", "")
        if not challenge or query.get("code_challenge_method") != "S256":
            return back(error="invalid_request", error_description="code_challenge and S256 are required")
        access_type = query.get("access_type", "online")
        if access_type not in ("online", "offline"):
            return back(error="invalid_request", error_description=f"Invalid access_type: {access_type}")
        prompts = set(query.get("prompt", "").split())
        if self.account is None:
            if "none" in prompts:
                return back(error="login_required")
            return web.Response(
                text="<html><body>Sign in - Google Accounts</body></html>", content_type="text/html"
            )
        account = self.account
        earlier = self._consented.get((account, client.client_id), set())
        needs_consent = not requested <= earlier or "consent" in prompts
        if "none" in prompts and needs_consent:
            return back(error="consent_required")
        if self._refuse_next:
            self._refuse_next = False
            return back(error="access_denied")
        granted = requested if self._narrow_next is None else requested & self._narrow_next
        self._narrow_next = None
        self._consent(account, client.client_id, granted)
        if query.get("include_granted_scopes") == "true":
            granted = granted | earlier
        # Google hands out a refresh token when the consent screen was shown for an offline request.
        code = self._new_code(
            client.client_id,
            redirect_uri,
            challenge,
            account,
            granted,
            refresh=access_type == "offline"
            and (needs_consent or not self._has_live_refresh(account, client)),
        )
        return back(code=code, scope=" ".join(sorted(granted)))

    def _has_live_refresh(self, account: str, client: _Client) -> bool:
        return any(
            g.refresh_token and not g.revoked and g.account == account and g.client_id == client.client_id
            for g in self._grants.values()
        )

    def _consent(self, account: str, client_id: str, scopes: frozenset[str]) -> None:
        self._consented.setdefault((account, client_id), set()).update(scopes)

    def _new_code(
        self,
        client_id: str,
        redirect_uri: str,
        challenge: str,
        account: str,
        scopes: frozenset[str],
        *,
        refresh: bool,
    ) -> str:
        code = "4/0A" + secrets.token_urlsafe(32)
        self._codes[code] = _Code(
            client_id, redirect_uri, challenge, account, scopes, refresh, self.clock() + 600
        )
        return code

    async def _token(self, request: web.Request) -> web.Response:
        """RFC 6749 §4.1.3 and §6 as Google answers them: client authentication first (form or Basic)."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        client = self.clients.get(client_id)
        if client is None:
            return _token_error(401, "invalid_client", "The OAuth client was not found.")
        if not secrets.compare_digest(secret, client.secret):
            return _token_error(401, "invalid_client", "Unauthorized")
        grant_type = form.get("grant_type", "")
        if grant_type == "authorization_code":
            return self._redeem(client, form)
        if grant_type == "refresh_token":
            return self._refresh_grant(client, form)
        return _token_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _redeem(self, client: _Client, form: dict[str, str]) -> web.Response:
        code = self._codes.pop(form.get("code", ""), None)  # one-time: a replayed code is unknown
        if code is None or code.expires_at <= self.clock():
            return _token_error(400, "invalid_grant", "Malformed auth code.")
        if code.client_id != client.client_id:
            return _token_error(400, "invalid_grant", "Unauthorized")
        if form.get("redirect_uri") != code.redirect_uri:
            return _token_error(400, "invalid_grant", "Bad Request")
        verifier = form.get("code_verifier")
        if not verifier:
            return _token_error(400, "invalid_grant", "Missing code verifier.")
        if not secrets.compare_digest(s256(verifier), code.code_challenge):
            return _token_error(400, "invalid_grant", "Invalid code verifier.")
        grant = _Grant(secrets.token_hex(8), code.account, client.client_id, code.scopes, None)
        if code.refresh:
            grant.refresh_token = "1//0" + secrets.token_urlsafe(40)
            self._refresh[grant.refresh_token] = grant.id
        self._grants[grant.id] = grant
        answer = self._access_answer(grant)
        if grant.refresh_token is not None:
            answer["refresh_token"] = grant.refresh_token
        return web.json_response(answer, headers=_NO_STORE)

    def _refresh_grant(self, client: _Client, form: dict[str, str]) -> web.Response:
        grant = self._grants.get(self._refresh.get(form.get("refresh_token", ""), ""))
        if grant is None or grant.revoked or grant.client_id != client.client_id:
            return _token_error(400, "invalid_grant", "Token has been expired or revoked.")
        if "scope" in form:
            asked = frozenset(_full_scope(s) for s in form["scope"].split())
            if not asked <= grant.scopes:
                return _token_error(400, "invalid_scope", "Some requested scopes were invalid.")
        return web.json_response(self._access_answer(grant), headers=_NO_STORE)

    def _access_answer(self, grant: _Grant) -> dict[str, Any]:
        token = "ya29." + secrets.token_urlsafe(40)
        self._access[token] = _AccessToken(grant.id, self.clock() + self.expires_in)
        return {
            "access_token": token,
            "expires_in": self.expires_in,
            "scope": " ".join(sorted(grant.scopes)),
            "token_type": "Bearer",
        }

    async def _revoke(self, request: web.Request) -> web.Response:
        """https://developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke"""
        form = await request.post()
        token = str(form.get("token") or request.query.get("token", ""))
        grant_id = self._refresh.get(token) or (
            self._access[token].grant_id if token in self._access else None
        )
        grant = self._grants.get(grant_id or "")
        if grant is None or grant.revoked:
            return web.json_response(
                {"error": "invalid_token", "error_description": "Token expired or revoked"}, status=400
            )
        grant.revoked = True
        self._consented.pop((grant.account, grant.client_id), None)
        return web.Response(status=200)

    def live_channels(self, account: str | None = None) -> list[_Channel]:
        """Channels neither stopped nor expired (of `account`, or everyone's)."""
        now_ms = int(self.clock() * 1000)
        return [
            c
            for c in self.channels.values()
            if c.expiration_ms > now_ms and (account is None or c.account == account)
        ]

    async def notify_channel(self, channel_id: str) -> int:
        """The watched resource changed: the channel's next message (`exists` for events, `change` for
        Drive's changes), its number one more than the last. Answers the status the address answered (0 when
        unreachable); an expired channel sends nothing and answers 0."""
        channel = self.channels[channel_id]
        if channel.expiration_ms <= int(self.clock() * 1000):
            return 0
        return await self._send(channel, "exists" if channel.kind == "events" else "change")

    async def deliveries(self) -> None:
        """Waits until every message sent in the background (the `sync` after a watch) was answered."""
        while self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    async def _send(self, channel: _Channel, state: str) -> int:
        channel.message_number += 1
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": _http_date(channel.expiration_ms / 1000),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(channel.message_number),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                answer = await http.post(channel.address, headers=headers, content=b"")
        except httpx.HTTPError:
            return 0
        return answer.status_code

    def _open_channel(
        self, account: str, body: dict[str, Any], kind: str, resource_id: str, resource_uri: str
    ) -> _Channel:
        ident = str(body.get("id") or "")
        if not ident:
            raise _ApiError(400, "required", "Required")
        if not _CHANNEL_ID.fullmatch(ident):
            raise _ApiError(400, "invalid", f"Invalid channel id: {ident}")
        if ident in self.channels:
            raise _ApiError(400, "channelIdNotUnique", f"Channel id {ident} not unique")
        if body.get("type") not in ("web_hook", "webhook"):
            raise _ApiError(400, "invalid", "Invalid value for: type")
        address = str(body.get("address") or "")
        parts = urlsplit(address)
        loopback = parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}
        if parts.scheme != "https" and not loopback:
            raise _ApiError(400, "push.webhookUrlNotHttps", "WebHook callback must be HTTPS: " + address)
        now_ms = int(self.clock() * 1000)
        params = body.get("params") or {}
        if "expiration" in body:
            try:
                expiration_ms = int(body["expiration"])
            except (TypeError, ValueError):
                raise _ApiError(400, "invalid", "Invalid value for: expiration") from None
        else:
            try:
                ttl = int(params.get("ttl", CHANNEL_DEFAULT_TTL))
            except (TypeError, ValueError):
                raise _ApiError(400, "invalid", "Invalid value for: ttl") from None
            expiration_ms = now_ms + ttl * 1000
        if kind == "changes":
            expiration_ms = min(expiration_ms, now_ms + DRIVE_CHANGES_MAX_TTL * 1000)
        if expiration_ms <= now_ms:
            raise _ApiError(400, "invalid", "Invalid value for: expiration")
        token = body.get("token")
        channel = _Channel(
            ident,
            account,
            kind,
            resource_id,
            resource_uri,
            address,
            None if token is None else str(token),
            expiration_ms,
        )
        self.channels[ident] = channel
        return channel

    def _channel_answer(self, channel: _Channel) -> web.Response:
        answer: dict[str, Any] = {
            "kind": "api#channel",
            "id": channel.id,
            "resourceId": channel.resource_id,
            "resourceUri": channel.resource_uri,
            "expiration": str(channel.expiration_ms),
        }
        if channel.token is not None:
            answer["token"] = channel.token
        # The sync message follows the answer, as at Google: the watcher may not have stored the channel yet.
        task = asyncio.get_running_loop().create_task(self._send(channel, "sync"))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return web.json_response(answer)

    # --- API plumbing -----------------------------------------------------------------------------------

    def _bearer(self, request: web.Request, scopes: frozenset[str]) -> str:
        """The account a call acts for; raises the 429 / 401 / 403 an API answers instead."""
        if self._rate_limited > 0:
            self._rate_limited -= 1
            raise _ApiError(429, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise _ApiError(
                401,
                "required",
                "Request is missing required authentication credential. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential. "
                "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                location="Authorization",
                locationType="header",
            )
        token = self._access.get(header[7:].strip())
        grant = self._grants.get(token.grant_id) if token is not None else None
        if token is None or grant is None or grant.revoked or token.expires_at <= self.clock():
            raise _ApiError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                "or other valid authentication credential. "
                "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                location="Authorization",
                locationType="header",
            )
        if not grant.scopes & scopes:
            raise _ApiError(403, "insufficientPermissions", "Request had insufficient authentication scopes.")
        return grant.account

    def _api_error(
        self, error: _ApiError, *, with_errors: bool = True, details: list[dict[str, Any]] | None = None
    ) -> web.Response:
        body: dict[str, Any] = {"code": error.status, "message": error.message}
        if with_errors:
            entry = {
                "message": error.message,
                "domain": error.extra.get("domain", "global"),
                "reason": error.reason,
            }
            entry.update({k: v for k, v in error.extra.items() if k != "domain"})
            body["errors"] = [entry]
        if error.status in _STATUS_NAMES:
            body["status"] = _STATUS_NAMES[error.status]
        if details:
            body["details"] = details
        headers: dict[str, str] = {}
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        if error.status == 429 and self._retry_after is not None:
            headers["Retry-After"] = str(self._retry_after)
        return web.json_response({"error": body}, status=error.status, headers=headers)

    def _calendar(self, account: str, calendar_id: str) -> _Calendar | None:
        calendars = self._calendars.get(account, {})
        if calendar_id == "primary":
            return next((c for c in calendars.values() if c.primary), None)
        return calendars.get(calendar_id)

    # --- Calendar ---------------------------------------------------------------------------------------

    async def _freebusy(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/calendar/api/v3/reference/freebusy/query"""
        try:
            account = self._bearer(request, _FREEBUSY)
            body = await _json_body(request)
            start, end = (
                _required_time(body.get("timeMin"), "timeMin"),
                _required_time(body.get("timeMax"), "timeMax"),
            )
            if end < start:
                raise _ApiError(400, "timeRangeEmpty", "The specified time range is empty.")
            zone = _zone(body.get("timeZone") or "UTC")
            items = body.get("items") or []
            if len(items) > 50:
                raise _ApiError(400, "tooManyCalendarsRequested", "Too many calendars requested.")
        except _ApiError as error:
            return self._api_error(error)
        calendars: dict[str, Any] = {}
        for item in items:
            ident = str(item.get("id", ""))
            calendar = self._calendar(account, ident)
            if calendar is None:
                calendars[ident] = {"errors": [{"domain": "global", "reason": "notFound"}], "busy": []}
                continue
            spans = sorted(
                (max(s, start), min(e, end))
                for event in calendar.events.values()
                if event.get("status") != "cancelled" and event.get("transparency") != "transparent"
                for s, e in _occurrence_spans(event, ZoneInfo(calendar.time_zone), end)
                if s < end and e > start
            )
            merged: list[tuple[datetime, datetime]] = []
            for s, e in spans:
                if merged and s <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], e))
                else:
                    merged.append((s, e))
            calendars[ident] = {
                "busy": [{"start": _rfc3339(s, zone), "end": _rfc3339(e, zone)} for s, e in merged]
            }
        return web.json_response(
            {
                "kind": "calendar#freeBusy",
                "timeMin": _rfc3339(start, zone),
                "timeMax": _rfc3339(end, zone),
                "calendars": calendars,
            }
        )

    async def _events_list(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/calendar/api/v3/reference/events/list"""
        query = request.query
        try:
            account = self._bearer(request, _CALENDAR_READ)
            calendar = self._calendar(account, request.match_info["calendarId"])
            if calendar is None:
                raise _ApiError(404, "notFound", "Not Found")
            zone_name = query.get("timeZone") or calendar.time_zone
            zone = _zone(zone_name)
            page_size = _page_size(query.get("maxResults"), default=250, maximum=2500, name="maxResults")
            offset = _page_offset(query.get("pageToken"))
            events = self._listed_events(calendar, query)
        except _ApiError as error:
            return self._api_error(error)
        page = events[offset : offset + page_size]
        answer: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"{zlib.crc32(calendar.id.encode())}"',
            "summary": calendar.summary,
            "updated": _rfc3339_utc(self.clock()),
            "timeZone": zone_name,
            "accessRole": "owner",
            "defaultReminders": [],
            "items": [_render_event(e, zone) for e in page],
        }
        if offset + page_size < len(events):
            answer["nextPageToken"] = _page_token(offset + page_size)
        else:
            answer["nextSyncToken"] = _sync_token(self.clock())
        return web.json_response(answer)

    def _listed_events(self, calendar: _Calendar, query: Mapping[str, str]) -> list[dict[str, Any]]:
        home = ZoneInfo(calendar.time_zone)
        if "syncToken" in query:
            since = _read_sync_token(query["syncToken"])
            return [e for e in calendar.events.values() if _parse_time(e["updated"]) > since]
        single = query.get("singleEvents", "false") == "true"
        order = query.get("orderBy")
        if order == "startTime" and not single:
            raise _ApiError(
                400, "badRequest", "The requested ordering is not available for the particular query."
            )
        if order not in (None, "startTime", "updated"):
            raise _ApiError(400, "invalid", f"Invalid value for orderBy: {order}")
        low = _optional_time(query.get("timeMin"), "timeMin")
        high = _optional_time(query.get("timeMax"), "timeMax")
        if low is not None and high is not None and high <= low:
            raise _ApiError(400, "timeRangeEmpty", "The specified time range is empty.")
        horizon = high or (low or datetime.fromtimestamp(self.clock(), UTC)) + timedelta(days=730)

        def overlaps(span: tuple[datetime, datetime]) -> bool:
            # timeMin bounds the end, timeMax the start, both exclusive
            return (low is None or span[1] > low) and (high is None or span[0] < high)

        listed: list[tuple[datetime, dict[str, Any]]] = []
        for event in calendar.events.values():
            if event.get("status") == "cancelled" and query.get("showDeleted") != "true":
                continue
            if "recurrence" not in event:
                span = _event_span(event, home)
                if overlaps(span):
                    listed.append((span[0], event))
            elif single:
                listed.extend(
                    (s, inst) for inst, (s, e) in _instances(event, home, horizon) if overlaps((s, e))
                )
            elif any(overlaps(span) for _, span in _instances(event, home, horizon)):
                listed.append((_event_span(event, home)[0], event))
        if order == "startTime":
            listed.sort(key=lambda pair: (pair[0], pair[1]["id"]))
        elif order == "updated":
            listed.sort(key=lambda pair: pair[1]["updated"])
        return [event for _, event in listed]

    async def _calendar_list(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/calendar/api/v3/reference/calendarList/list"""
        try:
            account = self._bearer(request, _CALENDAR_LIST)
            page_size = _page_size(
                request.query.get("maxResults"), default=100, maximum=250, name="maxResults"
            )
            offset = _page_offset(request.query.get("pageToken"))
        except _ApiError as error:
            return self._api_error(error)
        calendars = list(self._calendars.get(account, {}).values())
        items = [
            {
                "kind": "calendar#calendarListEntry",
                "etag": f'"{zlib.crc32(c.id.encode())}"',
                "id": c.id,
                "summary": c.summary,
                "timeZone": c.time_zone,
                "accessRole": "owner",
                "selected": True,
                "defaultReminders": [],
                **({"primary": True} if c.primary else {}),
            }
            for c in calendars[offset : offset + page_size]
        ]
        answer: dict[str, Any] = {"kind": "calendar#calendarList", "etag": '"p1"', "items": items}
        if offset + page_size < len(calendars):
            answer["nextPageToken"] = _page_token(offset + page_size)
        else:
            answer["nextSyncToken"] = _sync_token(self.clock())
        return web.json_response(answer)

    async def _events_watch(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/calendar/api/v3/reference/events/watch"""
        try:
            account = self._bearer(request, _CALENDAR_READ)
            calendar_id = request.match_info["calendarId"]
            calendar = self._calendar(account, calendar_id)
            if calendar is None:
                raise _ApiError(404, "notFound", "Not Found")
            body = await _json_body(request)
            resource_id = _opaque_id(f"events:{account}:{calendar.id}")
            uri = f"https://www.googleapis.com/calendar/v3/calendars/{calendar_id}/events?alt=json"
            channel = self._open_channel(account, body, "events", resource_id, uri)
        except _ApiError as error:
            return self._api_error(error)
        return self._channel_answer(channel)

    async def _channels_stop(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/calendar/api/v3/reference/channels/stop (Drive's alike)"""
        try:
            account = self._bearer(request, _CALENDAR_READ | _DRIVE_METADATA)
            body = await _json_body(request)
            channel = self.channels.get(str(body.get("id") or ""))
            if channel is None or channel.account != account or channel.resource_id != body.get("resourceId"):
                raise _ApiError(404, "notFound", f"Channel '{body.get('id')}' not found for project")
        except _ApiError as error:
            return self._api_error(error)
        del self.channels[channel.id]
        return web.Response(status=204)

    # --- Drive ------------------------------------------------------------------------------------------

    async def _start_page_token(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/drive/api/reference/rest/v3/changes/getStartPageToken"""
        try:
            account = self._bearer(request, _DRIVE_METADATA)
        except _ApiError as error:
            return self._api_error(error)
        position = self._change_counter + len(self._changes.get(account, []))
        return web.json_response({"kind": "drive#startPageToken", "startPageToken": str(position)})

    async def _changes_list(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/drive/api/reference/rest/v3/changes/list"""
        query = request.query
        try:
            account = self._bearer(request, _DRIVE_METADATA)
            log = self._changes.get(account, [])
            start = self._change_position(query.get("pageToken", ""), len(log))
            page_size = _page_size(query.get("pageSize"), default=100, maximum=1000, name="pageSize")
            include_removed = _flag(query.get("includeRemoved"), default=True, name="includeRemoved")
            top, per_change, per_file = _change_fields(query.get("fields"))
        except _ApiError as error:
            return self._api_error(error)
        files = self._files.get(account, {})
        changes: list[dict[str, Any]] = []
        position = start
        while position < len(log) and len(changes) < page_size:
            entry = log[position]
            position += 1
            found = None if entry.removed else files.get(entry.file_id)
            if found is None and not include_removed:
                continue
            change: dict[str, Any] = {
                "kind": "drive#change",
                "changeType": "file",
                "time": _drive_time(entry.time),
                "removed": found is None,
                "fileId": entry.file_id,
            }
            if found is not None:
                change["file"] = _file_resource(found, per_file)
            changes.append(
                change if per_change is None else {k: v for k, v in change.items() if k in per_change}
            )
        answer: dict[str, Any] = {"kind": "drive#changeList"}
        if position < len(log):
            answer["nextPageToken"] = str(self._change_counter + position)
        else:
            answer["newStartPageToken"] = str(self._change_counter + position)
        answer["changes"] = changes
        if top is not None:
            answer = {k: v for k, v in answer.items() if k in top}
        return web.json_response(answer)

    def _change_position(self, token: str, length: int) -> int:
        """Where a page token points in a change log of `length` entries. A token below the first change
        lists from the start (Drive takes "1"); one that was never given out is refused."""
        if not token:
            raise _ApiError(
                400,
                "required",
                "Required parameter: pageToken",
                location="pageToken",
                locationType="parameter",
            )
        if not token.isdigit() or int(token) - self._change_counter > length:
            raise _ApiError(400, "invalid", "Invalid Value", location="pageToken", locationType="parameter")
        return max(int(token) - self._change_counter, 0)

    async def _changes_watch(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/drive/api/reference/rest/v3/changes/watch"""
        try:
            account = self._bearer(request, _DRIVE_METADATA)
            page_token = request.query.get("pageToken", "")
            if not page_token:
                raise _ApiError(400, "required", "Required parameter: pageToken", location="pageToken")
            body = await _json_body(request)
            resource_id = _opaque_id(f"changes:{account}")
            uri = f"https://www.googleapis.com/drive/v3/changes?alt=json&pageToken={page_token}"
            channel = self._open_channel(account, body, "changes", resource_id, uri)
        except _ApiError as error:
            return self._api_error(error)
        return self._channel_answer(channel)

    async def _files_list(self, request: web.Request) -> web.Response:
        """https://developers.google.com/workspace/drive/api/reference/rest/v3/files/list"""
        query = request.query
        try:
            account = self._bearer(request, _DRIVE_METADATA)
            page_size = _page_size(query.get("pageSize"), default=100, maximum=1000, name="pageSize")
            offset = _page_offset(query.get("pageToken"))
            terms = _drive_query(query.get("q", ""))
            order = query.get("orderBy")
            if order and any(t[0] == "fullText" for t in terms):
                raise _ApiError(
                    400,
                    "badRequest",
                    "Sorting is not supported for queries with fullText terms. Results are always in "
                    "descending relevance order.",
                    location="orderBy",
                    locationType="parameter",
                )
            top, per_file = _drive_fields(query.get("fields"), listing=True)
        except _ApiError as error:
            return self._api_error(error)
        files = [f for f in self._files.get(account, {}).values() if all(_drive_match(f, t) for t in terms)]
        if order:
            for key in reversed(order.split(",")):
                name, _, direction = key.strip().partition(" ")
                attr = {"modifiedTime": "modified_time", "name": "name", "createdTime": "created_time"}.get(
                    name
                )
                if attr is None:
                    return self._api_error(
                        _ApiError(
                            400, "invalid", "Invalid Value", location="orderBy", locationType="parameter"
                        )
                    )
                files.sort(key=attrgetter(attr), reverse=direction == "desc")
        page = files[offset : offset + page_size]
        answer: dict[str, Any] = {
            "kind": "drive#fileList",
            "incompleteSearch": False,
            "files": [_file_resource(f, per_file) for f in page],
        }
        if offset + page_size < len(files):
            answer["nextPageToken"] = _page_token(offset + page_size)
        if top is not None:
            answer = {k: v for k, v in answer.items() if k in top}
        return web.json_response(answer)

    def _file(self, account: str, file_id: str) -> _File:
        found = self._files.get(account, {}).get(file_id)
        if found is None:
            raise _ApiError(
                404, "notFound", f"File not found: {file_id}.", location="fileId", locationType="parameter"
            )
        return found

    async def _files_get(self, request: web.Request) -> web.StreamResponse:
        """https://developers.google.com/workspace/drive/api/reference/rest/v3/files/get"""
        media = request.query.get("alt") == "media"
        try:
            account = self._bearer(request, _DRIVE_CONTENT if media else _DRIVE_METADATA)
            found = self._file(account, request.match_info["fileId"])
            if not media:
                _, per_file = _drive_fields(request.query.get("fields"), listing=False)
                return web.json_response(_file_resource(found, per_file))
            if found.mime_type.startswith("application/vnd.google-apps."):
                raise _ApiError(
                    403,
                    "fileNotDownloadable",
                    "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
                    location="alt",
                    locationType="parameter",
                )
        except _ApiError as error:
            return self._api_error(error)
        return _ranged(request, found.content, found.mime_type)

    async def _files_export(self, request: web.Request) -> web.StreamResponse:
        """https://developers.google.com/workspace/drive/api/reference/rest/v3/files/export"""
        try:
            account = self._bearer(request, _DRIVE_CONTENT)
            found = self._file(account, request.match_info["fileId"])
            target = request.query.get("mimeType")
            if not target:
                raise _ApiError(
                    400,
                    "required",
                    "Required parameter: mimeType",
                    location="mimeType",
                    locationType="parameter",
                )
            if found.mime_type not in _EXPORTS:
                raise _ApiError(403, "fileNotExportable", "Export only supports Docs Editors files.")
            if target not in _EXPORTS[found.mime_type]:
                raise _ApiError(
                    400,
                    "badRequest",
                    "The requested conversion is not supported.",
                    location="convertTo",
                    locationType="parameter",
                )
            if len(found.content) > self.export_limit_bytes:
                raise _ApiError(403, "exportSizeLimitExceeded", "This file is too large to be exported.")
        except _ApiError as error:
            return self._api_error(error)
        return web.Response(body=found.content, content_type=target, charset="utf-8")

    # --- Health -----------------------------------------------------------------------------------------

    def _health_user(self, request: web.Request, scopes: frozenset[str]) -> str:
        account = self._bearer(request, scopes)
        user = request.match_info["user"]
        if user not in ("me", _health_user_id(account)):
            raise _ApiError(403, "", "The caller does not have permission")
        return account

    def _health_type(self, request: web.Request) -> tuple[str, str]:
        data_type = request.match_info["dataType"]
        if data_type not in HEALTH_SCOPES:
            raise _ApiError(400, "", f"Unsupported data type: {data_type}")
        return self._health_user(request, HEALTH_SCOPES[data_type]), data_type

    def _health_error(self, error: _ApiError) -> web.Response:
        """An AIP-193 error; a reason in capitals (`INVALID_DATA_POINT_FILTER`) goes in an ErrorInfo."""
        if error.status == 403 and error.reason == "insufficientPermissions":
            error = _ApiError(403, "", "Request had insufficient authentication scopes.")
        details = (
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": error.reason,
                    "domain": "health.googleapis.com",
                }
            ]
            if error.reason.isupper()
            else None
        )
        return self._api_error(error, with_errors=False, details=details)

    async def _health_identity(self, request: web.Request) -> web.Response:
        """https://developers.google.com/health/reference/rest/v4/users/getIdentity"""
        try:
            account = self._health_user(request, _ANY_HEALTH)
        except _ApiError as error:
            return self._health_error(error)
        user = _health_user_id(account)
        return web.json_response(
            {"name": "users/me/identity", "healthUserId": user, "legacyUserId": user[-6:]}
        )

    async def _health_list(self, request: web.Request) -> web.Response:
        """https://developers.google.com/health/reference/rest/v4/users.dataTypes.dataPoints/list"""
        try:
            account, data_type = self._health_type(request)
            long_records = data_type in ("sleep", "exercise")
            page_size = _page_size(
                request.query.get("pageSize"),
                default=25 if long_records else 1440,
                maximum=25 if long_records else 10000,
                name="pageSize",
                clamp=True,
            )
            offset = _page_offset(request.query.get("pageToken"))
            keep = _health_filter(data_type, request.query.get("filter", ""))
        except _ApiError as error:
            return self._health_error(error)
        points = [p for p in self._points.get(account, {}).get(data_type, []) if keep(p)]
        points.sort(key=lambda p: _point_moments(data_type, p)[0], reverse=True)  # newest first
        answer: dict[str, Any] = {"dataPoints": points[offset : offset + page_size]}
        if offset + page_size < len(points):
            answer["nextPageToken"] = _page_token(offset + page_size)
        return web.json_response(answer)

    async def _health_rollup(self, request: web.Request) -> web.Response:
        """https://developers.google.com/health/reference/rest/v4/users.dataTypes.dataPoints/rollUp"""
        try:
            account, data_type = self._health_type(request)
            if data_type not in _ROLLUP_TYPES:
                raise _ApiError(400, "", f"Data type {data_type} does not support roll-ups")
            body = await _json_body(request)
            span = body.get("range") or {}
            start = _required_time(span.get("startTime"), "range.startTime")
            end = _required_time(span.get("endTime"), "range.endTime")
            window = _duration(body.get("windowSize", ""))
            if end <= start or window <= timedelta(0):
                raise _ApiError(400, "", "range must be non-empty and windowSize at least 1s")
            page_size = _page_size(
                body.get("pageSize"), default=1440, maximum=10000, name="pageSize", clamp=True
            )
            offset = _page_offset(body.get("pageToken"))
        except _ApiError as error:
            return self._health_error(error)
        points = self._points.get(account, {}).get(data_type, [])
        windows: list[dict[str, Any]] = []
        cursor = start
        while cursor < end:
            upper = min(cursor + window, end)
            inside = [p for p in points if cursor <= _point_moments(data_type, p)[0] < upper]
            if inside:
                windows.append(
                    {
                        "startTime": _rfc3339(cursor, UTC),
                        "endTime": _rfc3339(upper, UTC),
                        _camel(data_type): _aggregate(data_type, inside),
                    }
                )
            cursor = upper
        answer: dict[str, Any] = {"rollupDataPoints": windows[offset : offset + page_size]}
        if offset + page_size < len(windows):
            answer["nextPageToken"] = _page_token(offset + page_size)
        return web.json_response(answer)

    async def _health_daily(self, request: web.Request) -> web.Response:
        """https://developers.google.com/health/reference/rest/v4/users.dataTypes.dataPoints/dailyRollUp"""
        try:
            account, data_type = self._health_type(request)
            if data_type not in _ROLLUP_TYPES:
                raise _ApiError(400, "", f"Data type {data_type} does not support roll-ups")
            body = await _json_body(request)
            span = body.get("range") or {}
            first, last = _civil(span.get("start"), "range.start"), _civil(span.get("end"), "range.end")
            days = int(body.get("windowSizeDays") or 1)
            cap = 14 if data_type in _SHORT_ROLLUP_RANGE else 90
            if last <= first or days < 1:
                raise _ApiError(400, "", "range must be non-empty and windowSizeDays at least 1")
            if (last - first) > timedelta(days=cap):
                raise _ApiError(400, "", f"The range of a {data_type} daily roll-up is at most {cap} days")
        except _ApiError as error:
            return self._health_error(error)
        points = self._points.get(account, {}).get(data_type, [])
        windows: list[dict[str, Any]] = []
        cursor = first
        while cursor < last:
            upper = min(cursor + timedelta(days=days), last)
            inside = [p for p in points if cursor <= _point_moments(data_type, p)[1] < upper]
            if inside:
                windows.append(
                    {
                        "civilStartTime": _civil_json(cursor),
                        "civilEndTime": _civil_json(upper),
                        _camel(data_type): _aggregate(data_type, inside),
                    }
                )
            cursor = upper
        return web.json_response({"rollupDataPoints": windows})


# --- helpers: OAuth -------------------------------------------------------------------------------------


def _full_scope(scope: str) -> str:
    if scope in ("openid", "email", "profile") or "://" in scope:
        return scope
    return SCOPE_PREFIX + scope


def _known_scope(scope: str) -> bool:
    return (
        scope in ("openid", "email", "profile")
        or scope.startswith(SCOPE_PREFIX)
        or scope.startswith("https://www.googleapis.com/auth/")
    )


def _token_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=_NO_STORE
    )


def _error_page(status: int, error: str, description: str) -> web.Response:
    """What Google shows the user instead of redirecting: "Error 400: redirect_uri_mismatch"."""
    return web.Response(
        status=status,
        content_type="text/html",
        text=f"<html><body><h1>Access blocked</h1><p>Error {status}: {error}</p><p>{description}</p>"
        "</body></html>",
    )


# --- helpers: time --------------------------------------------------------------------------------------


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return moment


def _required_time(value: Any, name: str) -> datetime:
    if not value:
        raise _ApiError(400, "required", f"Missing {name}", location=name, locationType="parameter")
    found = _optional_time(value, name)
    assert found is not None
    return found


def _optional_time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return _parse_time(str(value))
    except ValueError:
        raise _ApiError(400, "badRequest", "Bad Request", location=name, locationType="parameter") from None


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _ApiError(
            400, "invalid", f"Invalid time zone: {name}", location="timeZone", locationType="parameter"
        ) from None


def _rfc3339(moment: datetime, zone: tzinfo) -> str:
    local = moment.astimezone(zone)
    text = local.isoformat(timespec="seconds")
    return text[:-6] + "Z" if local.utcoffset() == timedelta(0) else text


def _rfc3339_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(value: Any) -> timedelta:
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)s", str(value))
    if match is None:
        raise _ApiError(400, "", f"Invalid duration: {value!r}")
    return timedelta(seconds=float(match.group(1)))


def _offset_text(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta(0)
    return f"{int(offset.total_seconds())}s"


# --- helpers: paging ------------------------------------------------------------------------------------


def _page_token(offset: int) -> str:
    raw = json.dumps({"o": offset, "n": secrets.token_hex(4)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_offset(token: Any) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(str(token) + "=" * (-len(str(token)) % 4))
        offset = int(json.loads(raw)["o"])
    except (ValueError, KeyError, TypeError):
        raise _ApiError(
            400, "invalid", "Invalid page token", location="pageToken", locationType="parameter"
        ) from None
    return offset


def _page_size(value: Any, *, default: int, maximum: int, name: str, clamp: bool = True) -> int:
    if value is None or value == "":
        return default
    try:
        size = int(value)
    except ValueError:
        raise _ApiError(
            400, "invalid", f"Invalid value for {name}", location=name, locationType="parameter"
        ) from None
    if size < 1:
        raise _ApiError(400, "invalid", f"Invalid value for {name}", location=name, locationType="parameter")
    return min(size, maximum) if clamp else size


def _sync_token(now: float) -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": now}).encode()).decode().rstrip("=")


def _read_sync_token(token: str) -> datetime:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return datetime.fromtimestamp(float(json.loads(raw)["s"]), UTC)
    except (ValueError, KeyError, TypeError):
        raise _ApiError(
            410,
            "fullSyncRequired",
            "Sync token is no longer valid, a full sync is required.",
            domain="calendar",
        ) from None


def _opaque_id(seed: str) -> str:
    """A resource id as Google gives them: opaque, stable for the resource."""
    return base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()[:18]).decode()


def _http_date(seconds: float) -> str:
    """`Tue, 19 Nov 2013 01:13:52 GMT` (what `X-Goog-Channel-Expiration` carries)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _ApiError(400, "parseError", "Parse Error") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "parseError", "Parse Error")
    return body


# --- helpers: Calendar ----------------------------------------------------------------------------------


def _event_span(event: dict[str, Any], home: tzinfo) -> tuple[datetime, datetime]:
    """The event's (first) start and end as instants; all-day dates are midnights in the calendar's zone."""
    return _moment(event["start"], home), _moment(event["end"], home)


def _moment(when: dict[str, Any], home: tzinfo) -> datetime:
    if "date" in when:
        day = date.fromisoformat(when["date"])
        return datetime(day.year, day.month, day.day, tzinfo=home)
    moment = datetime.fromisoformat(when["dateTime"])
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(when.get("timeZone", "UTC")))
    return moment


@dataclass(frozen=True)
class _Rule:
    freq: str
    interval: int
    count: int | None
    until: datetime | date | None
    weekdays: tuple[int, ...]


_WEEKDAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}


def _parse_rrule(lines: Sequence[str]) -> _Rule:
    """The RRULE subset the emulator expands (RFC 5545 §3.3.10): DAILY or WEEKLY, INTERVAL, COUNT or UNTIL,
    BYDAY (weekly). Anything else raises ValueError at `add_event` rather than being ignored."""
    rules = [line for line in lines if line.startswith("RRULE:")]
    if len(rules) != 1 or len(rules) != len(lines):
        raise ValueError(f"the emulator expands exactly one RRULE line, got {list(lines)!r}")
    parts = dict(part.split("=", 1) for part in rules[0][6:].split(";"))
    unknown = set(parts) - {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "WKST"}
    if (
        parts.get("FREQ") not in ("DAILY", "WEEKLY")
        or unknown
        or (parts.get("BYDAY") and parts["FREQ"] != "WEEKLY")
    ):
        raise ValueError(f"unsupported RRULE: {rules[0]!r}")
    until: datetime | date | None = None
    if "UNTIL" in parts:
        text = parts["UNTIL"]
        until = (
            datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            if "T" in text
            else datetime.strptime(text, "%Y%m%d").date()
        )
    weekdays = tuple(sorted(_WEEKDAYS[d] for d in parts["BYDAY"].split(","))) if parts.get("BYDAY") else ()
    return _Rule(
        parts["FREQ"],
        int(parts.get("INTERVAL", "1")),
        int(parts["COUNT"]) if "COUNT" in parts else None,
        until,
        weekdays,
    )


def _local_starts(first: datetime, rule: _Rule) -> Iterator[datetime]:
    """Wall-clock starts of the series (naive), in order, the first one included."""
    if rule.freq == "DAILY":
        step, n = timedelta(days=rule.interval), 0
        while True:
            yield first + step * n
            n += 1
    weekdays = rule.weekdays or (first.weekday(),)
    week = first - timedelta(days=first.weekday())
    while True:
        for day in weekdays:
            candidate = week + timedelta(days=day)
            if candidate >= first:
                yield candidate
        week += timedelta(weeks=rule.interval)


def _instances(
    event: dict[str, Any], home: tzinfo, horizon: datetime
) -> Iterator[tuple[dict[str, Any], tuple[datetime, datetime]]]:
    """The occurrences of a recurring event starting before `horizon`, as Calendar renders instances."""
    rule = _parse_rrule(event["recurrence"])
    all_day = "date" in event["start"]
    first, last = _event_span(event, home)
    length = last - first
    zone: tzinfo
    if all_day:
        zone = home
    elif "timeZone" in event["start"]:
        zone = ZoneInfo(event["start"]["timeZone"])
    else:
        zone = first.tzinfo or UTC
    local_first = first.astimezone(zone).replace(tzinfo=None)
    for n, local in enumerate(_local_starts(local_first, rule)):
        start = local.replace(tzinfo=zone)
        if (rule.count is not None and n >= rule.count) or start >= horizon or n > 5000:
            return
        if isinstance(rule.until, datetime) and start > rule.until:
            return
        if (
            isinstance(rule.until, date)
            and not isinstance(rule.until, datetime)
            and local.date() > rule.until
        ):
            return
        instance = {k: v for k, v in event.items() if k != "recurrence"}
        instance["recurringEventId"] = event["id"]
        if all_day:
            days = length.days
            instance["id"] = f"{event['id']}_{local:%Y%m%d}"
            instance["start"] = {"date": local.date().isoformat()}
            instance["end"] = {"date": (local.date() + timedelta(days=days)).isoformat()}
            instance["originalStartTime"] = {"date": local.date().isoformat()}
        else:
            end = (start + length).astimezone(UTC).astimezone(zone)
            instance["id"] = f"{event['id']}_{start.astimezone(UTC):%Y%m%dT%H%M%SZ}"
            instance["start"] = {**event["start"], "dateTime": start.isoformat()}
            instance["end"] = {**event["end"], "dateTime": end.isoformat()}
            instance["originalStartTime"] = dict(instance["start"])
        yield instance, (start, start + length)


def _occurrence_spans(
    event: dict[str, Any], home: tzinfo, horizon: datetime
) -> list[tuple[datetime, datetime]]:
    if "recurrence" not in event:
        return [_event_span(event, home)]
    return [span for _, span in _instances(event, home, horizon)]


def _render_event(event: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
    """Timed starts and ends are written in the response's time zone; `timeZone` stays the event's."""
    rendered = dict(event)
    for key in ("start", "end", "originalStartTime"):
        when = event.get(key)
        if when is not None and "dateTime" in when:
            rendered[key] = {**when, "dateTime": _rfc3339(_moment(when, UTC), zone)}
    return rendered


# --- helpers: Drive -------------------------------------------------------------------------------------


def _drive_id() -> str:
    return "1" + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


_Q_TERM = re.compile(
    r"\s*(?P<field>fullText|name|mimeType|trashed|modifiedTime)\s+(?P<op>contains|=|!=|>=|<=|>|<)\s+"
    r"(?P<value>'(?:[^'\\]|\\.)*'|true|false)\s*"
)


def _drive_query(q: str) -> list[tuple[str, str, str]]:
    """`q` as (field, operator, value) terms joined by `and`; other syntax answers 400 Invalid Value."""
    terms: list[tuple[str, str, str]] = []
    rest = q.strip()
    while rest:
        match = _Q_TERM.match(rest)
        if match is None:
            raise _ApiError(400, "invalid", "Invalid Value", location="q", locationType="parameter")
        value = match["value"]
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        terms.append((match["field"], match["op"], value))
        rest = rest[match.end() :]
        if rest:
            joined = re.match(r"and\s+", rest)
            if joined is None:
                raise _ApiError(400, "invalid", "Invalid Value", location="q", locationType="parameter")
            rest = rest[joined.end() :]
    return terms


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _drive_match(file: _File, term: tuple[str, str, str]) -> bool:
    name, op, value = term
    if name == "trashed":
        return (file.trashed == (value == "true")) == (op == "=")
    if name == "mimeType":
        return (file.mime_type == value) == (op == "=")
    if name == "modifiedTime":
        moment = datetime.fromisoformat(value)
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return {
            ">": file.modified_time > moment,
            ">=": file.modified_time >= moment,
            "<": file.modified_time < moment,
            "<=": file.modified_time <= moment,
            "=": file.modified_time == moment,
            "!=": file.modified_time != moment,
        }[op]
    if name == "name" and op in ("=", "!="):
        return (file.name == value) == (op == "=")
    wanted = _words(value)
    if name == "name":
        # Drive matches `name contains` on prefixes of the name's words.
        words = _words(file.name)
        return bool(wanted) and any(
            words[i : i + len(wanted) - 1] == wanted[:-1]
            and words[i + len(wanted) - 1].startswith(wanted[-1])
            for i in range(len(words) - len(wanted) + 1)
        )
    # fullText: whole words, in the name or the content
    haystack = _words(file.name + " " + file.content.decode("utf-8", "ignore"))
    return bool(wanted) and any(haystack[i : i + len(wanted)] == wanted for i in range(len(haystack)))


def _split_fields(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _drive_fields(fields: str | None, *, listing: bool) -> tuple[set[str] | None, set[str] | None]:
    """(top-level fields, per-file fields) of a `fields` selector; None means everything. Without `fields`
    Drive answers only kind, id, name and mimeType per file."""
    default = {"kind", "id", "name", "mimeType"}
    if not fields:
        return None, default
    if fields.strip() == "*":
        return None, None
    if not listing:
        return None, set(_split_fields(fields))
    top: set[str] = set()
    per_file: set[str] | None = set()
    for part in _split_fields(fields):
        match = re.fullmatch(r"files(?:\((.*)\))?", part)
        if match is None:
            top.add(part.split("/")[0])
            continue
        top.add("files")
        inner = match.group(1)
        per_file = None if inner in (None, "*") else set(_split_fields(inner))
    return top, per_file


def _change_fields(fields: str | None) -> tuple[set[str] | None, set[str] | None, set[str] | None]:
    """(top-level, per-change, per-file) fields of a changes.list `fields` selector; None means everything.
    Without `fields` Drive answers every field of the list and its changes, and a file's default four."""
    if not fields:
        return None, None, {"kind", "id", "name", "mimeType"}
    if fields.strip() == "*":
        return None, None, None
    top: set[str] = set()
    per_change: set[str] | None = None
    per_file: set[str] | None = None
    for part in _split_fields(fields):
        match = re.fullmatch(r"changes(?:\((.*)\))?", part)
        if match is None:
            top.add(part.split("/")[0])
            continue
        top.add("changes")
        inner = match.group(1)
        if inner in (None, "*"):
            continue
        per_change = set()
        for item in _split_fields(inner):
            nested = re.fullmatch(r"file(?:\((.*)\))?", item)
            if nested is None:
                per_change.add(item.split("/")[0])
                continue
            per_change.add("file")
            per_file = None if nested.group(1) in (None, "*") else set(_split_fields(nested.group(1)))
    return top, per_change, per_file


def _flag(value: str | None, *, default: bool, name: str) -> bool:
    """A boolean query parameter ("true"/"false")."""
    if value is None or value == "":
        return default
    if value not in ("true", "false"):
        raise _ApiError(400, "invalid", f"Invalid value for {name}", location=name, locationType="parameter")
    return value == "true"


def _drive_time(moment: datetime) -> str:
    """Drive's RFC 3339 form: UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _file_resource(file: _File, fields: set[str] | None) -> dict[str, Any]:
    native = file.mime_type.startswith("application/vnd.google-apps.")
    kind = {GOOGLE_DOC: "document", GOOGLE_SHEET: "spreadsheets", GOOGLE_SLIDES: "presentation"}.get(
        file.mime_type
    )
    link = (
        f"https://docs.google.com/{kind}/d/{file.id}/edit?usp=drivesdk"
        if kind
        else f"https://drive.google.com/file/d/{file.id}/view?usp=drivesdk"
    )
    resource: dict[str, Any] = {
        "kind": "drive#file",
        "id": file.id,
        "name": file.name,
        "mimeType": file.mime_type,
        "trashed": file.trashed,
        "createdTime": _drive_time(file.created_time),
        "modifiedTime": _drive_time(file.modified_time),
        "webViewLink": link,
        "parents": ["root"],
    }
    if not native:  # Drive reports no size for Docs Editors files
        resource["size"] = str(len(file.content))  # int64 as a string
        resource["md5Checksum"] = hashlib.md5(file.content, usedforsecurity=False).hexdigest()
    if fields is None:
        return resource
    return {k: v for k, v in resource.items() if k in fields}


def _ranged(request: web.Request, content: bytes, mime_type: str) -> web.Response:
    """The content, or the single `Range: bytes=a-b` asked for (206)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("Range", ""))
    if match is None or not (match[1] or match[2]):
        return web.Response(body=content, content_type=mime_type)
    if match[1]:
        first = int(match[1])
        last = min(int(match[2]) if match[2] else len(content) - 1, len(content) - 1)
    else:
        first, last = max(len(content) - int(match[2]), 0), len(content) - 1
    if first > last:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(content)}"})
    return web.Response(
        status=206,
        body=content[first : last + 1],
        content_type=mime_type,
        headers={"Content-Range": f"bytes {first}-{last}/{len(content)}"},
    )


# --- helpers: Health ------------------------------------------------------------------------------------


def _camel(data_type: str) -> str:
    head, *rest = data_type.split("-")
    return head + "".join(part.capitalize() for part in rest)


def _health_user_id(account: str) -> str:
    return str(int(hashlib.sha256(account.encode()).hexdigest()[:15], 16))


def _civil_json(moment: datetime) -> dict[str, Any]:
    """A `CivilDateTime` as proto3 JSON writes it: zero fields left out."""
    time_of_day = {
        k: v for k, v in (("hours", moment.hour), ("minutes", moment.minute), ("seconds", moment.second)) if v
    }
    answer: dict[str, Any] = {"date": {"year": moment.year, "month": moment.month, "day": moment.day}}
    if time_of_day:
        answer["time"] = time_of_day
    return answer


def _civil(value: Any, name: str) -> datetime:
    """A request's `CivilDateTime` as a naive datetime."""
    try:
        day, clock = value["date"], value.get("time", {})
        return datetime(
            int(day["year"]),
            int(day["month"]),
            int(day["day"]),
            int(clock.get("hours", 0)),
            int(clock.get("minutes", 0)),
            int(clock.get("seconds", 0)),
        )
    except (TypeError, KeyError, ValueError):
        raise _ApiError(
            400, "", f"Invalid {name}: a CivilDateTime with date.year, month and day is required"
        ) from None


def _interval(start: datetime, end: datetime) -> dict[str, Any]:
    """An `Interval` of aware datetimes, the civil times in their own UTC offsets."""
    return {
        "startTime": _rfc3339(start, UTC),
        "startUtcOffset": _offset_text(start),
        "endTime": _rfc3339(end, UTC),
        "endUtcOffset": _offset_text(end),
        "civilStartTime": _civil_json(start.replace(tzinfo=None)),
        "civilEndTime": _civil_json(end.replace(tzinfo=None)),
    }


def _sample_time(at: datetime) -> dict[str, Any]:
    return {
        "physicalTime": _rfc3339(at, UTC),
        "utcOffset": _offset_text(at),
        "civilTime": _civil_json(at.replace(tzinfo=None)),
    }


def _point_moments(data_type: str, point: dict[str, Any]) -> tuple[datetime, datetime, datetime, datetime]:
    """(physical start, civil start, physical end, civil end) of a point; a sample's start is its end, and a
    daily point's moments are its civil date's midnight (UTC stands in for the physical ones)."""
    value = point[_camel(data_type)]
    if "date" in value:
        day = _civil({"date": value["date"]}, "date")
        return day.replace(tzinfo=UTC), day, day.replace(tzinfo=UTC), day
    if "interval" in value:
        interval = value["interval"]
        start, end = _parse_time(interval["startTime"]), _parse_time(interval["endTime"])
        civil_start = (
            _civil(interval["civilStartTime"], "civilStartTime")
            if "civilStartTime" in interval
            else (start + _duration(interval.get("startUtcOffset", "0s"))).replace(tzinfo=None)
        )
        civil_end = (
            _civil(interval["civilEndTime"], "civilEndTime")
            if "civilEndTime" in interval
            else (end + _duration(interval.get("endUtcOffset", "0s"))).replace(tzinfo=None)
        )
        return start, civil_start, end, civil_end
    sample = value["sampleTime"]
    moment = _parse_time(sample["physicalTime"])
    civil = (
        _civil(sample["civilTime"], "civilTime")
        if "civilTime" in sample
        else (moment + _duration(sample.get("utcOffset", "0s"))).replace(tzinfo=None)
    )
    return moment, civil, moment, civil


_FILTER_TERM = re.compile(
    r'\s*(?P<field>[a-z_]+(?:\.[a-z_]+)+)\s*(?P<op>>=|<=|!=|>|<|=)\s*"(?P<value>[^"]*)"\s*'
)
_FILTER_FIELDS = {
    "interval.start_time": 0,
    "interval.civil_start_time": 1,
    "interval.end_time": 2,
    "interval.civil_end_time": 3,
    "sample_time.physical_time": 0,
    "sample_time.civil_time": 1,
    "date": 1,
}
"""Which of `_point_moments` a filter field compares."""
_FILTER_ERROR = "INVALID_DATA_POINT_FILTER"


def _health_filter(data_type: str, text: str) -> Callable[[dict[str, Any]], bool]:
    """An AIP-160 filter of time comparisons: conjuncts joined by AND, each a comparison or a parenthesised
    OR of comparisons (OR binds tighter than AND in AIP-160)."""
    prefix = data_type.replace("-", "_") + "."
    conjuncts = [c.strip() for c in re.split(r"\s+AND\s+", text.strip())] if text.strip() else []
    tests: list[list[tuple[int, str, datetime]]] = []
    for conjunct in conjuncts:
        inner = conjunct[1:-1] if conjunct.startswith("(") and conjunct.endswith(")") else conjunct
        alternatives: list[tuple[int, str, datetime]] = []
        for term in re.split(r"\s+OR\s+", inner):
            match = _FILTER_TERM.fullmatch(term)
            if match is None or not match["field"].startswith(prefix):
                raise _ApiError(400, _FILTER_ERROR, f"Invalid filter: {term!r}")
            field_name = match["field"][len(prefix) :]
            if field_name not in _RECORD_FILTERS[data_type]:
                raise _ApiError(400, _FILTER_ERROR, f"Unsupported filter field: {match['field']}")
            if match["op"] not in (">=", "<"):  # the only two comparisons the API supports
                raise _ApiError(400, _FILTER_ERROR, f"Unsupported comparison operator: {match['op']}")
            which = _FILTER_FIELDS[field_name]
            raw = match["value"]
            try:
                if which % 2:  # civil: a date or a date and time, no offset
                    value = datetime.fromisoformat(raw)
                    if value.tzinfo is not None:
                        raise ValueError(raw)
                else:
                    value = _parse_time(raw)
            except ValueError:
                raise _ApiError(400, _FILTER_ERROR, f"Invalid time in filter: {raw!r}") from None
            alternatives.append((which, match["op"], value))
        tests.append(alternatives)

    def compare(left: datetime, op: str, right: datetime) -> bool:
        return left >= right if op == ">=" else left < right

    def keep(point: dict[str, Any]) -> bool:
        moments = _point_moments(data_type, point)
        return all(any(compare(moments[w], op, v) for w, op, v in alts) for alts in tests)

    return keep


def _aggregate(data_type: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    values = [p[_camel(data_type)] for p in points]
    if data_type == "steps":
        return {"countSum": str(sum(int(v["count"]) for v in values))}
    if data_type == "heart-rate":
        bpm = [float(v["beatsPerMinute"]) for v in values]
        return {
            "beatsPerMinuteAvg": sum(bpm) / len(bpm),
            "beatsPerMinuteMin": min(bpm),
            "beatsPerMinuteMax": max(bpm),
        }
    if data_type == "active-energy-burned":
        return {"kcalSum": sum(float(v["kcal"]) for v in values)}
    if data_type == "weight":
        grams = [float(v["weightGrams"]) for v in values]
        return {"weightGramsAvg": sum(grams) / len(grams)}
    raise AssertionError(data_type)
