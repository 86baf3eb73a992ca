"""memory.timeframe: which period a question asks about (current facts when none)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memory.timeframe import Timeframe, timeframe

NOW = datetime(2026, 5, 20, 15, 30, tzinfo=UTC)  # a Wednesday


def day(year: int, month: int, date: int) -> datetime:
    return datetime(year, month, date, tzinfo=UTC)


@pytest.mark.parametrize(
    ("question", "window"),
    [
        ("what was my goal in March?", Timeframe(day(2026, 3, 1), day(2026, 4, 1))),
        ("what was my goal in March 2025?", Timeframe(day(2025, 3, 1), day(2025, 4, 1))),
        ("what did I weigh in dec", Timeframe(day(2025, 12, 1), day(2026, 1, 1))),  # the latest December
        ("my goal in May", Timeframe(day(2026, 5, 1), day(2026, 6, 1))),  # this month has begun
        ("what was it in 2025?", Timeframe(day(2025, 1, 1), day(2026, 1, 1))),
        ("what was my goal on 2026-02-14?", Timeframe(day(2026, 2, 14), day(2026, 2, 15))),
        ("what did I say yesterday?", Timeframe(day(2026, 5, 19), day(2026, 5, 20))),
        ("my goal last week", Timeframe(day(2026, 5, 11), day(2026, 5, 18))),
        ("last month's goal", Timeframe(day(2026, 4, 1), day(2026, 5, 1))),
        ("two months ago", Timeframe(day(2026, 3, 1), day(2026, 4, 1))),
        ("3 days ago", Timeframe(day(2026, 5, 17), day(2026, 5, 18))),
        ("what did my goal use to be?", Timeframe(None, None)),
        ("what was my goal before?", Timeframe(None, None)),
        ("how has my goal changed", Timeframe(None, None)),
    ],
)
def test_questions_about_the_past(question: str, window: Timeframe) -> None:
    assert timeframe(question, NOW) == window


@pytest.mark.parametrize(
    "question",
    ["what is my caloric goal?", "what should I eat tonight", "may I ask about my goal?", "I'm vegetarian"],
)
def test_questions_about_the_present(question: str) -> None:
    assert timeframe(question, NOW) is None


def test_a_fact_held_in_a_window_if_its_validity_overlaps_it() -> None:
    march = Timeframe(day(2026, 3, 1), day(2026, 4, 1))
    assert march.overlaps(day(2026, 1, 1), day(2026, 3, 15))  # closed during March
    assert march.overlaps(day(2026, 1, 1), None)  # current, started before
    assert not march.overlaps(day(2026, 1, 1), day(2026, 3, 1))  # closed as March began
    assert not march.overlaps(day(2026, 4, 1), None)  # started after
    assert Timeframe().overlaps(day(2020, 1, 1), day(2020, 2, 1))
