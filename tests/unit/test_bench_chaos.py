"""The pure analysis of bench/chaos.py (no mesh): when turns work again after a fault, and which
acknowledged messages are missing — the numbers `make chaos` reports must mean what they say."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, replace

from bench.chaos import (
    FAULTS,
    Attempt,
    Phase,
    StoredMessage,
    analyse,
    lost_messages,
    markdown,
    recovered_at,
    turn_of,
    turn_text,
)

ORCHESTRATOR = next(fault for fault in FAULTS if fault.name == "orchestrator")


def ok(started: float, ended: float, client: str = "a", turn: str = "a-1", **seen: object) -> Attempt:
    return replace(Attempt(client, "Chat", turn, started, ended=ended, code="OK"), **seen)


def failed(started: float, ended: float, client: str = "a", turn: str = "a-1", **seen: object) -> Attempt:
    attempt = Attempt(client, "Chat", turn, started, ended=ended, code="UNAVAILABLE", message="down")
    return replace(attempt, **seen)


def test_turns_work_again_from_the_first_success_after_the_last_failure() -> None:
    attempts = [
        ok(0.0, 9.0),  # ended before the fault: irrelevant
        failed(9.5, 10.2),  # the stream the fault broke
        failed(10.7, 10.8),
        ok(11.0, 11.2),  # a success between failures is not recovery
        failed(11.3, 11.4),
        ok(11.9, 13.0),
        ok(12.0, 12.1),
    ]
    assert recovered_at(attempts, since=10.0) == 11.9


def test_no_failure_means_no_recovery_needed_and_a_last_failure_means_none_yet() -> None:
    assert recovered_at([ok(9.0, 10.5), ok(10.6, 11.0)], since=10.0) == 10.0
    assert recovered_at([failed(10.0, 10.5), ok(10.6, 11.0), failed(11.1, 11.2)], since=10.0) is None
    # A sign-in succeeding is not a turn succeeding.
    sign_in = Attempt("probe", "DevLogin", "", 10.6, ended=10.7, code="OK")
    assert recovered_at([failed(10.0, 10.5), sign_in], since=10.0) is None


def test_only_acknowledged_messages_missing_or_different_are_lost() -> None:
    stored = {
        "u1": StoredMessage("u1", "user", "hi (a-1)", "complete"),
        "m1": StoredMessage("m1", "assistant", "the answer", "complete"),
        "m2": StoredMessage("m2", "assistant", "the ans", "complete"),
        "m3": StoredMessage("m3", "assistant", "the answer", "failed"),
    }
    attempts = [
        ok(
            0,
            1,
            user_message_id="u1",
            seen_started=0.1,
            answer_id="m1",
            answer="the answer",
            seen_completed=1,
        ),
        ok(
            0,
            1,
            user_message_id="u2",
            seen_started=0.1,
            answer_id="m2",
            answer="the answer",
            seen_completed=1,
        ),
        ok(
            0,
            1,
            user_message_id="u1",
            seen_started=0.1,
            answer_id="m3",
            answer="the answer",
            seen_completed=1,
        ),
        ok(0, 1, user_message_id="u1", seen_started=0.1, answer_id="m4", answer="gone", seen_completed=1),
        # Never acknowledged: neither the message (no ConversationStarted) nor an answer counts.
        failed(0, 1, user_message_id="u9", answer_id="m9"),
    ]
    assert lost_messages(attempts, stored) == {
        "user": {"u2"},
        "answer": {"m4"},
        "answer_different": {"m2", "m3"},
    }


def test_a_phase_reports_what_clients_saw_recovery_loss_and_idempotency() -> None:
    phase = Phase(
        ORCHESTRATOR, began=100.0, ended=200.0, injected=102.0, part_ready=104.0, streams_in_flight=2
    )
    started = {"seen_started": 101.5, "user_message_id": "u1", "assistant_message_id": "m1", "deltas": 7}
    attempts = [
        ok(90.0, 95.0, turn="a-0"),  # the previous phase's
        failed(101.0, 102.0, turn="a-1", **started),
        failed(102.5, 102.6, turn="a-1"),
        ok(103.5, 105.0, turn="a-1", seen_started=103.6, user_message_id="u1", answer_id="m2", answer="x"),
        ok(105.1, 106.0, turn="a-2", seen_started=105.2, user_message_id="u3"),
        failed(102.1, 102.2, client="probe", turn="probe-1", retrying=False),
        ok(103.8, 103.9, client="probe", turn="probe-2", retrying=False),
    ]
    attempts[3].seen_completed = 105.0
    stored = {
        "u1": StoredMessage("u1", "user", turn_text("q", "a-1"), "complete"),
        "m1": StoredMessage("m1", "assistant", "partial", "failed"),
        "m2": StoredMessage("m2", "assistant", "x", "complete"),
    }
    copies = Counter({"a-1": 2})
    events = [(102.1, "orchestrator exited"), (104.0, "orchestrator ready again"), (99.0, "earlier")]
    result = analyse(
        phase, attempts, stored, copies, events, "python -m bench.chaos --faults orchestrator", 5.0
    )

    assert (result.calls, result.failed_calls) == (6, 3)
    assert {(row["stage"], row["count"]) for row in result.client_saw} == {
        ("mid-stream", 1),
        ("before the turn started", 2),
    }
    assert result.recovery_s == 1.5  # the retried turn's attempt at 103.5 worked, and all after it
    assert (result.first_failure_s, result.last_failure_s, result.part_back_s) == (0.0, 0.6, 2.0)
    assert result.streams_interrupted == 1
    assert result.failed_answers_stored == 1
    assert (result.interrupted_answers_stored_complete, result.interrupted_answers_unrecorded) == (0, 0)
    assert result.duplicate_answers == 0
    assert (result.turns_retried, result.turns_given_up, result.turns_completed) == (1, 0, 3)
    # u3 was acknowledged but is not stored; its answer was never acknowledged.
    assert (result.user_messages_lost, result.answers_lost, result.persisted_messages_lost) == (1, 0, 1)
    assert (result.user_messages_acknowledged, result.answers_acknowledged) == (2, 1)
    assert result.duplicate_user_messages == 1
    assert result.supervisor == ["+0.1 s orchestrator exited", "+2.0 s orchestrator ready again"]

    report = {
        "command": "python -m bench.chaos",
        "commit": "abc",
        "date": "today",
        "machine": {},
        "load": "",
        "faults": [asdict(result)],
    }
    text = markdown(report)
    assert "| orchestrator | Chat UNAVAILABLE ×3 (1 mid-stream) | 3/6 | 1.5 | 2.0 | **1** |" in text


def test_a_turn_that_never_completed_is_given_up_and_not_recovered() -> None:
    phase = Phase(ORCHESTRATOR, began=0.0, ended=100.0, injected=1.0)
    attempts = [failed(1.0 + i, 1.5 + i, turn="a-1") for i in range(5)]
    result = analyse(phase, attempts, {}, Counter(), [], "", 5.0)
    assert result.recovery_s is None
    assert result.turns_given_up == 1
    assert "not recovered" in markdown(
        {"command": "", "commit": "", "date": "", "machine": {}, "load": "", "faults": [asdict(result)]}
    )


def test_an_answer_stored_but_never_acknowledged_and_answered_again_is_a_duplicate() -> None:
    phase = Phase(ORCHESTRATOR, began=0.0, ended=100.0, injected=1.0)
    seen = {"seen_started": 0.5, "user_message_id": "u1"}
    attempts = [
        failed(0.0, 1.0, assistant_message_id="m1", deltas=60, **seen),  # stored, then the stream broke
        ok(1.5, 3.0, assistant_message_id="m2", answer_id="m2", answer="x", seen_completed=3.0, **seen),
    ]
    stored = {
        "u1": StoredMessage("u1", "user", "q (a-1)", "complete"),
        "m1": StoredMessage("m1", "assistant", "x", "complete"),
        "m2": StoredMessage("m2", "assistant", "x", "complete"),
    }
    result = analyse(phase, attempts, stored, Counter({"a-1": 1}), [], "", 5.0)
    assert result.persisted_messages_lost == 0
    assert (result.interrupted_answers_stored_complete, result.duplicate_answers) == (1, 1)


def test_turn_ids_round_trip_through_the_message_text() -> None:
    assert turn_of(turn_text("what do you know (really)?", "chaos-0-17")) == "chaos-0-17"
    assert turn_of("remember my goal") is None
