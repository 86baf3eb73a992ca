"""The proactive agents' rules (integrations.proactive): pure functions of what changed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from integrations.proactive import (
    SHORT_NIGHT_MINUTES,
    Event,
    document_changed,
    focus_conflicts,
    short_night,
)

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def at(hour: int, minute: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


def test_a_meeting_moved_into_a_focus_block_is_said_once_per_move() -> None:
    focus = Event("f1", "Focus time", at(9), at(11), focus_time=True)
    meeting = Event("m1", "Budget review", at(10), at(10, 30))
    notices = focus_conflicts([meeting, focus], NOW, BERLIN)
    assert [(n.agent_id, n.kind) for n in notices] == [("focus", "meeting_overlaps_focus")]
    assert (
        "“Budget review” (Wed 02 Dec 11:00–11:30) now overlaps your focus block “Focus time” (10:00–12:00)"
        in notices[0].body
    )
    # the same event seen again is the same notice; moved elsewhere into the block, a new one
    assert focus_conflicts([meeting, focus], NOW, BERLIN)[0].dedupe_key == notices[0].dedupe_key
    moved = Event("m1", "Budget review", at(9, 30), at(10))
    assert focus_conflicts([moved, focus], NOW, BERLIN)[0].dedupe_key != notices[0].dedupe_key


def test_what_does_not_conflict() -> None:
    blocks = [Event("f1", "Deep work", at(9), at(11)), Event("f2", "heads-down", at(14), at(15))]
    others = [
        Event("a", "Lunch", at(12), at(13)),  # outside every block
        Event("b", "Touching", at(11), at(12)),  # ends... starts when the block ends
        Event("c", "Optional talk", at(9), at(10), busy=False),  # shown as free
        Event("d", "Earlier today", at(7), at(9, 30)),  # already started
    ]
    assert focus_conflicts([*blocks, *others], NOW, BERLIN) == []
    title_only = [Event("f", "No meetings please", at(16), at(18)), Event("m", "Sync", at(17), at(17, 30))]
    assert len(focus_conflicts(title_only, NOW, BERLIN)) == 1


def test_a_short_night_speaks_to_the_focus_and_nutrition_coaches() -> None:
    notices = short_night(date(2026, 12, 2), 5 * 60 + 10)
    assert [n.agent_id for n in notices] == ["focus", "nutrition"]
    assert "You slept 5 h 10 min last night" in notices[0].body
    assert {n.dedupe_key for n in notices} == {"short_night:2026-12-02"}
    for minutes in (None, 0, SHORT_NIGHT_MINUTES, 8 * 60):
        assert short_night(date(2026, 12, 2), minutes) == []


def test_a_changed_document_is_said_only_when_a_conversation_referred_to_it() -> None:
    changed = NOW + timedelta(minutes=5)
    assert document_changed("file-1", "Q3 plan", changed, [], BERLIN) == []
    (notice,) = document_changed("file-1", "Q3 plan", changed, ["conversation-1"], BERLIN)
    assert (notice.agent_id, notice.kind) == ("sme", "document_changed")
    assert "“Q3 plan”, which we talked about, was changed on Wed 02 Dec at 09:05" in notice.body
    assert notice.dedupe_key == f"document_changed:file-1:{changed.isoformat()}"
