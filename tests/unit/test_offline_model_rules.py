"""The offline model's answers and embeddings, without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from offline_model import embeddings, rules

ALL_TOOLS = ("remember_memory", "forget_memory", "calendar_freebusy", "handoff_to_nutrition")
NOW = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def memories(*lines: str) -> dict[str, Any]:
    return {"role": "system", "content": "Memories:\n" + "\n".join(f"- {line}" for line in lines)}


def tool_turn(
    name: str, arguments: dict[str, Any], result: Any, call_id: str = "call_1"
) -> list[dict[str, Any]]:
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    content = result if isinstance(result, str) else json.dumps(result)
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": content},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("remember I like green tea", {"text": "I like green tea", "scope": "user"}),
        ("Remember that my goal is 2000 kcal.", {"text": "my goal is 2000 kcal", "scope": "user"}),
        ("REMEMBER:   I run   on Sundays!!", {"text": "I run on Sundays", "scope": "user"}),
        ('remember "the door code is 1234."', {"text": "the door code is 1234", "scope": "user"}),
        (
            "note the client prefers invoices in EUR",
            {"text": "the client prefers invoices in EUR", "scope": "agent"},
        ),
    ],
)
def test_remember_and_note_call_remember_memory(text: str, expected: dict[str, str]) -> None:
    reply = rules.plan_reply([user(text)], ALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply("remember_memory", expected)
    assert json.loads(reply.arguments_json) == expected


def test_forget_calls_forget_memory_with_the_fact_as_query() -> None:
    reply = rules.plan_reply([user("Forget that I like green tea.")], ALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply("forget_memory", {"query": "I like green tea"})


@pytest.mark.parametrize(
    "text", ["Am I free on Tuesday?", "what does my calendar look like", "Book a MEETING"]
)
def test_calendar_questions_ask_for_the_next_seven_days(text: str) -> None:
    reply = rules.plan_reply([user(text)], ALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply(
        "calendar_freebusy", {"start": "2025-03-01T09:30:15Z", "end": "2025-03-08T09:30:15Z"}
    )


EVENT_TOOLS = (*ALL_TOOLS, "calendar_events")


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("What's on my calendar tomorrow?", ("2025-03-02T00:00:00Z", "2025-03-03T00:00:00Z")),
        ("whats on my schedule today", ("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z")),
        ("What meetings do I have?", ("2025-03-01T09:30:15Z", "2025-03-08T09:30:15Z")),
        ("do I have any meetings tomorrow", ("2025-03-02T00:00:00Z", "2025-03-03T00:00:00Z")),
        ("list my events", ("2025-03-01T09:30:15Z", "2025-03-08T09:30:15Z")),
    ],
)
def test_questions_about_whats_on_the_calendar_list_its_events(text: str, window: tuple[str, str]) -> None:
    reply = rules.plan_reply([user(text)], EVENT_TOOLS, NOW)
    assert reply == rules.ToolCallReply("calendar_events", {"start": window[0], "end": window[1]})


def test_without_the_events_tool_the_same_question_asks_free_busy() -> None:
    reply = rules.plan_reply([user("what's on my calendar tomorrow?")], ALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply(
        "calendar_freebusy", {"start": "2025-03-01T09:30:15Z", "end": "2025-03-08T09:30:15Z"}
    )
    freebusy = rules.plan_reply([user("am I free tomorrow?")], EVENT_TOOLS, NOW)
    assert isinstance(freebusy, rules.ToolCallReply)
    assert freebusy.name == "calendar_freebusy"


def test_events_are_named_with_their_times_and_days() -> None:
    arguments = {"start": "2025-03-02T00:00:00Z", "end": "2025-03-03T00:00:00Z"}
    result = {
        "start": "2025-03-02T00:00:00Z",
        "end": "2025-03-03T00:00:00Z",
        "events": [
            {"title": "Holiday", "all_day": True, "start_date": "2025-03-02", "end_date": "2025-03-03"},
            {"title": "Trip", "all_day": True, "start_date": "2025-03-02", "end_date": "2025-03-05"},
            {"title": "standup", "start": "2025-03-02T09:00:00Z", "end": "2025-03-02T09:15:00Z"},
            {"title": "late call", "start": "2025-03-02T23:30:00Z", "end": "2025-03-03T00:30:00Z"},
        ],
        "calendars": ["microsoft"],
        "unavailable": [{"calendar": "google", "needs_reconnect": True, "message": "Connect Google again."}],
    }
    messages = [user("what's on my calendar tomorrow?"), *tool_turn("calendar_events", arguments, result)]
    assert rules.plan_reply(messages, EVENT_TOOLS, NOW) == rules.TextReply(
        "You have 4 events between 2025-03-02 00:00 UTC and 2025-03-03 00:00 UTC: Holiday (all day "
        "2025-03-02); Trip (all day 2025-03-02 to 2025-03-04); standup (2025-03-02 09:00–09:15 UTC); "
        "late call (2025-03-02 23:30 UTC – 2025-03-03 00:30 UTC). Connect Google again."
    )


def test_many_events_are_counted_past_the_first_ten_and_none_is_said() -> None:
    arguments = {"start": "2025-03-02T00:00:00Z", "end": "2025-03-03T00:00:00Z"}
    many = {
        "events": [
            {"title": f"e{n}", "start": f"2025-03-02T{n:02d}:00:00Z", "end": f"2025-03-02T{n:02d}:30:00Z"}
            for n in range(12)
        ],
        "truncated": True,
    }
    text = rules.plan_reply(
        [user("my events"), *tool_turn("calendar_events", arguments, many)], EVENT_TOOLS, NOW
    )
    assert isinstance(text, rules.TextReply)
    assert text.text.startswith(
        "You have 12 events between 2025-03-02 00:00 UTC and 2025-03-03 00:00 UTC: e0 ("
    )
    assert "e9 (2025-03-02 09:00–09:30 UTC); and 2 more; and there are more after these." in text.text
    assert "e10" not in text.text
    none = {"events": [], "calendars": [], "note": "No calendar is connected."}
    assert rules.plan_reply(
        [user("my events"), *tool_turn("calendar_events", arguments, none)], EVENT_TOOLS, NOW
    ) == rules.TextReply(
        "You have no events between 2025-03-02 00:00 UTC and 2025-03-03 00:00 UTC. No calendar is connected."
    )


def test_calendar_window_starts_now_by_default() -> None:
    reply = rules.plan_reply([user("am I busy")], ALL_TOOLS)
    assert isinstance(reply, rules.ToolCallReply)
    start = datetime.fromisoformat(reply.arguments["start"])
    assert abs(datetime.now(UTC) - start) < timedelta(minutes=1)
    assert datetime.fromisoformat(reply.arguments["end"]) - start == timedelta(days=7)


def test_ask_hands_off_to_the_named_agent() -> None:
    reply = rules.plan_reply([user("ask Nutrition: how much protein do I need?")], ALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply("handoff_to_nutrition", {"reason": "how much protein do I need?"})


@pytest.mark.parametrize("text", ["remember I like tea", "ask focus how do I focus", "am I free today"])
def test_a_tool_the_request_does_not_offer_is_never_called(text: str) -> None:
    reply = rules.plan_reply([memories("I like tea"), user(text)], ["handoff_to_nutrition"], NOW)
    assert reply == rules.TextReply("Here is what I know: I like tea")


def test_only_the_last_user_message_counts() -> None:
    messages = [user("remember I like tea"), {"role": "assistant", "content": "ok"}, user("hello")]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply("I don't know that yet.")


def test_content_parts_are_read_as_text() -> None:
    message = {
        "role": "user",
        "content": [{"type": "text", "text": "remember "}, {"type": "text", "text": "x"}],
    }
    assert rules.plan_reply([message], ALL_TOOLS, NOW) == rules.ToolCallReply(
        "remember_memory", {"text": "x", "scope": "user"}
    )


def test_memories_are_joined_in_order() -> None:
    messages = [
        {"role": "system", "content": "You are a nutrition coach."},
        memories("Caloric goal is 2000 kcal", "Allergic to peanuts"),
        user("What do you know about me?"),
    ]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply(
        "Here is what I know: Caloric goal is 2000 kcal; Allergic to peanuts"
    )


def test_without_memories_it_does_not_know() -> None:
    messages = [{"role": "system", "content": "Memories: none"}, user("What is my goal?")]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply("I don't know that yet.")


def test_remember_result_is_confirmed_with_the_fact() -> None:
    messages = [user("remember I like green tea")]
    messages += tool_turn("remember_memory", {"text": "I like green tea", "scope": "user"}, {"id": "m1"})
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply(
        "Got it — I'll remember that I like green tea."
    )


def test_forget_result_is_confirmed_only_when_something_was_forgotten() -> None:
    forgot = {"forgotten": 1, "ids": ["m1"]}
    messages = [user("forget my tea"), *tool_turn("forget_memory", {"query": "my tea"}, forgot)]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply("Done — I've forgotten that.")
    nothing = {"forgotten": 0, "ids": []}
    messages = [user("forget my tea"), *tool_turn("forget_memory", {"query": "my tea"}, nothing)]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply(
        "I couldn't find anything like that to forget."
    )


def test_the_result_matching_the_tool_call_id_is_confirmed() -> None:
    messages = [user("remember a"), *tool_turn("remember_memory", {"text": "a", "scope": "user"}, "ok", "c1")]
    messages += tool_turn("forget_memory", {"query": "b"}, "ok", "c2")
    messages[-1]["tool_call_id"] = "c1"
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply("Got it — I'll remember that a.")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            {"busy": [{"start": "a", "end": "b"}, {"start": "c", "end": "d"}]},
            "You have 2 busy blocks between 2025-03-01 09:30 UTC and 2025-03-08 09:30 UTC.",
        ),
        (
            {"calendars": {"primary": {"busy": [{"start": "a", "end": "b"}]}}},
            "You have 1 busy block between 2025-03-01 09:30 UTC and 2025-03-08 09:30 UTC.",
        ),
        ([], "You have no busy blocks between 2025-03-01 09:30 UTC and 2025-03-08 09:30 UTC."),
        (
            {
                "busy": [{"start": "a", "end": "b"}],
                "calendars": ["microsoft"],
                "unavailable": [
                    {"calendar": "google", "needs_reconnect": True, "message": "Connect Google again."}
                ],
            },
            "You have 1 busy block between 2025-03-01 09:30 UTC and 2025-03-08 09:30 UTC. "
            "Connect Google again.",
        ),
        (
            {"busy": [], "calendars": [], "note": "No calendar is connected."},
            "You have no busy blocks between 2025-03-01 09:30 UTC and 2025-03-08 09:30 UTC. "
            "No calendar is connected.",
        ),
        ("not json", "I checked your calendar between 2025-03-01 09:30 UTC and 2025-03-08 09:30 UTC."),
    ],
)
def test_calendar_result_is_summarised_in_one_sentence(result: Any, expected: str) -> None:
    arguments = {"start": "2025-03-01T09:30:00Z", "end": "2025-03-08T09:30:00Z"}
    messages = [user("am I free?"), *tool_turn("calendar_freebusy", arguments, result)]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply(expected)


def test_a_failed_tool_is_reported() -> None:
    messages = [
        user("remember x"),
        *tool_turn("remember_memory", {"text": "x"}, {"error": "memory unavailable"}),
    ]
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply(
        "Sorry — that didn't work: memory unavailable."
    )


def test_after_a_handoff_the_receiving_agent_answers_the_question() -> None:
    messages = [memories("Protein target is 120 g"), user("ask nutrition how much protein do I need?")]
    messages += tool_turn("handoff_to_nutrition", {"reason": "how much protein do I need?"}, {"ok": True})
    assert rules.plan_reply(messages, ALL_TOOLS, NOW) == rules.TextReply(
        "Here is what I know: Protein target is 120 g"
    )


def test_directives_are_stripped_before_the_rules_run() -> None:
    directives = rules.parse_directives("!slow 250 !fail 503 2 remember I like tea")
    assert directives == rules.Directives(
        fail_status=503, fail_count=2, slow_ms=250.0, text="remember I like tea"
    )
    reply = rules.plan_reply([user("!fail 503 2 remember I like tea")], ALL_TOOLS, NOW, directives=True)
    assert reply == rules.ToolCallReply("remember_memory", {"text": "I like tea", "scope": "user"})
    # Without them enabled, a directive is just words of the message.
    plain = rules.plan_reply([user("!fail 503 2 remember I like tea")], ALL_TOOLS, NOW)
    assert plain == rules.TextReply("I don't know that yet.")


def test_failures_are_injected_per_message_until_the_budget_is_spent() -> None:
    injector = rules.FailureInjector()
    assert [injector.status_for("!fail 503 2 hi") for _ in range(3)] == [503, 503, None]
    assert injector.status_for("!fail 429 1 other") == 429
    assert injector.status_for("!fail 429 1 other") is None
    assert injector.status_for("!fail 200 5 not an error status") is None
    assert injector.status_for("hello") is None


def cosine(a: str, b: str, dimensions: int = 384) -> float:
    return float(embeddings.embed(a, dimensions) @ embeddings.embed(b, dimensions))


def test_embeddings_are_unit_vectors_of_the_requested_dimension() -> None:
    for dimensions in (8, 384, 1536):
        vector = embeddings.embed("My daily calorie goal is 2000 kcal", dimensions)
        assert vector.shape == (dimensions,)
        assert vector.dtype == np.float32
        assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-6)
    assert float(np.linalg.norm(embeddings.embed("!!!", 384))) == pytest.approx(1.0, abs=1e-6)


def test_identical_texts_have_identical_embeddings() -> None:
    first = embeddings.embed("I like green tea", 384)
    assert np.array_equal(first, embeddings.embed("I like green tea", 384))
    assert cosine("I like green tea", "I like green tea") == pytest.approx(1.0, abs=1e-6)


def test_related_texts_are_closer_than_unrelated_ones() -> None:
    statement = "My daily calorie goal is 2000 kcal"
    related = cosine(statement, "What is my daily calorie goal?")
    unrelated = cosine(statement, "The invoice for ACME is due on Friday")
    assert related > 0.6
    assert unrelated < 0.3
    assert cosine("I'm allergic to peanuts", "peanut allergy") > cosine(
        "I'm allergic to peanuts", "buy a new bike"
    )


def test_embed_many_stacks_rows_in_order() -> None:
    rows = embeddings.embed_many(["a b", "c d"], 16)
    assert rows.shape == (2, 16)
    assert np.array_equal(rows[1], embeddings.embed("c d", 16))
    assert embeddings.embed_many([], 16).shape == (0, 16)


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("find my documents about the Q3 budget", "the Q3 budget"),
        ("search my files for invoice 2026?", "invoice 2026"),
        ("Look for the spreadsheet named rent", "rent"),
    ],
)
def test_a_request_to_find_files_searches_the_drives(text: str, query: str) -> None:
    reply = rules.plan_reply([user(text)], (*ALL_TOOLS, "file_search"), NOW)
    assert reply == rules.ToolCallReply("file_search", {"query": query})


def test_without_a_topic_or_the_tool_there_is_no_file_search() -> None:
    assert not isinstance(
        rules.plan_reply([user("find my files")], (*ALL_TOOLS, "file_search"), NOW), rules.ToolCallReply
    )
    assert rules.plan_reply([user("find my documents about rent")], ALL_TOOLS, NOW) == rules.TextReply(
        "I don't know that yet."
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            {"files": [{"name": "Q3 plan"}, {"name": "budget.csv"}], "drives": ["google"]},
            "I found 2 files: Q3 plan, budget.csv.",
        ),
        ({"files": [], "drives": ["google"]}, "I found no matching files."),
        (
            {
                "files": [],
                "drives": [],
                "unavailable": [{"drive": "microsoft", "message": "Connect Microsoft again."}],
            },
            "I found no matching files. Connect Microsoft again.",
        ),
    ],
)
def test_a_file_search_is_summarised_with_the_names(result: Any, expected: str) -> None:
    messages = [
        user("find my documents about budget"),
        *tool_turn("file_search", {"query": "budget"}, result),
    ]
    assert rules.plan_reply(messages, (*ALL_TOOLS, "file_search"), NOW) == rules.TextReply(expected)


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("how many steps did I walk today?", {"metric": "steps", "range": "today"}),
        ("How did I sleep last night?", {"metric": "sleep_minutes", "range": "today"}),
        ("what was my resting heart rate this month", {"metric": "resting_heart_rate", "range": "30d"}),
        ("show my heart rate", {"metric": "heart_rate", "range": "7d"}),
        ("how many calories did I burn yesterday?", {"metric": "active_energy_kcal", "range": "yesterday"}),
        ("what did I weigh over the last quarter?", {"metric": "weight_kg", "range": "90d"}),
        ("did I exercise this week?", {"metric": "workout_minutes", "range": "7d"}),
    ],
)
def test_questions_about_health_data_ask_wearable_stats(text: str, arguments: dict[str, str]) -> None:
    reply = rules.plan_reply([user(text)], (*ALL_TOOLS, "wearable_stats"), NOW)
    assert reply == rules.ToolCallReply("wearable_stats", arguments)


def test_health_words_about_the_calendar_or_a_memory_are_not_health_questions() -> None:
    tools = (*ALL_TOOLS, "wearable_stats")
    assert rules.plan_reply([user("when am I free for a workout?")], tools, NOW).name == "calendar_freebusy"  # type: ignore[union-attr]
    assert rules.plan_reply([user("remember I sleep badly")], tools, NOW).name == "remember_memory"  # type: ignore[union-attr]
    assert rules.plan_reply([user("how many steps today?")], ALL_TOOLS, NOW) == rules.TextReply(
        "I don't know that yet."
    )


@pytest.mark.parametrize(
    ("arguments", "result", "expected"),
    [
        (
            {"metric": "steps", "range": "today"},
            {
                "metric": "steps",
                "range": "today",
                "unit": "count",
                "days": [{"date": "2025-03-01", "value": 8412}],
            },
            "Your steps today: 8,412 steps.",
        ),
        (
            {"metric": "steps", "range": "7d"},
            {
                "metric": "steps",
                "range": "7d",
                "unit": "count",
                "days": [{"date": "2025-02-27", "value": 4000}, {"date": "2025-03-01", "value": 12000}],
                "total": 16000,
                "average_per_day": 8000,
                "lowest": 4000,
                "highest": 12000,
            },
            "Your steps over the last 7 days: 16,000 steps in total, 8,000 steps a day on average "
            "(lowest 4,000 steps, highest 12,000 steps).",
        ),
        (
            {"metric": "sleep_minutes", "range": "today"},
            {
                "metric": "sleep_minutes",
                "range": "today",
                "unit": "min",
                "days": [{"date": "2025-03-01", "value": 390}],
            },
            "Your sleep today: 6 h 30 min.",
        ),
        (
            {"metric": "heart_rate", "range": "30d"},
            {
                "metric": "heart_rate",
                "range": "30d",
                "unit": "bpm",
                "days": [{"date": "2025-02-27", "value": 70}, {"date": "2025-03-01", "value": 74.5}],
                "average_per_day": 72.3,
                "lowest": 52,
                "highest": 150,
            },
            "Your heart rate over the last 30 days: 72.3 bpm on average (lowest 52 bpm, highest 150 bpm).",
        ),
        (
            {"metric": "weight_kg", "range": "7d"},
            {
                "metric": "weight_kg",
                "range": "7d",
                "unit": "kg",
                "days": [],
                "note": "No health data is connected.",
            },
            "I found no weight data over the last 7 days. No health data is connected.",
        ),
    ],
)
def test_health_data_is_summarised_in_a_sentence(
    arguments: dict[str, str], result: Any, expected: str
) -> None:
    messages = [user("how many steps?"), *tool_turn("wearable_stats", arguments, result)]
    assert rules.plan_reply(messages, (*ALL_TOOLS, "wearable_stats"), NOW) == rules.TextReply(expected)


RECALL_TOOLS = (*ALL_TOOLS, "recall_conversations")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "What did I tell the nutrition coach last week about dinner?",
            {"query": "dinner", "agent": "nutrition", "since": "2025-02-22", "until": "2025-03-01"},
        ),
        (
            "what did we talk about yesterday regarding sleep",
            {"query": "regarding sleep", "since": "2025-02-28", "until": "2025-02-28"},
        ),
        ("Remind me what I said about my marathon plan", {"query": "my marathon plan"}),
        (
            "what did I ask the focus coach today?",
            {
                "query": "what did I ask the focus coach",
                "agent": "focus",
                "since": "2025-03-01",
                "until": "2025-03-01",
            },
        ),
    ],
)
def test_questions_about_past_conversations_call_recall_conversations(
    text: str, expected: dict[str, Any]
) -> None:
    reply = rules.plan_reply([user(text)], RECALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply("recall_conversations", expected)


def test_past_conversations_are_not_searched_unless_offered() -> None:
    reply = rules.plan_reply([user("What did I tell the nutrition coach about dinner?")], ALL_TOOLS, NOW)
    assert reply == rules.TextReply(rules.UNKNOWN_ANSWER)


def test_the_answer_quotes_the_past_messages_found() -> None:
    found = {
        "messages": [
            {
                "role": "user",
                "agent": "nutrition",
                "at": "2025-02-25T19:00:00Z",
                "text": "I cook lentil soup",
            },
            {"role": "assistant", "agent": "nutrition", "at": "2025-02-25T19:00:05Z", "text": "Good choice."},
        ]
    }
    messages = [
        user("what did I tell the nutrition coach about dinner?"),
        *tool_turn("recall_conversations", {"query": "dinner"}, found),
    ]
    assert rules.plan_reply(messages, RECALL_TOOLS, NOW) == rules.TextReply(
        "From our past conversations: on 2025-02-25 you told nutrition: \u201cI cook lentil soup\u201d; "
        "on 2025-02-25 nutrition said: \u201cGood choice.\u201d."
    )
    nothing = [
        user("what did I say about cake?"),
        *tool_turn("recall_conversations", {"query": "cake"}, {"messages": []}),
    ]
    assert rules.plan_reply(nothing, RECALL_TOOLS, NOW) == rules.TextReply(
        "I couldn't find that in our past conversations."
    )


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("Which instrument do I play?", "instrument play"),
        ("When did I adopt my greyhound?", "adopt greyhound"),
        ("Where does my partner work?", "partner work"),
    ],
)
def test_a_question_about_the_person_no_memory_answers_searches_past_conversations(
    text: str, query: str
) -> None:
    reply = rules.plan_reply([memories(), user(text)], RECALL_TOOLS, NOW)
    assert reply == rules.ToolCallReply("recall_conversations", {"query": query})


@pytest.mark.parametrize(
    "text",
    [
        "What do you know about me?",  # about memory itself: nothing to search for
        "How are you?",  # not about the person
        "I play the bassoon.",  # not a question
    ],
)
def test_other_messages_without_memories_do_not_search(text: str) -> None:
    reply = rules.plan_reply([memories(), user(text)], RECALL_TOOLS, NOW)
    assert isinstance(reply, rules.TextReply)


def test_a_question_a_memory_answers_is_answered_from_it() -> None:
    messages = [memories("The user plays the bassoon."), user("Which instrument do I play?")]
    assert rules.plan_reply(messages, RECALL_TOOLS, NOW) == rules.TextReply(
        "Here is what I know: The user plays the bassoon."
    )


def test_a_question_no_memory_answered_is_answered_only_by_what_the_person_stated() -> None:
    found = {
        "messages": [
            {
                "role": "user",
                "agent": "athena",
                "at": "2025-02-27T08:00:00Z",
                "text": "Which instrument do I play?",
            },
            {
                "role": "assistant",
                "agent": "focus",
                "at": "2025-02-26T08:00:00Z",
                "text": "Practise the bassoon",
            },
            {
                "role": "user",
                "agent": "focus",
                "at": "2025-02-25T08:00:00Z",
                "text": "I practise the bassoon daily",
            },
        ]
    }
    question = user("Which instrument do I play?")
    messages = [memories(), question, *tool_turn("recall_conversations", {"query": "instrument play"}, found)]
    assert rules.plan_reply(messages, RECALL_TOOLS, NOW) == rules.TextReply(
        "From our past conversations: on 2025-02-25 you told focus: “I practise the bassoon daily”."
    )
    nothing = {"messages": found["messages"][:2]}
    messages = [
        memories(),
        question,
        *tool_turn("recall_conversations", {"query": "instrument play"}, nothing),
    ]
    assert rules.plan_reply(messages, RECALL_TOOLS, NOW) == rules.TextReply(rules.UNKNOWN_ANSWER)
