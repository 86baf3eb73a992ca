"""`mesh.validation.check` against the probe contract: what each kind of rule refuses, and how the
offending field is named in the INVALID_ARGUMENT message."""

from __future__ import annotations

from typing import Any

import protovalidate
import pytest
from google.protobuf.message import Message
from protobuf import Oneof
from validation_probe import probe_messages

from mesh.errors import InvalidArgument
from mesh.validation import check, field_path, shared_validator

USER = "0b9d7e8e-4c9b-4f6c-9d1e-2f6f8c1a2b3c"
VALID = {"agent_id": "athena", "user_id": USER, "text": "hello", "percent": 5}
AGENT_ID = "must be an agent id: a lowercase letter, then at most 31 lowercase letters, digits, - or _"


def message(type_name: str, **fields: Any) -> Message:
    return probe_messages()[type_name](**fields)


def request(**changes: Any) -> Message:
    return message("CheckRequest", **{**VALID, **changes})


def turn(role: int = 1, tool_calls: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"role": role, "tool_calls": [{"name": name} for name in tool_calls]}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"conversation_id": ""},  # optional UUID: empty means none
        {"conversation_id": USER},
        {"text": "é" * 32_000},  # characters, not bytes
        {"percent": 0},
        {"percent": 100},
        {"turn": turn(tool_calls=("remember", "recall"))},
        {"handoff_to": ["nutrition", "focus"], "labels": {"mood": "calm"}},
        {"from_agent": "focus"},
    ],
)
def test_valid_requests_pass(changes: dict[str, Any]) -> None:
    check(shared_validator(), request(**changes))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        # a predefined rule declared once (athena.probe.v1.agent_id) on three fields
        ({"agent_id": "Athena"}, f"agent_id: {AGENT_ID}"),
        ({"from_agent": "x" * 33}, f"from_agent: {AGENT_ID}"),
        ({"handoff_to": ["focus", "sme!"]}, f"handoff_to[1]: {AGENT_ID}"),
        # a required UUID, an optional one
        ({"user_id": ""}, "user_id: value is required"),
        ({"user_id": "not-a-uuid"}, "user_id: must be a valid UUID"),
        ({"conversation_id": "42"}, "conversation_id: must be a valid UUID"),
        # text: 1 to 32,000 characters, not blank, no NUL
        ({"text": ""}, "text: must be at least 1 characters"),
        ({"text": "x" * 32_001}, "text: must be at most 32000 characters"),
        ({"text": " \t\n"}, "text: must not be blank"),
        ({"text": "a\x00b"}, "text: must not contain NUL characters"),
        # a range
        ({"percent": -1}, "percent: must be greater than or equal to 0 and less than or equal to 100"),
        ({"percent": 101}, "percent: must be greater than or equal to 0 and less than or equal to 100"),
        # an enum that must be set and known, in a nested message
        ({"turn": turn(role=0)}, "turn.role: value is required"),
        ({"turn": turn(role=7)}, "turn.role: value must be one of the defined enum values"),
        # repeated fields and their items, map keys and values
        ({"turn": turn(tool_calls=("a", ""))}, "turn.tool_calls[1].name: must be at least 1 characters"),
        ({"turn": turn(tool_calls=("a",) * 5)}, "turn.tool_calls: must contain no more than 4 item(s)"),
        ({"handoff_to": ["focus", "focus"]}, "handoff_to: repeated value must contain unique items"),
        ({"labels": {"": "x"}}, 'labels[""]: must be at least 1 characters'),
        ({"labels": {"mood": "x" * 65}}, 'labels["mood"]: must be at most 64 characters'),
        # a rule on the request as a whole names the message type
        ({"from_agent": "athena"}, "CheckRequest: from_agent must differ from agent_id"),
    ],
)
def test_a_broken_rule_is_refused_naming_the_field(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check(shared_validator(), request(**changes))
    assert caught.value.message == error
    assert caught.value.field == error.partition(": ")[0]


def test_only_the_first_broken_rule_in_field_order_is_reported() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check(shared_validator(), request(text="", percent=500, agent_id="Bad"))
    assert caught.value.field == "agent_id"


def test_messages_without_rules_pass_whatever_they_hold() -> None:
    check(shared_validator(), message("CheckResponse", text="\x00" * 100_000))


def test_broken_rules_are_bugs_not_violations() -> None:
    with pytest.raises(protovalidate.CompilationError, match=r"MismatchedRequest\.count"):
        check(shared_validator(), message("MismatchedRequest", count=1))
    with pytest.raises(protovalidate.EvaluationError, match="divide by zero"):
        check(shared_validator(), message("RatioRequest", divisor=0))
    check(shared_validator(), message("RatioRequest", divisor=7))


def test_map_keys_of_every_kind_are_written_as_in_the_contract() -> None:
    def path(*subscripts: Oneof[Any, Any] | None) -> str:
        elements = [protovalidate.FieldPathElementPb(field_name="a", subscript=s) for s in subscripts]
        return field_path(protovalidate.FieldPathPb(elements=elements))

    assert path(None) == "a"
    assert path(Oneof("index", 3), None) == "a[3].a"
    assert path(Oneof("bool_key", False)) == "a[false]"
    assert path(Oneof("int_key", -2)) == "a[-2]"
    assert path(Oneof("uint_key", 2)) == "a[2]"
    assert path(Oneof("string_key", 'say "hi"')) == 'a["say \\"hi\\""]'
    assert field_path(None) == ""
