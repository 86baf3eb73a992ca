"""Runs both provider emulators with a small demo data set until interrupted:

    python -m tests.emulators [--host 127.0.0.1] [--port 8601] [--microsoft-port 8602]
                              [--client-id athena-dev] [--client-secret athena-dev-secret]
                              [--redirect-uri http://127.0.0.1:8080/connections ...]

(`tests` has no __init__.py: it is a namespace package, so run it from the repository root.) Both emulators
register the one OAuth client given and sign in a demo account (person@example.com at Google,
person@contoso.com at Microsoft) that approves every consent. The base URLs to configure are printed, one
per line, as `NAME=URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from .google import GOOGLE_DOC, GoogleEmulator
from .microsoft import MicrosoftEmulator


def seed_google(google: GoogleEmulator, now: datetime) -> None:
    who = google.account or "person@example.com"
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    google.add_calendar(who, who, who, "Europe/Berlin", primary=True)
    google.add_calendar(who, "family@group.calendar.google.com", "Family", "Europe/Berlin")
    nine = today.replace(hour=8)  # 09:00 in Berlin in winter
    google.add_event(
        who,
        "primary",
        {
            "summary": "Stand-up",
            "start": {"dateTime": nine.isoformat(), "timeZone": "Europe/Berlin"},
            "end": {"dateTime": (nine + timedelta(minutes=15)).isoformat(), "timeZone": "Europe/Berlin"},
            "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;COUNT=20"],
        },
    )
    google.add_event(
        who,
        "primary",
        {
            "summary": "Dentist",
            "start": {"dateTime": (today + timedelta(days=1, hours=13)).isoformat()},
            "end": {"dateTime": (today + timedelta(days=1, hours=14)).isoformat()},
        },
    )
    first = (today + timedelta(days=2)).date()
    google.add_event(
        who,
        "family@group.calendar.google.com",
        {
            "summary": "Trip to the lake",
            "start": {"date": first.isoformat()},
            "end": {"date": (first + timedelta(days=2)).isoformat()},
        },
    )
    google.add_file(who, "Project plan", GOOGLE_DOC, b"Project plan\n\nMilestones: design, build, ship.", now)
    google.add_file(who, "budget-2026.csv", "text/csv", b"item,amount\nrent,1200\nfood,450\n", now)
    for day in range(7):
        start = today - timedelta(days=day) + timedelta(hours=7)
        google.add_steps(who, start, start + timedelta(hours=1), 1200 + 150 * day)
        google.add_heart_rate(who, start, 62 + day)
        google.add_active_energy(who, start, start + timedelta(hours=1), 120.5 + day)
        night = today - timedelta(days=day) - timedelta(hours=1)
        google.add_sleep(who, night, night + timedelta(hours=7, minutes=30))
    google.add_weight(who, today + timedelta(hours=7), 71500)
    google.add_exercise(
        who, today - timedelta(hours=6), today - timedelta(hours=5), "RUNNING", calories_kcal=540, steps=7800
    )


def seed_microsoft(microsoft: MicrosoftEmulator, now: datetime) -> None:
    who = microsoft.account or "person@contoso.com"
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    microsoft.add_mailbox(who, "W. Europe Standard Time")
    for day, (subject, hour, show_as) in enumerate(
        [("Planning", 9, "busy"), ("1:1", 11, "tentative"), ("Offsite", 13, "oof")]
    ):
        start = today + timedelta(days=day, hours=hour)
        microsoft.add_event(
            who,
            {
                "subject": subject,
                "showAs": show_as,
                "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                "end": {
                    "dateTime": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                    "timeZone": "UTC",
                },
            },
        )
    holiday = today + timedelta(days=3)
    microsoft.add_event(
        who,
        {
            "subject": "Public holiday",
            "isAllDay": True,
            "showAs": "free",
            "start": {
                "dateTime": holiday.strftime("%Y-%m-%dT00:00:00"),
                "timeZone": "W. Europe Standard Time",
            },
            "end": {
                "dateTime": (holiday + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00"),
                "timeZone": "W. Europe Standard Time",
            },
        },
    )
    microsoft.add_file(who, "Quarterly budget.txt", "text/plain", b"Q4 budget: travel 2,000; tools 800.", now)
    microsoft.add_file(who, "Notes.md", "text/markdown", b"# Notes\n\nBudget review on Friday.", now)


async def serve(arguments: argparse.Namespace) -> None:
    google, microsoft = GoogleEmulator(), MicrosoftEmulator()
    for emulator in (google, microsoft):
        emulator.register_client(arguments.client_id, arguments.client_secret, arguments.redirect_uri)
    now = datetime.now(UTC)
    seed_google(google, now)
    seed_microsoft(microsoft, now)
    await google.start(arguments.host, arguments.port)
    await microsoft.start(arguments.host, arguments.microsoft_port)
    try:
        print(f"GOOGLE_OAUTH_AUTHORIZE_URL={google.oauth_authorize_url}")
        print(f"GOOGLE_OAUTH_TOKEN_URL={google.oauth_token_url}")
        print(f"GOOGLE_OAUTH_REVOKE_URL={google.oauth_revoke_url}")
        print(f"GOOGLE_CALENDAR_BASE_URL={google.calendar_base_url}")
        print(f"GOOGLE_DRIVE_BASE_URL={google.drive_base_url}")
        print(f"GOOGLE_HEALTH_BASE_URL={google.health_base_url}")
        print(f"MICROSOFT_LOGIN_BASE_URL={microsoft.login_base_url}")
        print(f"MICROSOFT_OAUTH_AUTHORIZE_URL={microsoft.authorize_url()}")
        print(f"MICROSOFT_OAUTH_TOKEN_URL={microsoft.token_url()}")
        print(f"MICROSOFT_GRAPH_BASE_URL={microsoft.graph_base_url}")
        print(f"OAUTH_CLIENT_ID={arguments.client_id}", flush=True)
        await asyncio.Event().wait()
    finally:
        await google.stop()
        await microsoft.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8601, help="the Google emulator's port (0: any free one)")
    parser.add_argument(
        "--microsoft-port", type=int, default=None, help="default: --port + 1 (0 if --port is 0)"
    )
    parser.add_argument("--client-id", default="athena-dev")
    parser.add_argument("--client-secret", default="athena-dev-secret")
    parser.add_argument(
        "--redirect-uri", action="append", default=None, help="registered redirect URI (repeatable)"
    )
    arguments = parser.parse_args()
    if arguments.microsoft_port is None:
        arguments.microsoft_port = arguments.port + 1 if arguments.port else 0
    arguments.redirect_uri = arguments.redirect_uri or ["http://127.0.0.1:8080/connections"]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(arguments))


if __name__ == "__main__":
    main()
