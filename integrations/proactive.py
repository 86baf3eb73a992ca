"""When an agent speaks first: small rules over what changed in a person's accounts, each answering the
notifications it would leave (which agent, what it says, and a dedupe key naming what it reacted to, so
that the same change seen twice is one notification).

- `focus_conflicts`: a meeting (busy, timed, not itself a focus block) that overlaps a focus block — an
  event marked as focus time (Google Calendar's `focusTime` event type) or titled so ("Focus", "Deep work")
  — and has not started yet → the focus coach.
- `short_night`: last night's sleep under `SHORT_NIGHT_MINUTES` → the focus coach (plan the day) and the
  nutrition coach (eat for it).
- `document_changed`: a shared document a conversation referred to changed → the business assistant.

Pure functions: no I/O, no clock of their own; the consumer (integrations/proactive_consumer.py) reads the
data and delivers what they answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

FOCUS_AGENT = "focus"
NUTRITION_AGENT = "nutrition"
BUSINESS_AGENT = "sme"
SHORT_NIGHT_MINUTES = 6 * 60
_FOCUS_TITLE = re.compile(r"\b(focus|deep\s+work|heads?[\s-]down|no\s+meetings)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Event:
    """A calendar event as the rules need it (timed events only; all-day events neither conflict nor
    protect time)."""

    id: str
    title: str
    start: datetime
    end: datetime
    busy: bool = True
    focus_time: bool = False
    """The calendar marks it as focus time (Google's `eventType: focusTime`)."""

    @property
    def is_focus(self) -> bool:
        return self.focus_time or bool(_FOCUS_TITLE.search(self.title))


@dataclass(frozen=True, slots=True)
class Notice:
    """A notification a rule would leave."""

    agent_id: str
    kind: str
    title: str
    body: str
    dedupe_key: str
    conversation_id: str = ""
    """The conversation to continue it in, if any."""


def _clock(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%H:%M")


def _day(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%a %d %b")


def focus_conflicts(events: Iterable[Event], now: datetime, zone: ZoneInfo) -> list[Notice]:
    """A notice per upcoming meeting overlapping a focus block (its earliest such block), by start."""
    timed = sorted(events, key=lambda e: (e.start, e.end, e.id))
    blocks = [e for e in timed if e.is_focus]
    notices: list[Notice] = []
    for meeting in timed:
        if meeting.is_focus or not meeting.busy or meeting.start < now:
            continue
        block = next((b for b in blocks if b.start < meeting.end and meeting.start < b.end), None)
        if block is None:
            continue
        when = f"{_day(meeting.start, zone)} {_clock(meeting.start, zone)}–{_clock(meeting.end, zone)}"
        notices.append(
            Notice(
                FOCUS_AGENT,
                "meeting_overlaps_focus",
                f"“{meeting.title}” overlaps your focus time",
                f"“{meeting.title}” ({when}) now overlaps your focus block “{block.title}” "
                f"({_clock(block.start, zone)}–{_clock(block.end, zone)}). Shall we move one of them, or "
                "protect the time that is left?",
                f"meeting_overlaps_focus:{meeting.id}:{meeting.start.isoformat()}:{block.id}",
            )
        )
    return notices


def short_night(night: date, minutes_asleep: float | None) -> list[Notice]:
    """Notices for a night shorter than `SHORT_NIGHT_MINUTES` (none without data)."""
    if minutes_asleep is None or minutes_asleep <= 0 or minutes_asleep >= SHORT_NIGHT_MINUTES:
        return []
    hours, minutes = divmod(round(minutes_asleep), 60)
    slept = f"{hours} h {minutes:02d} min"
    key = f"short_night:{night.isoformat()}"
    return [
        Notice(
            FOCUS_AGENT,
            "short_night",
            "A short night",
            f"You slept {slept} last night. Put the demanding work in your first hours, keep meetings short, "
            "and take a real break after lunch.",
            key,
        ),
        Notice(
            NUTRITION_AGENT,
            "short_night",
            "Eating after a short night",
            f"After {slept} of sleep, cravings run high: have protein with breakfast, keep caffeine before "
            "2 pm, and plan a proper lunch rather than snacks.",
            key,
        ),
    ]


def document_changed(
    file_id: str, name: str, changed_at: datetime, referred_in: Sequence[str], zone: ZoneInfo
) -> list[Notice]:
    """A notice when a document that conversations referred to (`referred_in`: their ids) changed."""
    if not referred_in:
        return []
    return [
        Notice(
            BUSINESS_AGENT,
            "document_changed",
            f"“{name}” changed",
            f"“{name}”, which we talked about, was changed on {_day(changed_at, zone)} at "
            f"{_clock(changed_at, zone)}. Want me to go through what is new?",
            f"document_changed:{file_id}:{changed_at.isoformat()}",
        )
    ]
