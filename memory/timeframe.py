"""When a question asks about: a small parser of time expressions for time-aware recall. No I/O, no gRPC.

Recall answers current facts (valid_to IS NULL) unless the question asks about the past. `timeframe`
recognises, in English:

- a month, optionally with a year: "in March", "in March 2026", "March 2025" (without a year: the latest
  such month that has started, this one included);
- a year: "in 2025";
- a date: "on 2026-03-05", "2026-03-05";
- relative periods: "yesterday", "last week", "last month", "last year", "N days|weeks|months|years ago";
- words asking for history without a period: "used to", "before", "previously", "formerly",
  "originally", "at first", "in the past", "earlier", "no longer", "anymore", "history", "changed".

The answer is the half-open UTC window [start, end) the facts must have held in (None for open ends);
without a period, a history question is the whole past. Facts that held at any moment of the window are
recalled, current ones included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))
# "may" is also a verb: as a month it needs "in"/"of"/"since"/"during" before it or a year after it.
_MONTH = re.compile(
    rf"\b(?:(?P<prep>in|of|during|since|from)\s+)?(?P<month>{_MONTH_NAMES})\b\.?(?:\s+(?P<year>\d{{4}}))?",
    re.IGNORECASE,
)
_YEAR = re.compile(r"\b(?:in|during|of)\s+(?P<year>(?:19|20)\d{2})\b", re.IGNORECASE)
_DATE = re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})\b")
_AGO = re.compile(r"\b(?P<count>\d{1,3}|a|an|one|two|three)\s+(?P<unit>day|week|month|year)s?\s+ago\b", re.I)
_LAST = re.compile(r"\blast\s+(?P<unit>week|month|year)\b", re.IGNORECASE)
_YESTERDAY = re.compile(r"\byesterday\b", re.IGNORECASE)
_HISTORY = re.compile(
    r"\b(?:used?\s+to\s+be|used\s+to|before|previously|formerly|originally|at\s+first|in\s+the\s+past|earlier|"
    r"no\s+longer|anymore|any\s+more|history|changed?)\b",
    re.IGNORECASE,
)
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


@dataclass(frozen=True, slots=True)
class Timeframe:
    """The window a question asks about: facts that held at some moment of [start, end)."""

    start: datetime | None = None
    end: datetime | None = None

    def overlaps(self, valid_from: datetime, valid_to: datetime | None) -> bool:
        """Whether a fact valid over [valid_from, valid_to) held at some moment of the window."""
        if self.end is not None and valid_from >= self.end:
            return False
        return not (self.start is not None and valid_to is not None and valid_to <= self.start)

    def describe(self) -> str:
        start = self.start.date().isoformat() if self.start else "the beginning"
        end = self.end.date().isoformat() if self.end else "now"
        return f"{start} to {end}"


def _month_start(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


def _next_month(moment: datetime) -> datetime:
    return _month_start(moment.year + moment.month // 12, moment.month % 12 + 1)


def timeframe(question: str, now: datetime) -> Timeframe | None:
    """The window `question` asks about, or None when it asks about the present (see the module docstring).
    `now` is timezone-aware."""
    now = now.astimezone(UTC)
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if match := _DATE.search(question):
        try:
            day = datetime(int(match["year"]), int(match["month"]), int(match["day"]), tzinfo=UTC)
        except ValueError:
            day = None
        if day is not None:
            return Timeframe(day, day + timedelta(days=1))
    for match in _MONTH.finditer(question):
        month = _MONTHS[match["month"].lower()]
        if match["month"].lower() == "may" and not (match["prep"] or match["year"]):
            continue
        latest = now.year if month <= now.month else now.year - 1  # the latest such month begun
        year = int(match["year"]) if match["year"] else latest
        start = _month_start(year, month)
        return Timeframe(start, _next_month(start))
    if match := _YEAR.search(question):
        year = int(match["year"])
        return Timeframe(datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC))
    if _YESTERDAY.search(question):
        return Timeframe(today - timedelta(days=1), today)
    if match := _AGO.search(question):
        count = _COUNTS.get(match["count"].lower()) or int(match["count"])
        return _units_ago(match["unit"].lower(), count, today)
    if match := _LAST.search(question):
        return _units_ago(match["unit"].lower(), 1, today)
    if _HISTORY.search(question):
        return Timeframe(None, None)
    return None


def _units_ago(unit: str, count: int, today: datetime) -> Timeframe:
    """The day, week (Monday to Sunday), month or year `count` units before the current one."""
    if unit == "day":
        start = today - timedelta(days=count)
        return Timeframe(start, start + timedelta(days=1))
    if unit == "week":
        start = today - timedelta(days=today.weekday() + 7 * count)
        return Timeframe(start, start + timedelta(days=7))
    if unit == "month":
        index = today.year * 12 + (today.month - 1) - count
        start = _month_start(index // 12, index % 12 + 1)
        return Timeframe(start, _next_month(start))
    year = today.year - count
    return Timeframe(datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC))
