"""The tools agents call, over stand-ins of the person's connected accounts (calendars, drives, health days
as the integrations service answers them), and which tools a deployment offers."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import service_settings
from doubles.calendars import InMemoryCalendars
from doubles.memory import InMemoryGateway

from mesh.app import Deps
from mesh.errors import Unavailable
from orchestrator.app import tool_registry
from orchestrator.catalog import AgentSpec
from orchestrator.records import NewTurn
from orchestrator.settings import OrchestratorSettings
from orchestrator.tools import ToolContext, ToolRegistry, build_registry
from orchestrator.tools.calendar import CalendarEvent
from orchestrator.tools.drives import DriveFile, DriveSearch, DriveText
from orchestrator.tools.memory import window_bound
from orchestrator.tools.registry import Tool
from orchestrator.tools.sources import SourceProblem
from orchestrator.tools.wearables import HealthAnswer, HealthDay

NOW = datetime(2030, 1, 7, 18, 0, tzinfo=UTC)
NINE = datetime(2030, 1, 7, 9, tzinfo=UTC)
WINDOW = {"start": "2030-01-07T00:00:00Z", "end": "2030-01-08T00:00:00Z"}


def context(memory: InMemoryGateway, agent_id: str = "focus") -> ToolContext:
    return ToolContext(user_id="u1", agent_id=agent_id, memory=memory, now=lambda: NOW, conversation_id="c1")


async def call(
    registry: ToolRegistry, memory: InMemoryGateway, name: str, **arguments: Any
) -> tuple[Any, bool]:
    outcome = await registry.run(name, json.dumps(arguments), context(memory))
    return json.loads(outcome.result_json), outcome.is_error


def timed(title: str, source: str, start: datetime, end: datetime, **extra: Any) -> CalendarEvent:
    fields: dict[str, Any] = {"time_zone": "", "busy": True, "location": "", "link": "", **extra}
    return CalendarEvent(source, title, start, end, None, None, **fields)


def a_day() -> InMemoryCalendars:
    """A Monday in two connected calendars: a standup, planning and a review overlapping it, free lunch."""
    return InMemoryCalendars(
        [
            timed("standup", "google", NINE, NINE + timedelta(minutes=15)),
            timed("planning", "google", NINE.replace(hour=10), NINE.replace(hour=11)),
            timed("review", "microsoft", NINE.replace(hour=10, minute=30), NINE.replace(hour=11, minute=30)),
            timed("lunch", "microsoft", NINE.replace(hour=12), NINE.replace(hour=13), busy=False),
        ],
        sources=["google", "microsoft"],
    )


async def test_freebusy_asks_for_the_range_in_utc_and_lists_the_busy_blocks() -> None:
    calendars = a_day()
    registry = build_registry(calendar=calendars)
    result, failed = await call(
        registry, InMemoryGateway(), "calendar_freebusy", start="2030-01-07T01:00:00+01:00", end=WINDOW["end"]
    )
    assert not failed
    assert result == {
        "start": "2030-01-07T00:00:00Z",
        "end": "2030-01-08T00:00:00Z",
        "busy": [
            {"start": "2030-01-07T09:00:00Z", "end": "2030-01-07T09:15:00Z"},  # standup
            {"start": "2030-01-07T10:00:00Z", "end": "2030-01-07T11:30:00Z"},  # planning + review, merged
        ],
        "calendars": ["google", "microsoft"],
    }
    assert calendars.asked == [
        ("free_busy", "u1", datetime(2030, 1, 7, tzinfo=UTC), datetime(2030, 1, 8, tzinfo=UTC))
    ]


async def test_freebusy_is_cached_for_five_minutes_in_ephemeral_memory() -> None:
    memory = InMemoryGateway()
    calendars = a_day()
    registry = build_registry(calendar=calendars)
    first, _ = await call(registry, memory, "calendar_freebusy", **WINDOW)
    [(key, (expires, value))] = memory.ephemeral.items()
    assert key == ("calendar_freebusy", "2030-01-07T00:00:00Z/2030-01-08T00:00:00Z")
    assert json.loads(value) == first
    memory.ephemeral[key] = (expires, json.dumps({"busy": [], "cached": True}))
    second, _ = await call(registry, memory, "calendar_freebusy", **WINDOW)
    assert second == {"busy": [], "cached": True}
    assert len(calendars.asked) == 1


async def test_freebusy_still_answers_when_the_cache_is_down() -> None:
    memory = InMemoryGateway()
    memory.fail_with("get_ephemeral", Unavailable("redis down"))
    memory.fail_with("put_ephemeral", Unavailable("redis down"))
    registry = build_registry(calendar=a_day())
    result, failed = await call(registry, memory, "calendar_freebusy", **WINDOW)
    assert not failed
    assert len(result["busy"]) == 2


async def test_a_calendar_that_cannot_answer_is_told_to_the_model_and_not_cached() -> None:
    memory = InMemoryGateway()
    reconnect = SourceProblem("google", True, "Google no longer accepts AthenaOS's access; connect it again.")
    calendars = InMemoryCalendars(
        [timed("call", "microsoft", NINE, NINE.replace(hour=10))], sources=["microsoft"], problems=[reconnect]
    )
    registry = build_registry(calendar=calendars)
    result, failed = await call(registry, memory, "calendar_freebusy", **WINDOW)
    assert not failed
    assert result["busy"] == [{"start": "2030-01-07T09:00:00Z", "end": "2030-01-07T10:00:00Z"}]
    assert result["calendars"] == ["microsoft"]
    assert result["unavailable"] == [
        {"calendar": "google", "needs_reconnect": True, "message": reconnect.message}
    ]
    assert not memory.ephemeral  # the next call asks again


async def test_when_no_calendar_can_answer_the_call_is_an_error_the_model_explains() -> None:
    problems = [
        SourceProblem("google", True, "Connect Google again."),
        SourceProblem("microsoft", False, "Microsoft is limiting requests; try again in 5 s"),
    ]
    registry = build_registry(calendar=InMemoryCalendars(problems=problems))
    result, failed = await call(registry, InMemoryGateway(), "calendar_freebusy", **WINDOW)
    assert failed
    assert result["error"] == "Connect Google again. Microsoft is limiting requests; try again in 5 s"


async def test_without_a_connected_calendar_the_model_is_told_how_to_connect_one() -> None:
    memory = InMemoryGateway()
    registry = build_registry(calendar=InMemoryCalendars())
    result, failed = await call(registry, memory, "calendar_freebusy", **WINDOW)
    assert not failed
    assert result["busy"] == []
    assert "connect Google or Microsoft" in result["note"]
    assert not memory.ephemeral


HOLIDAY = CalendarEvent(
    "microsoft", "Holiday", None, None, date(2030, 1, 7), date(2030, 1, 9), "Europe/Berlin", True, "", ""
)


async def test_events_list_titles_with_their_times_or_days_and_are_cached_per_range() -> None:
    memory = InMemoryGateway()
    standup = timed(
        "standup",
        "google",
        NINE,
        NINE.replace(minute=15),
        time_zone="Europe/Berlin",
        location="Room 4",
        link="https://calendar.example/e1",
    )
    maybe = timed("maybe lunch", "microsoft", NINE.replace(hour=12), NINE.replace(hour=13), busy=False)
    calendars = InMemoryCalendars([maybe, standup, HOLIDAY], sources=["google", "microsoft"])
    registry = build_registry(events=calendars)
    result, failed = await call(
        registry, memory, "calendar_events", start="2030-01-07T00:00:00+01:00", end=WINDOW["end"]
    )
    assert not failed
    assert result == {
        "start": "2030-01-06T23:00:00Z",
        "end": "2030-01-08T00:00:00Z",
        "events": [
            {
                "title": "Holiday",
                "calendar": "microsoft",
                "all_day": True,
                "start_date": "2030-01-07",
                "end_date": "2030-01-09",
                "time_zone": "Europe/Berlin",
                "busy": True,
            },
            {
                "title": "standup",
                "calendar": "google",
                "start": "2030-01-07T09:00:00Z",
                "end": "2030-01-07T09:15:00Z",
                "time_zone": "Europe/Berlin",
                "busy": True,
                "location": "Room 4",
                "link": "https://calendar.example/e1",
            },
            {
                "title": "maybe lunch",
                "calendar": "microsoft",
                "start": "2030-01-07T12:00:00Z",
                "end": "2030-01-07T13:00:00Z",
                "busy": False,
            },
        ],
        "calendars": ["google", "microsoft"],
    }
    assert calendars.asked == [
        ("events", "u1", datetime(2030, 1, 6, 23, tzinfo=UTC), datetime(2030, 1, 8, tzinfo=UTC))
    ]
    [(key, _)] = memory.ephemeral.items()
    assert key == ("calendar_events", "2030-01-06T23:00:00Z/2030-01-08T00:00:00Z")
    again, _ = await call(
        registry, memory, "calendar_events", start="2030-01-06T23:00:00Z", end=WINDOW["end"]
    )
    assert again == result
    assert len(calendars.asked) == 1  # five minutes from the cache


async def test_events_list_the_earliest_fifty_say_when_more_were_found_and_which_could_not_answer() -> None:
    memory = InMemoryGateway()
    reconnect = SourceProblem("google", True, "Google no longer accepts AthenaOS's access; connect it again.")
    slots = [NINE + timedelta(minutes=5 * n) for n in range(51)]
    calls = [timed(f"call {n}", "microsoft", at, at + timedelta(minutes=5)) for n, at in enumerate(slots)]
    calendars = InMemoryCalendars([*reversed(calls), HOLIDAY], sources=["microsoft"], problems=[reconnect])
    registry = build_registry(events=calendars)
    result, failed = await call(registry, memory, "calendar_events", **WINDOW)
    assert not failed
    assert [e["title"] for e in result["events"]] == ["Holiday"] + [f"call {n}" for n in range(49)]
    assert result["truncated"] is True
    assert result["unavailable"] == [
        {"calendar": "google", "needs_reconnect": True, "message": reconnect.message}
    ]
    assert not memory.ephemeral  # the next call asks again

    nobody = build_registry(events=InMemoryCalendars(problems=[reconnect]))
    result, failed = await call(nobody, memory, "calendar_events", **WINDOW)
    assert failed  # a tool error the model explains, not a failed turn
    assert result["error"] == reconnect.message
    unconnected, failed = await call(
        build_registry(events=InMemoryCalendars()), memory, "calendar_events", **WINDOW
    )
    assert not failed
    assert "connect Google or Microsoft" in unconnected["note"]


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"start": "2030-01-08T00:00:00Z", "end": "2030-01-07T00:00:00Z"}, "end: must be after start"),
        ({"start": "2030-01-01T00:00:00Z", "end": "2030-04-05T00:00:00Z"}, "at most 93 days"),
        ({"start": "next tuesday", "end": "2030-01-07T00:00:00Z"}, "start: must be an ISO 8601"),
    ],
)
async def test_events_take_the_same_range_as_freebusy(window: dict[str, str], message: str) -> None:
    calendars = a_day()
    for name in ("calendar_freebusy", "calendar_events"):
        registry = build_registry(calendar=calendars, events=calendars)
        result, failed = await call(registry, InMemoryGateway(), name, **window)
        assert failed
        assert message in result["error"]
    assert not calendars.asked


class Drive:
    """Connected drives answering what they are given."""

    def __init__(self, search: DriveSearch) -> None:
        self.answer = search
        self.asked: list[tuple[str, str, int, str]] = []

    async def search(self, query: str, limit: int, conversation_id: str = "") -> DriveSearch:
        return self.answer

    async def read(self, source: str, file_id: str, max_chars: int, conversation_id: str = "") -> DriveText:
        self.asked.append((source, file_id, max_chars, conversation_id))
        return DriveText(self.answer.files[0], "The budget grows.", False)


PLAN = DriveFile("google", "f1", "Q3 plan", "application/vnd.google-apps.document", NINE, "https://docs/f1")


async def test_connected_drives_find_and_read_documents() -> None:
    drive = Drive(DriveSearch([PLAN], ["google"]))
    registry = build_registry(drives=drive)
    found, failed = await call(registry, InMemoryGateway(), "file_search", query="budget")
    assert not failed
    assert found == {
        "files": [
            {
                "source": "google",
                "id": "f1",
                "name": "Q3 plan",
                "type": "application/vnd.google-apps.document",
                "link": "https://docs/f1",
                "modified": "2030-01-07T09:00:00Z",
            }
        ],
        "drives": ["google"],
    }
    read, failed = await call(registry, InMemoryGateway(), "file_read", source="google", file_id="f1")
    assert not failed
    assert (read["name"], read["text"], read["truncated"]) == ("Q3 plan", "The budget grows.", False)
    assert drive.asked == [("google", "f1", 20_000, "c1")]  # the conversation reading it, remembered
    refused, failed = await call(registry, InMemoryGateway(), "file_read", source="dropbox", file_id="f1")
    assert failed
    assert "'dropbox' is not one of" in refused["error"]


async def test_a_drive_that_cannot_answer_is_told_and_none_answering_is_an_error() -> None:
    problem = SourceProblem("microsoft", True, "Microsoft no longer accepts AthenaOS; connect it again.")
    partly = build_registry(drives=Drive(DriveSearch([PLAN], ["google"], [problem])))
    found, failed = await call(partly, InMemoryGateway(), "file_search", query="budget")
    assert not failed
    assert found["unavailable"] == [
        {"drive": "microsoft", "needs_reconnect": True, "message": problem.message}
    ]
    none = build_registry(drives=Drive(DriveSearch([], [], [problem])))
    found, failed = await call(none, InMemoryGateway(), "file_search", query="budget")
    assert failed
    assert found["error"] == problem.message
    nothing = build_registry(drives=Drive(DriveSearch([], [])))
    found, failed = await call(nothing, InMemoryGateway(), "file_search", query="budget")
    assert "connect Google Drive or OneDrive" in found["note"]


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ({"start": "tomorrow morning", "end": "2030-01-08T00:00:00Z"}, "start: must be an ISO 8601"),
        ({"start": "2030-01-08T00:00:00Z", "end": "2030-01-07T00:00:00Z"}, "end: must be after start"),
        ({"start": "2030-01-01T00:00:00Z", "end": "2030-12-31T00:00:00Z"}, "at most 93 days"),
        ({"start": "2030-01-01T00:00:00Z"}, "'end' is a required property"),
    ],
)
async def test_freebusy_explains_bad_ranges_to_the_model(window: dict[str, str], problem: str) -> None:
    calendars = a_day()
    registry = build_registry(calendar=calendars)
    result, failed = await call(registry, InMemoryGateway(), "calendar_freebusy", **window)
    assert failed
    assert problem in result["error"]
    assert not calendars.asked


class _Health:
    """`HealthData` answering fixed days (the integrations service's answer, as the client maps it)."""

    def __init__(self, days: list[HealthDay], problems: list[SourceProblem] | None = None) -> None:
        self.days = days
        self.problems = problems or []
        self.asked: list[tuple[str, date, date]] = []

    async def stats(self, metric: str, start: date, end: date) -> HealthAnswer:
        self.asked.append((metric, start, end))
        days = [day for day in self.days if start <= day.day <= end]
        sources = sorted({day.source for day in self.days}) or (["google"] if self.problems else [])
        return HealthAnswer(days, "count", [] if self.problems and not days else sources, self.problems)


async def test_wearable_stats_report_each_day_and_the_range() -> None:
    health = _Health(
        [
            HealthDay(date(2030, 1, 1), 4000, 4000, 4000, "apple_health"),
            HealthDay(date(2030, 1, 6), 12000, 12000, 12000, "google"),
            HealthDay(date(2030, 1, 7), 8412.0, 8412, 8412, "apple_health"),
        ]
    )
    registry = build_registry(wearables=health)
    memory = InMemoryGateway()
    today, failed = await call(registry, memory, "wearable_stats", metric="steps", range="today")
    assert not failed
    assert today == {
        "metric": "steps",
        "range": "today",
        "start_date": "2030-01-07",
        "end_date": "2030-01-07",
        "unit": "count",
        "days": [{"date": "2030-01-07", "value": 8412}],
        "sources": ["apple_health", "google"],
        "total": 8412,
        "average_per_day": 8412,
        "lowest": 8412,
        "highest": 8412,
    }
    week, _ = await call(registry, memory, "wearable_stats", metric="steps", range="7d")
    assert (week["start_date"], week["total"], week["lowest"]) == ("2030-01-01", 24412, 4000)
    yesterday, _ = await call(registry, memory, "wearable_stats", metric="steps", range="yesterday")
    assert yesterday["days"] == [{"date": "2030-01-06", "value": 12000}]
    assert health.asked[-1] == ("steps", date(2030, 1, 6), date(2030, 1, 6))


async def test_wearable_stats_without_data_or_with_a_lost_grant() -> None:
    registry = build_registry(wearables=_Health([]))
    empty, failed = await call(
        registry, InMemoryGateway(), "wearable_stats", metric="sleep_minutes", range="30d"
    )
    assert not failed
    assert empty["days"] == []
    assert "total" not in empty
    assert "Connections" in empty["note"]
    lost = _Health([], [SourceProblem("google", True, "Google no longer accepts it; connect it again.")])
    failure, failed = await call(
        build_registry(wearables=lost), InMemoryGateway(), "wearable_stats", metric="steps", range="7d"
    )
    assert failed
    assert "connect it again" in failure["error"]


async def test_a_crashing_tool_is_an_error_result_not_a_crash() -> None:
    async def broken(arguments: dict[str, Any], context: ToolContext) -> Any:
        raise RuntimeError("secret internal detail")

    registry = ToolRegistry([Tool("broken", "Breaks.", {"type": "object"}, broken)])
    result, failed = await call(registry, InMemoryGateway(), "broken")
    assert failed
    assert result == {"error": "broken failed unexpectedly"}


async def test_memory_tools_use_the_calling_agents_scope() -> None:
    memory = InMemoryGateway()
    registry = build_registry()
    stored, _ = await call(
        registry, memory, "remember_memory", text="ate oatmeal", scope="agent", key="breakfast"
    )
    assert stored["scope"] == "agent"
    assert [(m.agent_id, m.scope.value, m.key) for m in memory.memories] == [("focus", "agent", "breakfast")]
    outcome = await registry.run(
        "recall_memory", json.dumps({"query": "oatmeal"}), context(memory, "nutrition")
    )
    assert json.loads(outcome.result_json) == {"memories": []}
    forgotten, _ = await call(registry, memory, "forget_memory", query="oatmeal")
    assert forgotten["forgotten"] == 1
    assert memory.memories == []


MEMORY_TOOLS = ("remember_memory", "recall_memory", "forget_memory", "recall_conversations")
CONNECTED_TOOLS = ("calendar_freebusy", "calendar_events", "wearable_stats", "file_search", "file_read")


def test_providers_only_add_their_tools_when_configured() -> None:
    assert build_registry().names == MEMORY_TOOLS
    calendars = InMemoryCalendars()
    full = build_registry(
        calendar=calendars, events=calendars, wearables=_Health([]), drives=Drive(DriveSearch([], []))
    )
    assert full.names[4:] == CONNECTED_TOOLS
    assert build_registry(calendar=calendars).names[4:] == ("calendar_freebusy",)


async def test_the_integrations_service_brings_the_connected_account_tools_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    deps = Deps()
    try:
        connected = tool_registry(
            OrchestratorSettings(**service_settings(tmp_path, integrations_target="127.0.0.1:1")), deps
        )
    finally:
        await deps.resources.aclose()
    assert connected.names[4:] == CONNECTED_TOOLS
    alone = tool_registry(OrchestratorSettings(**service_settings(tmp_path)), Deps())
    assert alone.names == MEMORY_TOOLS


async def test_recall_conversations_searches_past_messages_within_the_dates_asked() -> None:
    memory = InMemoryGateway()
    memory.agents = [AgentSpec("nutrition", "Nutrition coach", "", "You coach.", "{message}", "", "")]
    start = await memory.start_turn(
        NewTurn(agent_id="nutrition", text="for dinner I cook lentil soup"), history_messages=0
    )
    registry = build_registry()
    today = datetime.now(UTC).date()
    found, is_error = await call(
        registry, memory, "recall_conversations", query="dinner", agent="nutrition", since=today.isoformat()
    )
    assert not is_error
    assert [(m["conversation_id"], m["role"], m["agent"], m["text"]) for m in found["messages"]] == [
        (start.conversation_id, "user", "nutrition", "for dinner I cook lentil soup")
    ]
    # A date is a whole day: until yesterday excludes today's message; another agent has none of it.
    yesterday = (today - timedelta(days=1)).isoformat()
    assert (await call(registry, memory, "recall_conversations", query="dinner", until=yesterday))[0] == {
        "messages": []
    }
    assert (await call(registry, memory, "recall_conversations", query="dinner", agent="focus"))[0] == {
        "messages": []
    }
    refused, is_error = await call(
        registry, memory, "recall_conversations", query="dinner", since="2030-02-31"
    )
    assert is_error
    assert "since" in json.dumps(refused)


def test_window_bounds_are_whole_utc_days_both_ends_included() -> None:
    assert window_bound("2030-01-07", "since", end=False) == datetime(2030, 1, 7, tzinfo=UTC)
    assert window_bound("2030-01-07", "until", end=True) == datetime(2030, 1, 8, tzinfo=UTC)
    assert window_bound("2030-01-07T10:30:00Z", "until", end=True) == datetime(2030, 1, 7, 10, 30, tzinfo=UTC)
    assert window_bound("2030-01-07T10:30", "since", end=False) == datetime(2030, 1, 7, 10, 30, tzinfo=UTC)
