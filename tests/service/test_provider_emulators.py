"""The provider emulators (tests/emulators) held to the shapes of the official references, by a client that
talks to them over loopback HTTP as AthenaOS's integrations will talk to Google and Microsoft:

- OAuth: the authorization redirect, PKCE, one-time codes, client authentication, refresh (a new refresh
  token at Microsoft, none at Google), Google's revocation, Microsoft's lack of one, incremental consent,
  and the error bodies of each (RFC 6749 §5.2 at Google, AADSTS bodies at Microsoft);
- the APIs: the 401 of an expired or revoked token, 403 of a missing scope, 429 with `Retry-After`, paging
  followed to the end, recurring and all-day events, Drive's field selection, download and export rules,
  Health's filters and roll-ups, Graph's nextLink, time-zone preference and content redirect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import http_ece
import httpx
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from doubles.clock import FakeClock
from emulators import GoogleEmulator, MicrosoftEmulator, PushEmulator
from emulators.google import GOOGLE_DOC
from emulators.push import BrowserSubscription
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

REDIRECT = "http://127.0.0.1:8080/oauth/callback"
ADA = "ada@example.com"
CAL = "https://www.googleapis.com/auth/calendar.readonly"
DRIVE = "https://www.googleapis.com/auth/drive.readonly"
STEPS = "https://www.googleapis.com/auth/googlehealth.activity_and_fitness.readonly"
GRAPH = "https://graph.microsoft.com/"
BERLIN = timezone(timedelta(hours=1))  # Europe/Berlin in November


def s256(verifier: str) -> str:
    """RFC 7636 §4.2, written out here rather than taken from the emulators."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@pytest_asyncio.fixture
async def google() -> AsyncIterator[GoogleEmulator]:
    emulator = GoogleEmulator(account=ADA)
    emulator.register_client("g-client", "g-secret", [REDIRECT])
    server = TestServer(emulator.app, host="127.0.0.1")
    await server.start_server()
    emulator.base_url = str(server.make_url("")).rstrip("/")
    try:
        yield emulator
    finally:
        await server.close()


@pytest_asyncio.fixture
async def microsoft() -> AsyncIterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator(account=ADA)
    emulator.register_client("m-client", "m-secret", [REDIRECT])
    server = TestServer(emulator.app, host="127.0.0.1")
    await server.start_server()
    emulator.base_url = str(server.make_url("")).rstrip("/")
    try:
        yield emulator
    finally:
        await server.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as client:
        yield client


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def google_authorize(
    http: httpx.AsyncClient, google: GoogleEmulator, scopes: list[str], **extra: str
) -> tuple[dict[str, str], str]:
    """The browser leg: the redirect's parameters and the PKCE verifier."""
    verifier = secrets.token_urlsafe(48)
    params = {
        "client_id": "g-client",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": " ".join(scopes),
        "state": "st-1",
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        "access_type": "offline",
        **extra,
    }
    return redirect_params(await http.get(google.oauth_authorize_url, params=params)), verifier


async def google_redeem(
    http: httpx.AsyncClient, google: GoogleEmulator, code: str, verifier: str, secret: str | None = None
) -> httpx.Response:
    return await http.post(
        google.oauth_token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "g-client",
            "client_secret": secret or "g-secret",
            "code_verifier": verifier,
        },
    )


async def google_token(http: httpx.AsyncClient, google: GoogleEmulator, scopes: list[str]) -> dict[str, Any]:
    params, verifier = await google_authorize(http, google, scopes)
    answer = await google_redeem(http, google, params["code"], verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def assert_google_error(response: httpx.Response, status: int, reason: str, status_name: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert error["status"] == status_name
    assert isinstance(error["message"], str)
    assert error["message"]
    assert [e["reason"] for e in error["errors"]] == [reason]
    assert {"domain", "reason", "message"} <= set(error["errors"][0])


# --- Google OAuth ---------------------------------------------------------------------------------------


async def test_google_code_flow_answers_code_scope_and_state_then_tokens(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    params, verifier = await google_authorize(http, google, ["calendar.readonly", DRIVE])

    assert params["state"] == "st-1"
    assert set(params["scope"].split()) == {CAL, DRIVE}
    answer = await google_redeem(http, google, params["code"], verifier)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    token = answer.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3599
    assert set(token["scope"].split()) == {CAL, DRIVE}
    assert token["refresh_token"]
    assert token["access_token"]
    sent = google.requests[-1]
    assert sent.path == "/token"
    assert sent.form()["code_verifier"] == verifier


async def test_google_refuses_a_wrong_verifier_a_replayed_code_and_a_wrong_secret(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    params, verifier = await google_authorize(http, google, [CAL])
    wrong = await google_redeem(http, google, params["code"], "x" * 43)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert "error_description" in wrong.json()

    params, verifier = await google_authorize(http, google, [CAL])
    assert (await google_redeem(http, google, params["code"], verifier)).status_code == 200
    replay = await google_redeem(http, google, params["code"], verifier)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")

    params, verifier = await google_authorize(http, google, [CAL])
    bad_client = await google_redeem(http, google, params["code"], verifier, secret="nope")
    assert (bad_client.status_code, bad_client.json()["error"]) == (401, "invalid_client")


async def test_google_shows_client_and_redirect_errors_instead_of_redirecting(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    base = {
        "response_type": "code",
        "scope": CAL,
        "code_challenge": s256("v" * 43),
        "code_challenge_method": "S256",
    }
    unknown = await http.get(
        google.oauth_authorize_url, params={**base, "client_id": "x", "redirect_uri": REDIRECT}
    )
    assert unknown.status_code == 401
    assert "invalid_client" in unknown.text
    elsewhere = await http.get(
        google.oauth_authorize_url,
        params={**base, "client_id": "g-client", "redirect_uri": "https://evil.example/"},
    )
    assert elsewhere.status_code == 400
    assert "redirect_uri_mismatch" in elsewhere.text


async def test_google_refusal_and_missing_pkce_go_back_as_errors(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    google.refuse_next_consent()
    params, _ = await google_authorize(http, google, [CAL])
    assert params == {"error": "access_denied", "state": "st-1"}

    params, _ = await google_authorize(http, google, [CAL], code_challenge_method="plain")
    assert params["error"] == "invalid_request"

    google.sign_in(None)
    params, _ = await google_authorize(http, google, [CAL], prompt="none")
    assert params["error"] == "login_required"


async def test_google_refresh_token_only_offline_and_when_consent_was_shown(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    params, verifier = await google_authorize(http, google, [CAL], access_type="online")
    assert "refresh_token" not in (await google_redeem(http, google, params["code"], verifier)).json()

    first = await google_token(http, google, [CAL])  # consented already, but no refresh token held yet
    assert "refresh_token" in first
    params, verifier = await google_authorize(http, google, [CAL])
    assert "refresh_token" not in (await google_redeem(http, google, params["code"], verifier)).json()
    params, verifier = await google_authorize(http, google, [CAL], prompt="consent")
    assert "refresh_token" in (await google_redeem(http, google, params["code"], verifier)).json()


async def test_google_incremental_consent_unions_earlier_scopes(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    await google_token(http, google, [CAL])
    params, _ = await google_authorize(http, google, [DRIVE], include_granted_scopes="true")
    assert set(params["scope"].split()) == {CAL, DRIVE}
    params, _ = await google_authorize(http, google, [DRIVE])
    assert params["scope"] == DRIVE

    google.narrow_next_consent([CAL])  # granular consent: the user leaves the new scope unticked
    params, _ = await google_authorize(http, google, [CAL, STEPS])
    assert params["scope"] == CAL


async def test_google_expired_token_is_401_until_refreshed(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    google.add_calendar(ADA, ADA, "Ada", "Europe/Berlin", primary=True)
    token = await google_token(http, google, [CAL])
    url = f"{google.calendar_base_url}/users/me/calendarList"
    assert (await http.get(url, headers=bearer(token))).status_code == 200

    google.expire_access_tokens()
    expired = await http.get(url, headers=bearer(token))
    assert_google_error(expired, 401, "authError", "UNAUTHENTICATED")
    assert expired.headers["www-authenticate"].startswith("Bearer")
    assert_google_error(await http.get(url), 401, "required", "UNAUTHENTICATED")

    refreshed = await http.post(
        google.oauth_token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "g-client",
            "client_secret": "g-secret",
        },
    )
    assert refreshed.status_code == 200
    assert "refresh_token" not in refreshed.json()  # Google keeps the one it gave
    assert (await http.get(url, headers=bearer(refreshed.json()))).status_code == 200


async def test_google_revoking_an_access_token_kills_its_refresh_token(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    google.add_calendar(ADA, ADA, "Ada", primary=True)
    token = await google_token(http, google, [CAL])

    revoked = await http.post(google.oauth_revoke_url, data={"token": token["access_token"]})
    assert (revoked.status_code, revoked.content) == (200, b"")
    refresh = await http.post(
        google.oauth_token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "g-client",
            "client_secret": "g-secret",
        },
    )
    assert refresh.status_code == 400
    assert refresh.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    again = await http.post(google.oauth_revoke_url, data={"token": token["refresh_token"]})
    assert (again.status_code, again.json()["error"]) == (400, "invalid_token")
    listed = await http.get(f"{google.calendar_base_url}/users/me/calendarList", headers=bearer(token))
    assert_google_error(listed, 401, "authError", "UNAUTHENTICATED")


async def test_google_grant_removed_by_the_user(google: GoogleEmulator, http: httpx.AsyncClient) -> None:
    google.add_calendar(ADA, ADA, "Ada", primary=True)
    token = await google_token(http, google, [CAL])
    google.revoke_grant(ADA)

    listed = await http.get(f"{google.calendar_base_url}/users/me/calendarList", headers=bearer(token))
    assert listed.status_code == 401
    refresh = await http.post(
        google.oauth_token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "g-client",
            "client_secret": "g-secret",
        },
    )
    assert refresh.json()["error"] == "invalid_grant"
    params, verifier = await google_authorize(http, google, [CAL])  # consent again: a new refresh token
    assert "refresh_token" in (await google_redeem(http, google, params["code"], verifier)).json()


async def test_google_scope_and_rate_limit_errors(google: GoogleEmulator, http: httpx.AsyncClient) -> None:
    google.add_calendar(ADA, ADA, "Ada", primary=True)
    token = await google_token(http, google, [DRIVE])
    url = f"{google.calendar_base_url}/calendars/primary/events"
    assert_google_error(
        await http.get(url, headers=bearer(token)), 403, "insufficientPermissions", "PERMISSION_DENIED"
    )

    google.rate_limit_next(2, retry_after_seconds=7)
    files = f"{google.drive_base_url}/files"
    for _ in range(2):
        limited = await http.get(files, headers=bearer(token))
        assert_google_error(limited, 429, "rateLimitExceeded", "RESOURCE_EXHAUSTED")
        assert limited.headers["retry-after"] == "7"
        assert limited.json()["error"]["errors"][0]["domain"] == "usageLimits"
    assert (await http.get(files, headers=bearer(token))).status_code == 200

    google.rate_limit_next(1, retry_after_seconds=None)
    assert "retry-after" not in (await http.get(files, headers=bearer(token))).headers


# --- Calendar -------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def calendar(google: GoogleEmulator, http: httpx.AsyncClient) -> dict[str, str]:
    google.add_calendar(ADA, ADA, "Ada", "Europe/Berlin", primary=True)
    return bearer(await google_token(http, google, [CAL]))


async def list_events(
    http: httpx.AsyncClient, google: GoogleEmulator, auth: dict[str, str], **params: str
) -> Any:
    answer = await http.get(
        f"{google.calendar_base_url}/calendars/primary/events", params=params, headers=auth
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_events_expand_weekly_rule_only_with_single_events(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str]
) -> None:
    master = google.add_event(
        ADA,
        "primary",
        {
            "summary": "Stand-up",
            "start": {"dateTime": "2026-11-02T09:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-11-02T09:15:00+01:00", "timeZone": "Europe/Berlin"},
            "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4"],
        },
    )
    window = {"timeMin": "2026-11-01T00:00:00Z", "timeMax": "2026-12-01T00:00:00Z"}

    expanded = await list_events(http, google, calendar, singleEvents="true", orderBy="startTime", **window)
    assert expanded["kind"] == "calendar#events"
    assert expanded["timeZone"] == "Europe/Berlin"
    starts = [e["start"]["dateTime"] for e in expanded["items"]]
    assert starts == [f"2026-11-{d:02d}T09:00:00+01:00" for d in (2, 4, 9, 11)]
    first = expanded["items"][0]
    assert first["id"] == f"{master['id']}_20261102T080000Z"
    assert first["recurringEventId"] == master["id"]
    assert first["originalStartTime"]["dateTime"] == "2026-11-02T09:00:00+01:00"
    assert first["start"]["timeZone"] == "Europe/Berlin"
    assert "recurrence" not in first

    masters = await list_events(http, google, calendar, **window)
    assert [e["id"] for e in masters["items"]] == [master["id"]]
    assert masters["items"][0]["recurrence"] == ["RRULE:FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4"]

    bad = await http.get(
        f"{google.calendar_base_url}/calendars/primary/events",
        params={"orderBy": "startTime"},
        headers=calendar,
    )
    assert_google_error(bad, 400, "badRequest", "INVALID_ARGUMENT")


async def test_daily_rule_keeps_wall_time_across_dst_and_stops_at_until(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str]
) -> None:
    google.add_event(
        ADA,
        "primary",
        {
            "summary": "Walk",
            "start": {"dateTime": "2026-10-24T09:00:00+02:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-10-24T10:00:00+02:00", "timeZone": "Europe/Berlin"},
            "recurrence": ["RRULE:FREQ=DAILY;UNTIL=20261026T235959Z"],
        },
    )
    listed = await list_events(
        http,
        google,
        calendar,
        singleEvents="true",
        orderBy="startTime",
        timeMin="2026-10-01T00:00:00Z",
        timeMax="2026-11-01T00:00:00Z",
        timeZone="Europe/Berlin",
    )
    assert [e["start"]["dateTime"] for e in listed["items"]] == [
        "2026-10-24T09:00:00+02:00",
        "2026-10-25T09:00:00+01:00",
        "2026-10-26T09:00:00+01:00",
    ]


async def test_all_day_events_have_exclusive_date_ends_and_bounds_are_exclusive(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str]
) -> None:
    google.add_event(
        ADA, "primary", {"summary": "Holiday", "start": {"date": "2026-11-03"}, "end": {"date": "2026-11-04"}}
    )
    midnight_after = "2026-11-03T23:00:00Z"  # 2026-11-04 00:00 in Berlin, where the event ends
    assert (await list_events(http, google, calendar, timeMin=midnight_after))["items"] == []
    listed = await list_events(
        http, google, calendar, timeMin="2026-11-03T22:59:59Z", timeMax="2026-11-04T00:00:00Z"
    )
    [holiday] = listed["items"]
    assert holiday["start"] == {"date": "2026-11-03"}
    assert holiday["end"] == {"date": "2026-11-04"}
    assert (await list_events(http, google, calendar, timeMax="2026-11-02T23:00:00Z"))["items"] == []


async def test_events_page_to_the_end_in_the_asked_time_zone(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str]
) -> None:
    for hour in range(5):
        google.add_event(
            ADA,
            "primary",
            {
                "summary": f"Slot {hour}",
                "start": {"dateTime": f"2026-11-05T{10 + hour}:00:00Z"},
                "end": {"dateTime": f"2026-11-05T{10 + hour}:30:00Z"},
            },
        )
    seen: list[str] = []
    params = {
        "singleEvents": "true",
        "orderBy": "startTime",
        "maxResults": "2",
        "timeZone": "America/New_York",
    }
    pages = 0
    while True:
        page = await list_events(http, google, calendar, **params)
        pages += 1
        assert len(page["items"]) <= 2
        seen += [e["start"]["dateTime"] for e in page["items"]]
        if "nextPageToken" not in page:
            assert "nextSyncToken" in page
            break
        assert "nextSyncToken" not in page
        params["pageToken"] = page["nextPageToken"]
    assert pages == 3
    assert seen == [f"2026-11-05T{5 + h:02d}:00:00-05:00" for h in range(5)]


async def test_freebusy_merges_busy_time_and_reports_unknown_calendars(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str]
) -> None:
    for start, end, transparency in [
        ("2026-11-02T09:00:00+01:00", "2026-11-02T10:00:00+01:00", "opaque"),
        ("2026-11-02T09:30:00+01:00", "2026-11-02T11:00:00+01:00", "opaque"),
        ("2026-11-02T14:00:00+01:00", "2026-11-02T15:00:00+01:00", "transparent"),
    ]:
        google.add_event(
            ADA,
            "primary",
            {"start": {"dateTime": start}, "end": {"dateTime": end}, "transparency": transparency},
        )
    answer = await http.post(
        f"{google.calendar_base_url}/freeBusy",
        json={
            "timeMin": "2026-11-02T00:00:00Z",
            "timeMax": "2026-11-03T00:00:00Z",
            "timeZone": "UTC",
            "items": [{"id": "primary"}, {"id": "nobody@example.com"}],
        },
        headers=calendar,
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["kind"] == "calendar#freeBusy"
    assert body["calendars"]["primary"]["busy"] == [
        {"start": "2026-11-02T08:00:00Z", "end": "2026-11-02T10:00:00Z"}
    ]
    assert body["calendars"]["nobody@example.com"]["errors"] == [{"domain": "global", "reason": "notFound"}]


async def test_calendar_list_pages_and_unknown_calendar_is_404(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str]
) -> None:
    google.add_calendar(ADA, "team@group.calendar.google.com", "Team", "UTC")
    google.add_calendar(ADA, "family@group.calendar.google.com", "Family", "UTC")
    url = f"{google.calendar_base_url}/users/me/calendarList"
    first = (await http.get(url, params={"maxResults": "2"}, headers=calendar)).json()
    second = (
        await http.get(url, params={"maxResults": "2", "pageToken": first["nextPageToken"]}, headers=calendar)
    ).json()
    entries = first["items"] + second["items"]
    assert "nextPageToken" not in second
    assert [e["id"] for e in entries] == [
        ADA,
        "team@group.calendar.google.com",
        "family@group.calendar.google.com",
    ]
    assert entries[0]["primary"] is True
    assert entries[0]["kind"] == "calendar#calendarListEntry"
    missing = await http.get(f"{google.calendar_base_url}/calendars/nope/events", headers=calendar)
    assert_google_error(missing, 404, "notFound", "NOT_FOUND")


# --- Drive ----------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def drive(google: GoogleEmulator, http: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await google_token(http, google, [DRIVE]))


async def test_drive_search_fields_and_paging(
    google: GoogleEmulator, http: httpx.AsyncClient, drive: dict[str, str]
) -> None:
    when = datetime(2026, 11, 1, 12, tzinfo=UTC)
    plan = google.add_file(ADA, "Project plan", GOOGLE_DOC, b"The launch plan for winter", when)
    google.add_file(ADA, "Old plan", GOOGLE_DOC, b"plan", when, trashed=True)
    google.add_file(ADA, "planning.pdf", "application/pdf", b"%PDF plan", when)
    for n in range(3):
        google.add_file(ADA, f"notes-{n}.txt", "text/plain", b"groceries", when)
    url = f"{google.drive_base_url}/files"

    q = f"fullText contains 'plan' and mimeType = '{GOOGLE_DOC}' and trashed = false"
    default = (await http.get(url, params={"q": q}, headers=drive)).json()
    assert default["kind"] == "drive#fileList"
    assert default["incompleteSearch"] is False
    assert default["files"] == [
        {"kind": "drive#file", "id": plan, "name": "Project plan", "mimeType": GOOGLE_DOC}
    ]

    fields = "nextPageToken,files(id,name,mimeType,modifiedTime,size,webViewLink)"
    named = (
        await http.get(url, params={"q": "name contains 'plan'", "fields": fields}, headers=drive)
    ).json()
    assert sorted(f["name"] for f in named["files"]) == ["Old plan", "Project plan", "planning.pdf"]
    pdf = next(f for f in named["files"] if f["name"] == "planning.pdf")
    assert pdf["size"] == "9"
    assert pdf["modifiedTime"] == "2026-11-01T12:00:00.000Z"
    assert pdf["webViewLink"].startswith("https://drive.google.com/file/d/")
    assert "size" not in next(f for f in named["files"] if f["name"] == "Project plan")

    names: list[str] = []
    params = {"q": "trashed = false", "pageSize": "2", "fields": fields}
    while True:
        page = (await http.get(url, params=params, headers=drive)).json()
        names += [f["name"] for f in page["files"]]
        if "nextPageToken" not in page:
            break
        params["pageToken"] = page["nextPageToken"]
    assert len(names) == 5
    assert "Old plan" not in names

    no_token_asked = (
        await http.get(url, params={"pageSize": "1", "fields": "files(id)"}, headers=drive)
    ).json()
    assert set(no_token_asked) == {"files"}  # Drive answers only the fields asked for
    bad = await http.get(url, params={"q": "starred = true"}, headers=drive)
    assert_google_error(bad, 400, "invalid", "INVALID_ARGUMENT")


async def test_drive_download_export_and_their_refusals(
    google: GoogleEmulator, http: httpx.AsyncClient, drive: dict[str, str]
) -> None:
    doc = google.add_file(ADA, "Plan", GOOGLE_DOC, "Größe matters".encode())
    pdf = google.add_file(ADA, "scan.pdf", "application/pdf", b"%PDF-1.7 bytes")
    url = f"{google.drive_base_url}/files"

    media = await http.get(f"{url}/{pdf}", params={"alt": "media"}, headers=drive)
    assert (media.status_code, media.content, media.headers["content-type"]) == (
        200,
        b"%PDF-1.7 bytes",
        "application/pdf",
    )
    part = await http.get(f"{url}/{pdf}", params={"alt": "media"}, headers={**drive, "Range": "bytes=0-3"})
    assert (part.status_code, part.content) == (206, b"%PDF")
    meta = (await http.get(f"{url}/{doc}", params={"fields": "id,name,webViewLink"}, headers=drive)).json()
    assert meta == {
        "id": doc,
        "name": "Plan",
        "webViewLink": f"https://docs.google.com/document/d/{doc}/edit?usp=drivesdk",
    }

    not_binary = await http.get(f"{url}/{doc}", params={"alt": "media"}, headers=drive)
    assert_google_error(not_binary, 403, "fileNotDownloadable", "PERMISSION_DENIED")
    exported = await http.get(f"{url}/{doc}/export", params={"mimeType": "text/plain"}, headers=drive)
    assert exported.status_code == 200
    assert exported.text == "Größe matters"
    assert exported.headers["content-type"].startswith("text/plain")
    not_docs = await http.get(f"{url}/{pdf}/export", params={"mimeType": "text/plain"}, headers=drive)
    assert_google_error(not_docs, 403, "fileNotExportable", "PERMISSION_DENIED")
    google.export_limit_bytes = 4
    too_big = await http.get(f"{url}/{doc}/export", params={"mimeType": "text/plain"}, headers=drive)
    assert_google_error(too_big, 403, "exportSizeLimitExceeded", "PERMISSION_DENIED")
    missing = await http.get(f"{url}/nope", headers=drive)
    assert_google_error(missing, 404, "notFound", "NOT_FOUND")


# --- Health ---------------------------------------------------------------------------------------------


async def test_health_points_filter_newest_first_and_page(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    token = bearer(await google_token(http, google, [STEPS]))
    for hour in range(5):
        start = datetime(2026, 11, 1, 8 + hour, tzinfo=BERLIN)
        google.add_steps(ADA, start, start + timedelta(minutes=30), 100 * (hour + 1))
    google.add_steps(
        ADA, datetime(2026, 11, 2, 8, tzinfo=BERLIN), datetime(2026, 11, 2, 9, tzinfo=BERLIN), 999
    )
    url = f"{google.health_base_url}/users/me/dataTypes/steps/dataPoints"
    flt = (
        'steps.interval.start_time >= "2026-11-01T00:00:00Z" AND '
        'steps.interval.start_time < "2026-11-02T00:00:00Z"'
    )

    counts: list[str] = []
    params = {"filter": flt, "pageSize": "2"}
    while True:
        page = await http.get(url, params=params, headers=token)
        assert page.status_code == 200, page.text
        counts += [p["steps"]["count"] for p in page.json()["dataPoints"]]
        if "nextPageToken" not in page.json():
            break
        params["pageToken"] = page.json()["nextPageToken"]
    assert counts == ["500", "400", "300", "200", "100"]  # int64 as strings, newest first

    [point] = (
        await http.get(
            url, params={"filter": 'steps.interval.civil_start_time >= "2026-11-02"'}, headers=token
        )
    ).json()["dataPoints"]
    interval = point["steps"]["interval"]
    assert interval["startTime"] == "2026-11-02T07:00:00Z"
    assert interval["startUtcOffset"] == "3600s"
    assert interval["civilStartTime"] == {"date": {"year": 2026, "month": 11, "day": 2}, "time": {"hours": 8}}
    assert point["name"].startswith("users/")
    assert "/dataTypes/steps/dataPoints/" in point["name"]

    bad = await http.get(url, params={"filter": 'weight.sample_time.physical_time >= "x"'}, headers=token)
    assert bad.status_code == 400
    assert bad.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_health_daily_rollups_and_their_limits(google: GoogleEmulator, http: httpx.AsyncClient) -> None:
    heart = "https://www.googleapis.com/auth/googlehealth.health_metrics_and_measurements.readonly"
    token = bearer(await google_token(http, google, [STEPS, heart]))
    for day, count in [(1, 1000), (1, 500), (2, 2000)]:
        start = datetime(2026, 11, day, 23, 30, tzinfo=BERLIN)  # civil day `day`, UTC day `day` too
        google.add_steps(ADA, start, start + timedelta(minutes=20), count)
    for bpm in (60, 70, 80):
        google.add_heart_rate(ADA, datetime(2026, 11, 1, 6, bpm % 60, tzinfo=BERLIN), bpm)
    base = f"{google.health_base_url}/users/me/dataTypes"

    def span(first: int, last: int) -> dict[str, Any]:
        return {
            "start": {"date": {"year": 2026, "month": 11, "day": first}},
            "end": {"date": {"year": 2026, "month": 11, "day": last}},
        }

    steps = await http.post(
        f"{base}/steps/dataPoints:dailyRollUp", json={"range": span(1, 4), "windowSizeDays": 1}, headers=token
    )
    assert steps.status_code == 200, steps.text
    rollups = steps.json()["rollupDataPoints"]
    assert [(r["civilStartTime"]["date"]["day"], r["steps"]["countSum"]) for r in rollups] == [
        (1, "1500"),
        (2, "2000"),
    ]
    assert rollups[0]["civilEndTime"] == {"date": {"year": 2026, "month": 11, "day": 2}}

    hr = (
        await http.post(
            f"{base}/heart-rate/dataPoints:dailyRollUp", json={"range": span(1, 2)}, headers=token
        )
    ).json()["rollupDataPoints"]
    assert hr[0]["heartRate"] == {
        "beatsPerMinuteAvg": 70.0,
        "beatsPerMinuteMin": 60.0,
        "beatsPerMinuteMax": 80.0,
    }
    too_long = await http.post(
        f"{base}/heart-rate/dataPoints:dailyRollUp",
        json={
            "range": {
                "start": {"date": {"year": 2026, "month": 10, "day": 1}},
                "end": {"date": {"year": 2026, "month": 11, "day": 1}},
            }
        },
        headers=token,
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["status"] == "INVALID_ARGUMENT"
    hourly = (
        await http.post(
            f"{base}/steps/dataPoints:rollUp",
            json={
                "range": {"startTime": "2026-11-01T22:00:00Z", "endTime": "2026-11-02T00:00:00Z"},
                "windowSize": "3600s",
            },
            headers=token,
        )
    ).json()["rollupDataPoints"]
    assert hourly == [
        {
            "startTime": "2026-11-01T22:00:00Z",
            "endTime": "2026-11-01T23:00:00Z",
            "steps": {"countSum": "1500"},
        }
    ]


async def test_health_scope_errors_have_the_aip_shape(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    token = bearer(await google_token(http, google, [STEPS]))
    google.add_sleep(ADA, datetime(2026, 11, 1, 23, tzinfo=BERLIN), datetime(2026, 11, 2, 7, tzinfo=BERLIN))
    sleep = await http.get(f"{google.health_base_url}/users/me/dataTypes/sleep/dataPoints", headers=token)
    assert sleep.status_code == 403
    error = sleep.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert "errors" not in error
    identity = await http.get(f"{google.health_base_url}/users/me/identity", headers=token)
    assert identity.status_code == 200
    assert set(identity.json()) >= {"healthUserId", "legacyUserId"}
    google.expire_access_tokens()
    expired = await http.get(f"{google.health_base_url}/users/me/dataTypes/steps/dataPoints", headers=token)
    assert expired.status_code == 401
    assert expired.json()["error"]["status"] == "UNAUTHENTICATED"


async def test_health_filters_take_only_the_fields_and_comparisons_of_the_record_type(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    sleep_scope = "https://www.googleapis.com/auth/googlehealth.sleep.readonly"
    token = bearer(await google_token(http, google, [STEPS, sleep_scope]))
    google.add_sleep(
        ADA, datetime(2026, 11, 1, 23, tzinfo=BERLIN), datetime(2026, 11, 2, 0, 30, tzinfo=BERLIN)
    )
    google.add_sleep(ADA, datetime(2026, 11, 2, 23, tzinfo=BERLIN), datetime(2026, 11, 3, 7, tzinfo=BERLIN))
    google.add_exercise(
        ADA, datetime(2026, 11, 2, 0, 30, tzinfo=BERLIN), datetime(2026, 11, 2, 1, tzinfo=BERLIN), "RUNNING"
    )
    base = f"{google.health_base_url}/users/me/dataTypes"

    async def listed(data_type: str, flt: str) -> httpx.Response:
        return await http.get(f"{base}/{data_type}/dataPoints", params={"filter": flt}, headers=token)

    # sleep by its civil end: the night ending at 00:30 on the 2nd in Berlin (23:30 UTC on the 1st)
    civil = await listed(
        "sleep",
        'sleep.interval.civil_end_time >= "2026-11-02" AND sleep.interval.civil_end_time < "2026-11-03"',
    )
    assert civil.status_code == 200, civil.text
    assert [p["sleep"]["interval"]["endTime"] for p in civil.json()["dataPoints"]] == ["2026-11-01T23:30:00Z"]
    physical = await listed("sleep", 'sleep.interval.end_time >= "2026-11-02T00:00:00Z"')
    assert [p["sleep"]["interval"]["endTime"] for p in physical.json()["dataPoints"]] == [
        "2026-11-03T06:00:00Z"
    ]
    exercise = await listed("exercise", 'exercise.interval.civil_start_time >= "2026-11-02"')
    assert len(exercise.json()["dataPoints"]) == 1

    for data_type, flt in [
        ("sleep", 'sleep.interval.start_time >= "2026-11-02T00:00:00Z"'),  # not a sleep filter field
        ("exercise", 'exercise.interval.start_time >= "2026-11-02T00:00:00Z"'),  # exercise: civil start only
        ("sleep", 'sleep.interval.end_time > "2026-11-02T00:00:00Z"'),  # only >= and <
        ("sleep", 'sleep.interval.end_time <= "2026-11-02T00:00:00Z"'),
        ("sleep", 'sleep.interval.civil_end_time = "2026-11-02"'),
        ("steps", 'steps.interval.end_time < "2026-11-02T00:00:00Z"'),
    ]:
        refused = await listed(data_type, flt)
        assert refused.status_code == 400, flt
        error = refused.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert error["details"] == [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_DATA_POINT_FILTER",
                "domain": "health.googleapis.com",
            }
        ]


async def test_health_daily_resting_heart_rate_is_a_daily_type_of_health_metrics(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    metrics = "https://www.googleapis.com/auth/googlehealth.health_metrics_and_measurements.readonly"
    for day, bpm in [(31, 60), (1, 58), (2, 61)]:
        google.add_resting_heart_rate(ADA, datetime(2026, 10 if day == 31 else 11, day).date(), bpm)
    url = f"{google.health_base_url}/users/me/dataTypes/daily-resting-heart-rate/dataPoints"
    flt = 'daily_resting_heart_rate.date >= "2026-11-01" AND daily_resting_heart_rate.date < "2026-11-03"'

    activity_only = bearer(await google_token(http, google, [STEPS]))
    denied = await http.get(url, params={"filter": flt}, headers=activity_only)
    assert denied.status_code == 403
    heart = await http.post(
        f"{google.health_base_url}/users/me/dataTypes/heart-rate/dataPoints:dailyRollUp",
        json={
            "range": {
                "start": {"date": {"year": 2026, "month": 11, "day": 1}},
                "end": {"date": {"year": 2026, "month": 11, "day": 2}},
            }
        },
        headers=activity_only,
    )
    assert heart.status_code == 403  # heart rate is a health metric, not activity

    token = bearer(await google_token(http, google, [metrics]))
    listed = await http.get(url, params={"filter": flt}, headers=token)
    assert listed.status_code == 200, listed.text
    points = listed.json()["dataPoints"]
    assert [p["dailyRestingHeartRate"] for p in points] == [  # newest first, int64 as a string
        {"date": {"year": 2026, "month": 11, "day": 2}, "beatsPerMinute": "61"},
        {"date": {"year": 2026, "month": 11, "day": 1}, "beatsPerMinute": "58"},
    ]
    assert "/dataTypes/daily-resting-heart-rate/dataPoints/" in points[0]["name"]


async def test_health_daily_rollup_spans_at_most_14_days_of_heart_rate_and_90_of_steps(
    google: GoogleEmulator, http: httpx.AsyncClient
) -> None:
    metrics = "https://www.googleapis.com/auth/googlehealth.health_metrics_and_measurements.readonly"
    token = bearer(await google_token(http, google, [STEPS, metrics]))
    base = f"{google.health_base_url}/users/me/dataTypes"

    def days(n: int) -> dict[str, Any]:
        first = datetime(2026, 9, 1)
        last = first + timedelta(days=n)
        return {
            "range": {
                "start": {"date": {"year": first.year, "month": first.month, "day": first.day}},
                "end": {"date": {"year": last.year, "month": last.month, "day": last.day}},
            }
        }

    for data_type, allowed in [("heart-rate", 14), ("steps", 90)]:
        url = f"{base}/{data_type}/dataPoints:dailyRollUp"
        assert (await http.post(url, json=days(allowed), headers=token)).status_code == 200
        over = await http.post(url, json=days(allowed + 1), headers=token)
        assert over.status_code == 400
        assert over.json()["error"]["status"] == "INVALID_ARGUMENT"


# --- Microsoft identity platform ------------------------------------------------------------------------


async def ms_authorize(
    http: httpx.AsyncClient, microsoft: MicrosoftEmulator, scopes: list[str], **extra: str
) -> tuple[dict[str, str], str]:
    verifier = secrets.token_urlsafe(48)
    params = {
        "client_id": "m-client",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "response_mode": "query",
        "scope": " ".join(scopes),
        "state": "st-2",
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    return redirect_params(await http.get(microsoft.authorize_url("common"), params=params)), verifier


async def ms_token(http: httpx.AsyncClient, microsoft: MicrosoftEmulator, **form: str) -> httpx.Response:
    return await http.post(
        microsoft.token_url("common"), data={"client_id": "m-client", "client_secret": "m-secret", **form}
    )


async def ms_login(
    http: httpx.AsyncClient, microsoft: MicrosoftEmulator, scopes: list[str]
) -> dict[str, Any]:
    params, verifier = await ms_authorize(http, microsoft, scopes)
    answer = await ms_token(
        http,
        microsoft,
        grant_type="authorization_code",
        code=params["code"],
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def assert_aad_error(response: httpx.Response, status: int, error: str, code: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", body["timestamp"])
    assert body["trace_id"]
    assert body["correlation_id"]


async def test_microsoft_code_flow_offline_access_and_rotating_refresh(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    params, verifier = await ms_authorize(http, microsoft, ["openid", "offline_access", "Calendars.Read"])
    assert set(params) == {"code", "state"}
    assert params["state"] == "st-2"
    tokens = (
        await ms_token(
            http,
            microsoft,
            grant_type="authorization_code",
            code=params["code"],
            redirect_uri=REDIRECT,
            code_verifier=verifier,
        )
    ).json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3599
    assert "offline_access" not in tokens["scope"].split()
    assert f"{GRAPH}Calendars.Read" in tokens["scope"].split()

    first = await ms_token(
        http,
        microsoft,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        scope=f"{GRAPH}Calendars.Read",
    )
    assert first.status_code == 200
    assert first.json()["refresh_token"] != tokens["refresh_token"]
    old_still_good = await ms_token(
        http, microsoft, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert old_still_good.status_code == 200

    without = await ms_login(http, microsoft, ["Calendars.Read"])
    assert "refresh_token" not in without
    more = await ms_token(
        http, microsoft, grant_type="refresh_token", refresh_token=tokens["refresh_token"], scope="Mail.Read"
    )
    assert_aad_error(more, 400, "invalid_grant", 65001)


async def test_microsoft_token_errors_are_aadsts_bodies(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    params, verifier = await ms_authorize(http, microsoft, ["Calendars.Read"])
    wrong = await ms_token(
        http,
        microsoft,
        grant_type="authorization_code",
        code=params["code"],
        redirect_uri=REDIRECT,
        code_verifier="y" * 43,
    )
    assert_aad_error(wrong, 400, "invalid_grant", 501481)
    replay = await ms_token(
        http,
        microsoft,
        grant_type="authorization_code",
        code=params["code"],
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assert_aad_error(replay, 400, "invalid_grant", 54005)

    params, verifier = await ms_authorize(http, microsoft, ["Calendars.Read"])
    bad_secret = await http.post(
        microsoft.token_url(),
        data={
            "client_id": "m-client",
            "client_secret": "nope",
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )
    assert_aad_error(bad_secret, 401, "invalid_client", 7000215)

    microsoft.refuse_next_consent()
    refused, _ = await ms_authorize(http, microsoft, ["Calendars.Read"])
    assert refused["error"] == "access_denied"
    assert refused["error_subcode"] == "cancel"
    assert refused["error_description"].startswith("AADSTS65004")

    no_revocation = await http.post(
        f"{microsoft.login_base_url}/common/oauth2/v2.0/revoke", data={"token": "x"}
    )
    assert no_revocation.status_code == 404


async def test_microsoft_revoked_grant_and_expired_tokens(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    tokens = await ms_login(http, microsoft, ["offline_access", "Calendars.Read"])
    url = f"{microsoft.graph_base_url}/me/calendarView"
    window = {"startDateTime": "2026-11-02T00:00:00Z", "endDateTime": "2026-11-03T00:00:00Z"}
    assert (await http.get(url, params=window, headers=bearer(tokens))).status_code == 200

    microsoft.expire_access_tokens()
    expired = await http.get(url, params=window, headers={**bearer(tokens), "client-request-id": "abc"})
    assert expired.status_code == 401
    error = expired.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert error["innerError"]["client-request-id"] == "abc"

    fresh = await ms_token(http, microsoft, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert (await http.get(url, params=window, headers=bearer(fresh.json()))).status_code == 200
    microsoft.revoke_grant(ADA)
    assert (await http.get(url, params=window, headers=bearer(fresh.json()))).status_code == 401
    dead = await ms_token(http, microsoft, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert_aad_error(dead, 400, "invalid_grant", 50173)


# --- Graph ----------------------------------------------------------------------------------------------


async def test_calendar_view_pages_by_next_link_in_the_preferred_zone(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    for n in range(5):
        microsoft.add_event(
            ADA,
            {
                "subject": f"Meeting {n}",
                "start": {"dateTime": f"2026-11-02T{9 + n:02d}:00:00", "timeZone": "UTC"},
                "end": {"dateTime": f"2026-11-02T{9 + n:02d}:30:00", "timeZone": "UTC"},
            },
        )
    microsoft.add_event(
        ADA,
        {
            "subject": "Holiday",
            "isAllDay": True,
            "showAs": "free",
            "start": {"dateTime": "2026-11-03T00:00:00", "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": "2026-11-04T00:00:00", "timeZone": "W. Europe Standard Time"},
        },
    )
    prefer = {"Prefer": 'outlook.timezone="Pacific Standard Time"'}
    url: str | None = f"{microsoft.graph_base_url}/me/calendarView"
    params: dict[str, str] | None = {
        "startDateTime": "2026-11-02T00:00:00Z",
        "endDateTime": "2026-11-05T00:00:00Z",
        "$top": "2",
    }
    events: list[dict[str, Any]] = []
    while url is not None:
        page = await http.get(url, params=params, headers={**auth, **prefer})
        assert page.status_code == 200, page.text
        assert page.headers["preference-applied"] == 'outlook.timezone="Pacific Standard Time"'
        body = page.json()
        assert len(body["value"]) <= 2
        events += body["value"]
        url, params = body.get("@odata.nextLink"), None
        if url is not None:
            assert "$skiptoken=" in url
    assert [e["subject"] for e in events] == [f"Meeting {n}" for n in range(5)] + ["Holiday"]
    assert events[0]["start"] == {
        "dateTime": "2026-11-02T01:00:00.0000000",
        "timeZone": "Pacific Standard Time",
    }
    assert events[0]["originalStartTimeZone"] == "UTC"
    assert events[0]["webLink"].startswith("https://outlook.office365.com/owa/?itemid=")
    # An all-day event stays midnight to midnight of its dates whatever zone is preferred, under the
    # preferred zone's name; the zone it was made in is `originalStartTimeZone` (microsoft-graph-docs#1802).
    holiday = events[-1]
    assert holiday["isAllDay"] is True
    assert (holiday["start"], holiday["end"]) == (
        {"dateTime": "2026-11-03T00:00:00.0000000", "timeZone": "Pacific Standard Time"},
        {"dateTime": "2026-11-04T00:00:00.0000000", "timeZone": "Pacific Standard Time"},
    )
    assert holiday["originalStartTimeZone"] == "W. Europe Standard Time"

    default = (
        await http.get(
            f"{microsoft.graph_base_url}/me/calendarView",
            headers=auth,
            params={"startDateTime": "2026-11-02T00:00:00Z", "endDateTime": "2026-11-05T00:00:00Z"},
        )
    ).json()
    assert len(default["value"]) == 6
    assert default["value"][0]["start"]["timeZone"] == "UTC"
    missing = await http.get(f"{microsoft.graph_base_url}/me/calendarView", headers=auth)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "ErrorInvalidParameter"


async def test_get_schedule_answers_items_and_availability_view(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Calendars.ReadBasic"]))
    microsoft.add_event(
        ADA,
        {
            "subject": "Busy",
            "showAs": "busy",
            "start": {"dateTime": "2026-11-02T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-02T10:00:00", "timeZone": "UTC"},
        },
    )
    microsoft.add_event(
        ADA,
        {
            "subject": "Maybe",
            "showAs": "tentative",
            "start": {"dateTime": "2026-11-02T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-02T10:30:00", "timeZone": "UTC"},
        },
    )
    answer = await http.post(
        f"{microsoft.graph_base_url}/me/calendar/getSchedule",
        json={
            "schedules": [ADA, "ghost@example.com"],
            "startTime": {"dateTime": "2026-11-02T08:00:00", "timeZone": "UTC"},
            "endTime": {"dateTime": "2026-11-02T12:00:00", "timeZone": "UTC"},
            "availabilityViewInterval": 60,
        },
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    ada, ghost = answer.json()["value"]
    assert ada["scheduleId"] == ADA
    assert ada["availabilityView"] == "0210"
    assert [(i["status"], i["start"]["dateTime"]) for i in ada["scheduleItems"]] == [
        ("busy", "2026-11-02T09:00:00.0000000"),
        ("tentative", "2026-11-02T10:00:00.0000000"),
    ]
    assert ada["scheduleItems"][0]["end"] == {"dateTime": "2026-11-02T10:00:00.0000000", "timeZone": "UTC"}
    assert ghost["error"] is not None
    assert ghost["scheduleItems"] == []


async def test_drive_search_pages_and_content_redirects_to_a_pre_authenticated_url(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Files.Read"]))
    ids = [
        microsoft.add_file(ADA, f"Budget {n}.txt", "text/plain", f"budget line {n}".encode())
        for n in range(3)
    ]
    microsoft.add_file(ADA, "holiday.jpg", "image/jpeg", b"\xff\xd8")

    url: str | None = f"{microsoft.graph_base_url}/me/drive/root/search(q='budget')"
    params: dict[str, str] | None = {"$top": "2"}
    found: list[dict[str, Any]] = []
    while url is not None:
        page = (await http.get(url, params=params, headers=auth)).json()
        found += page["value"]
        url, params = page.get("@odata.nextLink"), None
    assert [f["id"] for f in found] == ids
    assert found[0]["file"] == {"mimeType": "text/plain"}
    assert found[0]["size"] == 13
    quoted = (
        await http.get(f"{microsoft.graph_base_url}/me/drive/root/search(q='Budget 1')", headers=auth)
    ).json()
    assert [f["name"] for f in quoted["value"]] == ["Budget 1.txt"]

    item = (await http.get(f"{microsoft.graph_base_url}/me/drive/items/{ids[0]}", headers=auth)).json()
    assert item["name"] == "Budget 0.txt"
    assert "@microsoft.graph.downloadUrl" in item
    content = await http.get(f"{microsoft.graph_base_url}/me/drive/items/{ids[0]}/content", headers=auth)
    assert content.status_code == 302
    location = content.headers["location"]
    downloaded = await http.get(location)  # no Authorization: the URL is pre-authenticated
    assert (downloaded.status_code, downloaded.content) == (200, b"budget line 0")
    ranged = await http.get(location, headers={"Range": "bytes=7-"})
    assert (ranged.status_code, ranged.content) == (206, b"line 0")
    missing = await http.get(f"{microsoft.graph_base_url}/me/drive/items/nope", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "itemNotFound"


async def test_graph_throttling_and_missing_permission(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Files.Read"]))
    url = f"{microsoft.graph_base_url}/me/calendarView"
    window = {"startDateTime": "2026-11-02T00:00:00Z", "endDateTime": "2026-11-03T00:00:00Z"}
    denied = await http.get(url, params=window, headers=auth)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "ErrorAccessDenied"

    microsoft.rate_limit_next(1, retry_after_seconds=3)
    search = f"{microsoft.graph_base_url}/me/drive/root/search(q='x')"
    limited = await http.get(search, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["code"] == "TooManyRequests"
    assert (await http.get(search, headers=auth)).status_code == 200


# --- push: Graph subscriptions and Google channels ----------------------------------------------------------


class Receiver:
    """A notification endpoint on loopback: what it was sent, and how it answers validation requests
    (`echo`: the decoded token as text/plain; "wrong": another text; "json": the token as JSON; "slow": after
    `delay` seconds)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], str, bytes]] = []
        self.mode = "echo"
        self.delay = 0.0
        self.server: TestServer | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.path, dict(request.headers), request.query_string, body))
        token = request.query.get("validationToken")
        if token is None:
            return web.Response(status=202)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "wrong":
            return web.Response(text="not the token", content_type="text/plain")
        if self.mode == "json":
            return web.json_response({"token": token})
        return web.Response(text=token, content_type="text/plain")

    def posted(self, path: str) -> list[tuple[dict[str, str], str, bytes]]:
        return [(headers, query, body) for p, headers, query, body in self.received if p == path]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", found.handle)
    found.server = TestServer(app, host="127.0.0.1")
    await found.server.start_server()
    try:
        yield found
    finally:
        await found.server.close()


def graph_expiry(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def subscription_body(receiver: Receiver, resource: str, change_type: str, minutes: float) -> dict[str, Any]:
    return {
        "changeType": change_type,
        "notificationUrl": receiver.url("/webhooks/graph"),
        "lifecycleNotificationUrl": receiver.url("/webhooks/graph/lifecycle"),
        "resource": resource,
        "expirationDateTime": graph_expiry(minutes),
        "clientState": "s3cret-state",
    }


async def test_graph_subscription_validates_both_urls_then_notifies(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    url = f"{microsoft.graph_base_url}/subscriptions"
    created = await http.post(
        url, json=subscription_body(receiver, "me/events", "created,updated,deleted", 10_000), headers=auth
    )
    assert created.status_code == 201, created.text
    subscription = created.json()
    assert subscription["resource"] == "me/events"
    assert subscription["changeType"] == "created,updated,deleted"
    assert subscription["clientState"] == "s3cret-state"
    assert subscription["expirationDateTime"].endswith("Z")
    validations = [
        q for _, q, _ in receiver.posted("/webhooks/graph") + receiver.posted("/webhooks/graph/lifecycle")
    ]
    assert len(validations) == 2  # both URLs, each with its own opaque token, URL-encoded
    tokens = [parse_qs(q)["validationToken"][0] for q in validations]
    assert all(t.startswith("Validation: ") for t in tokens)  # decoded: it travels URL-encoded
    assert tokens[0] != tokens[1]
    headers, _, _ = receiver.posted("/webhooks/graph")[0]
    assert headers["Content-Type"].startswith("text/plain")

    statuses = await microsoft.notify(ADA, "me/events", "updated", "AAMkAGevent1")
    assert statuses == [202]
    _, query, body = receiver.posted("/webhooks/graph")[-1]
    assert query == ""
    item = json.loads(body)["value"][0]
    assert item["subscriptionId"] == subscription["id"]
    assert item["clientState"] == "s3cret-state"
    assert item["changeType"] == "updated"
    assert item["tenantId"] == microsoft.tenant_id
    assert item["resource"] == f"Users/{microsoft.user_id(ADA)}/Events/AAMkAGevent1"
    assert item["resourceData"]["id"] == "AAMkAGevent1"
    assert item["resourceData"]["@odata.type"] == "#Microsoft.Graph.Event"
    assert item["subscriptionExpirationDateTime"] == subscription["expirationDateTime"]
    assert await microsoft.notify(ADA, "me/events", "updated", "x") == [202]
    assert await microsoft.notify("someone@else.com", "me/events", "updated", "x") == []


async def test_graph_subscription_refused_without_a_proper_echo(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    url = f"{microsoft.graph_base_url}/subscriptions"
    body = subscription_body(receiver, "me/events", "created", 60)
    for mode in ("wrong", "json"):
        receiver.mode = mode
        refused = await http.post(url, json=body, headers=auth)
        assert refused.status_code == 400, mode
        assert refused.json()["error"]["code"] == "InvalidRequest"
        assert "validation" in refused.json()["error"]["message"]
    receiver.mode, receiver.delay = "slow", 1.0
    microsoft.validation_timeout = 0.2  # Graph's 10 s, shortened
    slow = await http.post(url, json=body, headers=auth)
    assert slow.status_code == 400
    assert slow.json()["error"]["message"] == "Subscription validation request timed out."
    unreachable = {**body, "notificationUrl": "http://127.0.0.1:1/webhooks/graph"}
    assert (await http.post(url, json=unreachable, headers=auth)).status_code == 400
    not_https = {**body, "notificationUrl": "http://hooks.example.com/graph"}
    assert (await http.post(url, json=not_https, headers=auth)).status_code == 400
    assert microsoft.live_subscriptions() == []


async def test_graph_subscription_lifetimes_and_permissions(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    url = f"{microsoft.graph_base_url}/subscriptions"
    calendar = bearer(await ms_login(http, microsoft, ["Calendars.Read", "Files.Read"]))
    too_long = await http.post(
        url, json=subscription_body(receiver, "me/events", "created", 10_080 + 5), headers=calendar
    )
    assert too_long.status_code == 400
    assert "10080 minutes" in too_long.json()["error"]["message"]
    past = await http.post(
        url, json=subscription_body(receiver, "me/events", "created", -5), headers=calendar
    )
    assert past.status_code == 400
    drive = subscription_body(receiver, "me/drive/root", "updated", 42_000)
    assert (await http.post(url, json=drive, headers=calendar)).status_code == 403  # Files.Read is not enough

    writer = bearer(await ms_login(http, microsoft, ["Files.ReadWrite"]))
    created = await http.post(url, json=drive, headers=writer)
    assert created.status_code == 201, created.text
    wrong_change = subscription_body(receiver, "me/drive/root", "created", 60)
    assert (await http.post(url, json=wrong_change, headers=writer)).status_code == 400
    over = subscription_body(receiver, "me/drive/root", "updated", 42_300 + 5)
    assert (await http.post(url, json=over, headers=writer)).status_code == 400
    unknown = subscription_body(receiver, "me/contacts/folders", "updated", 60)
    assert (await http.post(url, json=unknown, headers=writer)).status_code == 400

    assert await microsoft.notify(ADA, "me/drive/root", "updated", "ignored") == [202]
    item = json.loads(receiver.posted("/webhooks/graph")[-1][2])["value"][0]
    assert item["resource"] == "me/drive/root"
    assert "resourceData" not in item


async def test_graph_subscription_renew_reauthorize_delete_and_expiry(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    clock = FakeClock(datetime.now(UTC))
    microsoft.clock = clock.time
    auth = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    url = f"{microsoft.graph_base_url}/subscriptions"
    created = (
        await http.post(url, json=subscription_body(receiver, "/me/events", "created", 60), headers=auth)
    ).json()
    one = f"{url}/{created['id']}"
    renewed = await http.patch(one, json={"expirationDateTime": graph_expiry(5000)}, headers=auth)
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["expirationDateTime"] != created["expirationDateTime"]
    too_far = await http.patch(one, json={"expirationDateTime": graph_expiry(20_000)}, headers=auth)
    assert too_far.status_code == 400
    assert (await http.post(f"{one}/reauthorize", headers=auth)).status_code == 204

    other = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    microsoft.sign_in("bob@contoso.com")
    bob = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    assert (await http.delete(one, headers=bob)).status_code == 404  # someone else's
    assert (await http.delete(one, headers=other)).status_code == 204
    assert (await http.delete(one, headers=auth)).status_code == 404
    assert (
        await http.patch(one, json={"expirationDateTime": graph_expiry(60)}, headers=auth)
    ).status_code == 404

    short = (
        await http.post(url, json=subscription_body(receiver, "me/events", "created", 30), headers=auth)
    ).json()
    clock.advance(30 * 60 + 1)
    gone = await http.patch(
        f"{url}/{short['id']}", json={"expirationDateTime": graph_expiry(60)}, headers=auth
    )
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "ResourceNotFound"
    assert await microsoft.notify(ADA, "me/events", "created", "x") == []


async def test_graph_lifecycle_notifications(
    microsoft: MicrosoftEmulator, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    auth = bearer(await ms_login(http, microsoft, ["Calendars.Read"]))
    url = f"{microsoft.graph_base_url}/subscriptions"
    created = (
        await http.post(url, json=subscription_body(receiver, "me/events", "created", 600), headers=auth)
    ).json()
    for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
        assert await microsoft.notify_lifecycle(created["id"], event) == 202
        item = json.loads(receiver.posted("/webhooks/graph/lifecycle")[-1][2])["value"][0]
        assert item == {
            "subscriptionId": created["id"],
            "subscriptionExpirationDateTime": created["expirationDateTime"],
            "tenantId": microsoft.tenant_id,
            "clientState": "s3cret-state",
            "lifecycleEvent": event,
        }
    assert microsoft.live_subscriptions() == []  # subscriptionRemoved removed it
    assert (await http.delete(f"{url}/{created['id']}", headers=auth)).status_code == 404


def channel_body(receiver: Receiver, channel_id: str, ttl: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": channel_id,
        "type": "web_hook",
        "address": receiver.url("/webhooks/google"),
        "token": "channel-token",
    }
    if ttl is not None:
        body["params"] = {"ttl": str(ttl)}
    return body


async def test_google_events_watch_sends_sync_then_exists_and_stops(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str], receiver: Receiver
) -> None:
    watch = f"{google.calendar_base_url}/calendars/primary/events/watch"
    before = datetime.now(UTC)
    answer = await http.post(watch, json=channel_body(receiver, "chan-1", ttl=3600), headers=calendar)
    assert answer.status_code == 200, answer.text
    channel = answer.json()
    assert channel["kind"] == "api#channel"
    assert channel["id"] == "chan-1"
    assert channel["token"] == "channel-token"
    assert channel["resourceUri"].endswith("/calendar/v3/calendars/primary/events?alt=json")
    assert isinstance(channel["expiration"], str)
    expires = int(channel["expiration"]) / 1000
    assert abs(expires - (before.timestamp() + 3600)) < 5
    await google.deliveries()
    ((headers, _, body),) = receiver.posted("/webhooks/google")
    assert body == b""
    assert headers["X-Goog-Channel-ID"] == "chan-1"
    assert headers["X-Goog-Channel-Token"] == "channel-token"
    assert headers["X-Goog-Resource-ID"] == channel["resourceId"]
    assert headers["X-Goog-Resource-URI"] == channel["resourceUri"]
    assert headers["X-Goog-Resource-State"] == "sync"
    assert headers["X-Goog-Message-Number"] == "1"
    assert headers["X-Goog-Channel-Expiration"].endswith(" GMT")

    assert await google.notify_channel("chan-1") == 202
    assert await google.notify_channel("chan-1") == 202
    states = [
        (h["X-Goog-Resource-State"], h["X-Goog-Message-Number"])
        for h, _, _ in receiver.posted("/webhooks/google")
    ]
    assert states == [("sync", "1"), ("exists", "2"), ("exists", "3")]

    again = await http.post(watch, json=channel_body(receiver, "chan-1"), headers=calendar)
    assert_google_error(again, 400, "channelIdNotUnique", "INVALID_ARGUMENT")
    default = (await http.post(watch, json=channel_body(receiver, "chan-2"), headers=calendar)).json()
    assert (
        abs(int(default["expiration"]) / 1000 - (before.timestamp() + 604800)) < 5
    )  # ttl defaults to a week
    missing = await http.post(
        f"{google.calendar_base_url}/calendars/nope/events/watch",
        json=channel_body(receiver, "c3"),
        headers=calendar,
    )
    assert missing.status_code == 404

    stop = f"{google.calendar_base_url}/channels/stop"
    wrong = await http.post(stop, json={"id": "chan-1", "resourceId": "other"}, headers=calendar)
    assert wrong.status_code == 404
    stopped = await http.post(
        stop, json={"id": "chan-1", "resourceId": channel["resourceId"]}, headers=calendar
    )
    assert (stopped.status_code, stopped.content) == (204, b"")
    assert (
        await http.post(stop, json={"id": "chan-1", "resourceId": channel["resourceId"]}, headers=calendar)
    ).status_code == 404
    assert [c.id for c in google.live_channels(ADA)] == ["chan-2"]


async def test_google_channel_expires_silently(
    google: GoogleEmulator, http: httpx.AsyncClient, calendar: dict[str, str], receiver: Receiver
) -> None:
    clock = FakeClock(datetime.now(UTC))
    google.clock = clock.time
    watch = f"{google.calendar_base_url}/calendars/primary/events/watch"
    assert (
        await http.post(watch, json=channel_body(receiver, "short", ttl=60), headers=calendar)
    ).status_code == 200
    await google.deliveries()
    clock.advance(61)
    assert await google.notify_channel("short") == 0
    assert len(receiver.posted("/webhooks/google")) == 1  # the sync alone
    assert google.live_channels() == []


async def test_drive_changes_watch_needs_a_page_token_and_sends_change(
    google: GoogleEmulator, http: httpx.AsyncClient, drive: dict[str, str], receiver: Receiver
) -> None:
    start = await http.get(f"{google.drive_base_url}/changes/startPageToken", headers=drive)
    assert start.status_code == 200
    token = start.json()
    assert token["kind"] == "drive#startPageToken"
    watch = f"{google.drive_base_url}/changes/watch"
    no_token = await http.post(watch, json=channel_body(receiver, "d-0"), headers=drive)
    assert no_token.status_code == 400
    answer = await http.post(
        watch,
        params={"pageToken": token["startPageToken"]},
        json=channel_body(receiver, "d-1", ttl=30 * 86400),
        headers=drive,
    )
    assert answer.status_code == 200, answer.text
    channel = answer.json()
    assert int(channel["expiration"]) / 1000 <= datetime.now(UTC).timestamp() + 604800 + 5  # a week at most
    await google.deliveries()
    assert await google.notify_channel("d-1") == 202
    states = [h["X-Goog-Resource-State"] for h, _, _ in receiver.posted("/webhooks/google")]
    assert states == ["sync", "change"]
    stopped = await http.post(
        f"{google.drive_base_url}/channels/stop",
        json={"id": "d-1", "resourceId": channel["resourceId"]},
        headers=drive,
    )
    assert stopped.status_code == 204


async def test_drive_changes_list_pages_from_a_token_to_the_next_start_token(
    google: GoogleEmulator, http: httpx.AsyncClient, drive: dict[str, str]
) -> None:
    url = f"{google.drive_base_url}/changes"
    google.add_file(ADA, "Before", "text/plain", b"old")
    google.add_file("bob@example.com", "Bob's", "text/plain", b"not Ada's")
    start = (await http.get(f"{url}/startPageToken", headers=drive)).json()["startPageToken"]
    edited = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    plan = google.add_file(ADA, "Plan", GOOGLE_DOC, b"v1", edited - timedelta(days=1))
    google.update_file(ADA, plan, content=b"v2", modified_time=edited - timedelta(hours=1))
    google.update_file(ADA, plan, name="Plan (final)", modified_time=edited)
    old = google.add_file(ADA, "Old", "text/plain", b"x")
    google.trash_file(ADA, old)
    gone = google.add_file(ADA, "Gone", "text/plain", b"x")
    google.delete_file(ADA, gone)
    google.add_file("bob@example.com", "Bob's too", "text/plain", b"not Ada's")

    pages, params = [], {"pageToken": start, "pageSize": "3"}
    while True:
        page = await http.get(url, params=params, headers=drive)
        assert page.status_code == 200, page.text
        pages.append(page.json())
        if "nextPageToken" not in pages[-1]:
            break
        assert "newStartPageToken" not in pages[-1]
        params["pageToken"] = pages[-1]["nextPageToken"]
    assert [len(p["changes"]) for p in pages] == [3, 3, 1]
    assert all(p["kind"] == "drive#changeList" for p in pages)
    changes = [c for p in pages for c in p["changes"]]
    assert [c["fileId"] for c in changes] == [plan, plan, plan, old, old, gone, gone]  # Bob's are Bob's
    first = changes[2]
    assert first == {  # the file as it is now, with Drive's default fields
        "kind": "drive#change",
        "changeType": "file",
        "time": "2026-11-02T09:30:00.000Z",
        "removed": False,
        "fileId": plan,
        "file": {"kind": "drive#file", "id": plan, "name": "Plan (final)", "mimeType": GOOGLE_DOC},
    }
    assert changes[-1]["removed"] is True
    assert "file" not in changes[-1]
    newest = pages[-1]["newStartPageToken"]
    assert int(newest) > int(start)

    caught_up = (await http.get(url, params={"pageToken": newest}, headers=drive)).json()
    assert (caught_up["changes"], caught_up["newStartPageToken"]) == ([], newest)
    assert (await http.get(f"{url}/startPageToken", headers=drive)).json()["startPageToken"] == newest

    fields = "nextPageToken,newStartPageToken,changes(fileId,removed,time,file(name,modifiedTime,trashed))"
    narrow = await http.get(
        url, params={"pageToken": start, "fields": fields, "includeRemoved": "false"}, headers=drive
    )
    assert narrow.status_code == 200, narrow.text
    listed = narrow.json()
    assert set(listed) == {"newStartPageToken", "changes"}
    assert [c["fileId"] for c in listed["changes"]] == [plan, plan, plan, old, old]  # the deletion left out
    assert listed["changes"][-1] == {
        "fileId": old,
        "removed": False,
        "time": listed["changes"][-1]["time"],
        "file": {
            "name": "Old",
            "modifiedTime": listed["changes"][-1]["file"]["modifiedTime"],
            "trashed": True,
        },
    }
    assert listed["changes"][0]["file"]["modifiedTime"] == "2026-11-02T09:30:00.000Z"

    missing = await http.get(url, headers=drive)
    assert_google_error(missing, 400, "required", "INVALID_ARGUMENT")
    for never_given in ("banana", str(int(newest) + 1)):
        bad = await http.get(url, params={"pageToken": never_given}, headers=drive)
        assert_google_error(bad, 400, "invalid", "INVALID_ARGUMENT")
    assert (
        await http.get(url, params={"pageToken": start, "pageSize": "0"}, headers=drive)
    ).status_code == 400


# --- Web Push (RFC 8030 / 8291 / 8292) ------------------------------------------------------------------

RFC8291_RECEIVER_KEY = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC8291_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC8291_BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6P"
    "Bru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)
"""RFC 8291 Appendix A: the receiver's private key, its auth secret, and the message body it decrypts to
"When I grow up, I want to be a watermelon"."""


@pytest_asyncio.fixture
async def push() -> AsyncIterator[PushEmulator]:
    emulator = PushEmulator()
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def vapid_headers(key: Vapid, endpoint: str, **claims: Any) -> dict[str, str]:
    """`Authorization: vapid t=..., k=...` for `endpoint`, with `claims` over the defaults."""
    parts = urlsplit(endpoint)
    signed = {
        "aud": f"{parts.scheme}://{parts.netloc}",
        "exp": int(time.time()) + 3600,
        "sub": "mailto:ops@example.com",
        **claims,
    }
    # py_vapid refuses to sign a bad `sub` unless told not to be strict (the emulator must see one).
    return dict(Vapid(key.private_key, conf={"no-strict": True}).sign(signed))


async def send_push(subscription: BrowserSubscription, data: str, key: Vapid, **overrides: Any) -> Any:
    """pywebpush's own send (in a thread: it blocks), with the Web Push exception caught and returned."""
    arguments: dict[str, Any] = {
        "subscription_info": subscription.as_json(),
        "data": data,
        "vapid_private_key": key,
        "vapid_claims": {"sub": "mailto:ops@example.com"},
        "ttl": 60,
        "headers": {"Urgency": "high"},
        **overrides,
    }
    try:
        return await asyncio.to_thread(webpush, **arguments)
    except WebPushException as exc:
        return exc.response


async def test_push_decrypts_the_rfc8291_example(push: PushEmulator) -> None:
    """The emulator's decryption is the RFC's: its worked example opens with the example's keys."""
    subscription = push.subscribe()
    subscription.private_key = ec.derive_private_key(
        int.from_bytes(base64.urlsafe_b64decode(RFC8291_RECEIVER_KEY + "=")), ec.SECP256R1()
    )
    subscription.auth_secret = base64.urlsafe_b64decode(RFC8291_AUTH + "==")
    key = Vapid()
    key.generate_keys()
    body = base64.urlsafe_b64decode(RFC8291_BODY + "=" * (-len(RFC8291_BODY) % 4))
    async with httpx.AsyncClient() as client:
        response = await client.post(
            subscription.endpoint,
            content=body,
            headers={
                "TTL": "30",
                "Content-Encoding": "aes128gcm",
                **vapid_headers(key, subscription.endpoint),
            },
        )
    assert response.status_code == 201
    assert response.headers["TTL"] == "30"
    assert response.headers["Location"].startswith(f"{push.base_url}/message/")
    (message,) = push.messages_for(subscription)
    assert message.payload == b"When I grow up, I want to be a watermelon"


async def test_push_accepts_what_pywebpush_sends_and_records_it_decrypted(push: PushEmulator) -> None:
    key = Vapid()
    key.generate_keys()
    application_server_key = (
        base64.urlsafe_b64encode(
            key.public_key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        .decode()
        .rstrip("=")
    )
    phone = push.subscribe(application_server_key)
    laptop = push.subscribe()
    for subscription, text in ((phone, "to the phone"), (laptop, "to the laptop")):
        response = await send_push(subscription, json.dumps({"title": text}), key)
        assert response.status_code == 201
    (to_phone,) = push.messages_for(phone)
    assert to_phone.json() == {"title": "to the phone"}
    assert to_phone.ttl == 60
    assert to_phone.urgency == "high"
    assert to_phone.vapid_key == application_server_key
    assert to_phone.claims["aud"] == push.base_url
    assert to_phone.claims["sub"] == "mailto:ops@example.com"
    assert [m.json() for m in push.messages_for(laptop)] == [{"title": "to the laptop"}]


async def test_push_refuses_what_a_push_service_refuses(push: PushEmulator) -> None:
    key, other = Vapid(), Vapid()
    key.generate_keys()
    other.generate_keys()
    subscription = push.subscribe()
    stranger = push.subscribe()
    encrypted = http_ece.encrypt(
        b"hello",
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=base64.urlsafe_b64decode(subscription.p256dh + "="),
        auth_secret=subscription.auth_secret,
        version="aes128gcm",
    )

    async def post(url: str, body: bytes = encrypted, **headers: str) -> int:
        sent = {"TTL": "0", "Content-Encoding": "aes128gcm", **vapid_headers(key, url), **headers}
        async with httpx.AsyncClient() as client:
            return (
                await client.post(url, content=body, headers={k: v for k, v in sent.items() if v})
            ).status_code

    assert await post(subscription.endpoint) == 201
    assert await post(subscription.endpoint, TTL="") == 400
    assert await post(subscription.endpoint, Urgency="urgent") == 400
    assert await post(subscription.endpoint, Topic="x" * 33) == 400
    assert await post(subscription.endpoint, **{"Content-Encoding": "aesgcm"}) == 400
    assert await post(subscription.endpoint, body=b"\0" * 4097) == 413
    # Encrypted for another device: it does not open with this one's keys.
    assert await post(stranger.endpoint) == 400
    assert await post(subscription.endpoint, Authorization="") == 401
    for claims in (
        {"aud": "https://elsewhere.example"},
        {"exp": int(time.time()) + 25 * 3600},
        {"exp": int(time.time()) - 1},
        {"sub": "ops@example.com"},
    ):
        assert await post(subscription.endpoint, **vapid_headers(key, subscription.endpoint, **claims)) == 401
    # Signed by one key, claiming another.
    forged = (
        vapid_headers(key, subscription.endpoint)["Authorization"].split("k=")[0]
        + "k="
        + (vapid_headers(other, subscription.endpoint)["Authorization"].split("k=")[1])
    )
    assert await post(subscription.endpoint, Authorization=forged) == 401
    assert await post(f"{push.base_url}/push/unknown") == 404
    assert len(push.messages) == 1


async def test_push_answers_403_for_a_key_other_than_the_subscriptions(push: PushEmulator) -> None:
    key, other = Vapid(), Vapid()
    key.generate_keys()
    other.generate_keys()
    point = other.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    subscription = push.subscribe(base64.urlsafe_b64encode(point).decode().rstrip("="))
    response = await send_push(subscription, "hello", key)
    assert response.status_code == 403
    assert push.messages == []


async def test_push_answers_404_or_410_for_an_expired_subscription(push: PushEmulator) -> None:
    key = Vapid()
    key.generate_keys()
    gone, missing = push.subscribe(), push.subscribe()
    push.expire(gone)
    push.expire(missing, 404)
    assert (await send_push(gone, "hello", key)).status_code == 410
    assert (await send_push(missing, "hello", key)).status_code == 404
    assert push.messages == []


def test_a_browser_subscription_has_the_shape_of_push_subscription_to_json(push: PushEmulator) -> None:
    subscription = push.subscribe()
    body = subscription.as_json()
    assert body["endpoint"].startswith(f"{push.base_url}/push/")
    assert body["expirationTime"] is None
    point = base64.urlsafe_b64decode(body["keys"]["p256dh"] + "=")
    assert len(point) == 65
    assert point[0] == 4
    assert len(base64.urlsafe_b64decode(body["keys"]["auth"] + "==")) == 16
    assert "=" not in body["keys"]["p256dh"] + body["keys"]["auth"]
