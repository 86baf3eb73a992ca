"""How integrations reads one provider event: all-day events as the civil dates their calendar shows,
whatever zone they carry or Graph labels them with, and zones by IANA or Windows name."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from integrations.calendars import _google_event, _graph_event, zone_named


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Europe/Berlin", "Europe/Berlin"),
        ("W. Europe Standard Time", "Europe/Berlin"),
        ("Pacific Standard Time", "America/Los_Angeles"),
        ("UTC", "UTC"),
        ("tzone://Microsoft/Custom", None),
        ("Europe", None),
        ("", None),
    ],
)
def test_zones_are_named_the_iana_or_the_windows_way(name: str, key: str | None) -> None:
    zone = zone_named(name)
    assert (zone.key if zone else None) == key


def graph_all_day(first: str, after: str, label: str, zone: str) -> dict[str, object]:
    return {
        "id": "AAMk1",
        "subject": "away",
        "isAllDay": True,
        "start": {"dateTime": f"{first}T00:00:00.0000000", "timeZone": label},
        "end": {"dateTime": f"{after}T00:00:00.0000000", "timeZone": label},
        "originalStartTimeZone": zone,
    }


def test_a_graph_all_day_event_keeps_its_dates_and_takes_its_days_where_it_was_made() -> None:
    event = _graph_event(graph_all_day("2026-03-29", "2026-03-31", "UTC", "W. Europe Standard Time"))
    assert event is not None
    assert (event.all_day, event.start_date, event.end_date) == (True, date(2026, 3, 29), date(2026, 3, 31))
    assert event.time_zone == "Europe/Berlin"
    # Berlin's clocks go forward on the 29th: midnight is 23:00 UTC before it, 22:00 UTC after.
    assert (event.start, event.end) == (
        datetime(2026, 3, 28, 23, tzinfo=UTC),
        datetime(2026, 3, 30, 22, tzinfo=UTC),
    )


def test_a_graph_all_day_event_in_a_zone_nobody_knows_is_read_in_utc() -> None:
    event = _graph_event(
        graph_all_day("2026-12-03", "2026-12-03", "Pacific Standard Time", "Customized Time Zone")
    )
    assert event is not None
    assert (event.start_date, event.end_date, event.time_zone) == (date(2026, 12, 3), date(2026, 12, 4), "")
    assert (event.start, event.end) == (datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC))


def test_cancelled_events_are_left_out_and_untitled_ones_say_so() -> None:
    assert (
        _graph_event({**graph_all_day("2026-12-03", "2026-12-04", "UTC", "UTC"), "isCancelled": True}) is None
    )
    assert _google_event({"id": "e1", "status": "cancelled", "start": {"date": "2026-12-03"}}, "UTC") is None
    untitled = _google_event(
        {
            "id": "e2",
            "start": {"dateTime": "2026-12-03T09:00:00-08:00"},
            "end": {"dateTime": "2026-12-03T10:00:00-08:00"},
        },
        "America/Los_Angeles",
    )
    assert untitled is not None
    assert (untitled.title, untitled.start, untitled.time_zone) == (
        "(no title)",
        datetime(2026, 12, 3, 17, tzinfo=UTC),
        "America/Los_Angeles",
    )
