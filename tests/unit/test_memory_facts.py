"""memory.facts: the extraction answer's strict check and reconciliation (mem0's add/update/delete/noop
with Graphiti's validity: superseded, never silently deleted), and the offline model's extraction rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from memory.domain import MemoryRecord, Scope, Source
from memory.facts import (
    RESPONSE_SCHEMA,
    Action,
    FactCandidate,
    FactPolicy,
    MalformedExtraction,
    decide,
    parse_extraction,
    response_format,
)
from offline_model import rules

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def fact(text: str = "The user is vegetarian.", **changes: object) -> dict[str, object]:
    return {"text": text, "key": "diet", "scope": "user", "confidence": 0.9, "ended": False, **changes}


def answer(*facts: dict[str, object]) -> str:
    return json.dumps({"facts": list(facts)})


def test_a_valid_answer_is_parsed_and_normalised() -> None:
    (candidate,) = parse_extraction(answer(fact("  The user is\nvegetarian. ", key="Diet ")))
    assert candidate == FactCandidate("The user is vegetarian.", "diet", Scope.USER, 0.9, False)
    assert parse_extraction('{"facts": []}') == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "empty"),
        ("I think the user is vegetarian", "not JSON"),
        ('{"facts": {}}', "exactly"),
        ('{"facts": [], "notes": "x"}', "exactly"),
        (answer({"text": "x", "key": "diet"}), "facts[0] must have exactly"),
        (answer(fact(extra=1)), "facts[0] must have exactly"),
        (answer(fact("")), "facts[0].text"),
        (answer(fact("x" * 501)), "facts[0].text"),
        (answer(fact("bell\x07")), "facts[0].text"),
        (answer(fact(key="two words")), "facts[0].key"),
        (answer(fact(key="")), "facts[0].key"),
        (answer(fact(scope="global")), "facts[0].scope"),
        (answer(fact(confidence=1.5)), "facts[0].confidence"),
        (answer(fact(confidence=True)), "facts[0].confidence"),
        (answer(fact(confidence="0.9")), "facts[0].confidence"),
        (answer(fact(ended="no")), "facts[0].ended"),
        (answer(*[fact()] * 11), "more than 10"),
    ],
)
def test_anything_else_is_malformed(content: str | None, problem: str) -> None:
    with pytest.raises(MalformedExtraction, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_extraction(content)


def test_the_request_asks_for_strict_structured_output() -> None:
    schema = response_format()["json_schema"]
    assert schema["strict"] is True
    assert schema["schema"] is RESPONSE_SCHEMA
    item = RESPONSE_SCHEMA["properties"]["facts"]["items"]
    assert set(item["required"]) == set(item["properties"])
    assert item["additionalProperties"] is False


def version(
    text: str, *, since: datetime, source: Source = Source.INFERRED, memory_id: str = "m1"
) -> MemoryRecord:
    return MemoryRecord(
        id=memory_id,
        text=text,
        scope=Scope.USER,
        agent_id="nutrition",
        key="caloric_goal",
        created_at=since,
        updated_at=since,
        source=source,
        valid_from=since,
    )


GOAL_1800 = FactCandidate("The user's caloric goal is 1,800 kcal.", "caloric_goal", Scope.USER, 0.9)


def reconcile(
    candidate: FactCandidate = GOAL_1800,
    current: MemoryRecord | None = None,
    *,
    stated_at: datetime = T0,
    duplicate: bool = False,
    forgotten_at: datetime | None = None,
) -> tuple[Action, str]:
    decision = decide(
        candidate,
        stated_at=stated_at,
        current=current,
        similarity=0.95 if duplicate else 0.5,
        forgotten_at=forgotten_at,
        policy=FactPolicy(min_confidence=0.6, duplicate_similarity=0.92),
    )
    closing = decision.action in (Action.UPDATE, Action.INVALIDATE)
    assert decision.closes is (current if closing else None)
    return decision.action, decision.reason


def test_a_new_fact_is_added_and_a_duplicate_is_not() -> None:
    assert reconcile()[0] is Action.ADD
    assert reconcile(duplicate=True) == (Action.NOOP, "a near-duplicate is remembered")


def test_a_newer_value_supersedes_the_current_one() -> None:
    old = version("The user's caloric goal is 2,000 kcal.", since=T0 - timedelta(days=30))
    assert reconcile(current=old)[0] is Action.UPDATE
    same = version("the user's caloric goal is 1,800 kcal", since=T0 - timedelta(days=1))
    assert reconcile(current=same) == (Action.NOOP, "already remembered")


def test_ended_invalidates_the_current_version_only() -> None:
    ended = FactCandidate("The user is no longer vegetarian.", "diet", Scope.USER, 0.9, ended=True)
    assert reconcile(ended)[0] is Action.NOOP
    current = version("The user is vegetarian.", since=T0 - timedelta(days=3))
    assert reconcile(ended, current)[0] is Action.INVALIDATE


def test_an_explicit_memory_stored_after_the_statement_wins() -> None:
    explicit = version(
        "The user's caloric goal is 2,200 kcal.", since=T0 + timedelta(minutes=1), source=Source.EXPLICIT
    )
    assert reconcile(current=explicit) == (Action.NOOP, "an explicit memory was stored after the statement")
    # ...but a statement made after an explicit memory is the newer word and updates it.
    earlier = version(
        "The user's caloric goal is 2,200 kcal.", since=T0 - timedelta(days=1), source=Source.EXPLICIT
    )
    assert reconcile(current=earlier)[0] is Action.UPDATE


def test_a_late_job_does_not_override_a_newer_inferred_version() -> None:
    newer = version("The user's caloric goal is 1,700 kcal.", since=T0 + timedelta(hours=1))
    assert reconcile(current=newer) == (Action.NOOP, "a newer version was stored after the statement")


def test_a_forgotten_fact_is_not_inferred_again_from_an_older_message() -> None:
    assert reconcile(forgotten_at=T0 + timedelta(seconds=1))[0] is Action.NOOP
    assert reconcile(forgotten_at=T0 - timedelta(days=1))[0] is Action.ADD  # said again since


def test_unsure_facts_are_not_remembered() -> None:
    unsure = FactCandidate("The user might be vegan.", "diet", Scope.USER, 0.3)
    assert reconcile(unsure)[0] is Action.NOOP


# -- the offline model's rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "key", "text", "ended"),
    [
        ("Any dinner ideas? I'm vegetarian, by the way.", "diet", "The user is vegetarian.", False),
        ("I am a vegan", "diet", "The user is vegan.", False),
        ("I'm not vegetarian anymore", "diet", "The user is no longer vegetarian.", True),
        ("I am allergic to peanuts.", "allergy_peanuts", "The user is allergic to peanuts.", False),
        ("my goal is now 1,800 kcal", "caloric_goal", "The user's caloric goal is 1,800 kcal.", False),
        (
            "My daily calorie goal is 2000 calories",
            "caloric_goal",
            "The user's caloric goal is 2000 kcal.",
            False,
        ),
        ("I live in Lisbon, near the river", "home_city", "The user lives in Lisbon.", False),
        ("call me Sam please", "preferred_name", "The user wants to be called Sam.", False),
    ],
)
def test_the_offline_model_extracts_by_rule(message: str, key: str, text: str, ended: bool) -> None:
    (found,) = rules.extract_facts(message)
    assert found == {"text": text, "key": key, "scope": "user", "confidence": 0.9, "ended": ended}
    # ...and its answer passes the memory service's strict check.
    reply = rules.facts_reply([{"role": "user", "content": message}])
    assert parse_extraction(reply.text)[0].key == key


@pytest.mark.parametrize("message", ["what should I eat tonight?", "remember I am vegan", "forget my goal"])
def test_the_offline_model_finds_nothing_else(message: str) -> None:
    assert rules.extract_facts(message) == []


def test_the_offline_model_answers_the_schema_it_is_asked_for() -> None:
    assert rules.response_schema_name(response_format()) == rules.FACTS_SCHEMA
    assert rules.response_schema_name({"type": "json_object"}) is None
