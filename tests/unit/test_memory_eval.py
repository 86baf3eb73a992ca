"""`make eval-memory`'s pure parts: the synthetic generator, the LongMemEval and LoCoMo readers, the scorer
and the report (bench/memory_eval). The run against a mesh is tests/e2e/test_memory_eval_e2e.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.memory_eval import dataset as data
from bench.memory_eval.generator import AGENTS, CHATTER, generate
from bench.memory_eval.harness import Asked, Lived, Settings, markdown, report, summarize
from bench.memory_eval.scoring import abstains, contains, judge_label, judge_prompt, score, words
from offline_model.rules import UNKNOWN_ANSWER, TextReply, plan_reply

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "memory_eval"
EVERY_TOOL = (
    "remember_memory",
    "forget_memory",
    "calendar_freebusy",
    "calendar_events",
    "file_search",
    "wearable_stats",
    *(f"handoff_to_{agent}" for agent in AGENTS),
)


# -- the generator --------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_set_and_another_seed_another() -> None:
    first = [data.longmemeval_entry(i) for i in generate(7, 3).instances]
    again = [data.longmemeval_entry(i) for i in generate(7, 3).instances]
    other = [data.longmemeval_entry(i) for i in generate(8, 3).instances]
    assert json.dumps(first) == json.dumps(again)
    assert json.dumps(first) != json.dumps(other)


def test_categories_are_balanced_and_ids_unique() -> None:
    synthetic = generate(17, 5)
    questions = [q for i in synthetic.instances for q in i.questions]
    assert Counter(q.category for q in questions) == {c: 5 for c in data.CATEGORIES}
    assert len({q.id for q in questions}) == len(questions)
    assert all(len(i.questions) == 1 for i in synthetic.instances)
    # Abstention questions carry LongMemEval's marker.
    assert all(q.id.endswith("_abs") == (q.category == data.ABSTENTION) for q in questions)


@pytest.mark.parametrize("seed", [1, 17, 2026])
def test_every_gold_answer_is_said_in_an_evidence_session_and_abstention_answers_never(seed: int) -> None:
    for instance in generate(seed, 6).instances:
        (question,) = instance.questions
        sessions = {s.id: s for s in instance.sessions}
        said = " ".join(t for s in instance.sessions for t in s.user_turns)
        if question.abstention:
            assert question.answer_session_ids == ()
            continue
        evidence = " ".join(t.content for sid in question.answer_session_ids for t in sessions[sid].turns)
        for part in question.gold_parts:
            assert contains(evidence, part), (question.id, part)
        assert all(any(t.has_answer for t in sessions[sid].turns) for sid in question.answer_session_ids)
        # The value of another time was said too: a knowledge update's older value in an earlier session
        # than the current one; for "what was it before?", the current value after the gold one.
        for other in question.stale_answers:
            assert contains(said, other)
            assert not contains(other, question.answer)
            said_in = [i for i, s in enumerate(instance.sessions) if contains(" ".join(s.user_turns), other)]
            gold_in = [
                i
                for i, s in enumerate(instance.sessions)
                if contains(" ".join(s.user_turns), question.answer)
            ]
            if question.category == data.KNOWLEDGE_UPDATE:
                assert min(said_in) < min(gold_in)
            else:
                assert question.category == data.TEMPORAL
                assert min(gold_in) < min(said_in)


def test_facts_are_said_in_passing_with_distractors_and_no_turn_asks_for_a_tool() -> None:
    for instance in generate(17, 6).instances:
        assert len(instance.sessions) >= 3  # evidence and at least two distractor sessions
        assert {s.agent_id for s in instance.sessions} <= set(AGENTS)
        chatter = {text for texts in CHATTER.values() for text in texts}
        for session in instance.sessions:
            for text in session.user_turns:
                assert not text.lower().startswith(("remember", "note", "forget", "ask "))
                # Answered from memory by the offline model, whatever tools the agent offers.
                reply = plan_reply([{"role": "user", "content": text}], EVERY_TOOL)
                assert isinstance(reply, TextReply), text
            assert any(text in chatter for text in session.user_turns)
        for question in instance.questions:
            assert isinstance(
                plan_reply([{"role": "user", "content": question.question}], EVERY_TOOL), TextReply
            )


def test_the_synthetic_set_round_trips_through_longmemeval_json(tmp_path: Path) -> None:
    synthetic = generate(17, 2)
    path = tmp_path / "synthetic.json"
    data.write_longmemeval(synthetic.instances, path)
    entries = json.loads(path.read_text())
    for entry in entries:  # LongMemEval's fields, as its own files have them
        assert {
            "question_id",
            "question_type",
            "question",
            "answer",
            "question_date",
            "haystack_dates",
            "haystack_session_ids",
            "haystack_sessions",
            "answer_session_ids",
        } <= set(entry)
        assert entry["question_type"] in {
            "single-session-user",
            "multi-session",
            "knowledge-update",
            "temporal-reasoning",
        }
    read = data.read(path)
    assert read.name == "LongMemEval"
    assert read.instances == synthetic.instances


# -- the readers ----------------------------------------------------------------------------------------


def test_longmemeval_file_is_read_with_its_categories_and_user_turns() -> None:
    read = data.read(FIXTURES / "longmemeval_sample.json")
    assert read.name == "LongMemEval"
    assert [i.questions[0].category for i in read.instances] == [
        data.INFORMATION_EXTRACTION,
        data.ABSTENTION,  # "_abs" wins over its question_type
        data.KNOWLEDGE_UPDATE,
    ]
    first = read.instances[0]
    assert [s.id for s in first.sessions] == ["sharegpt_1", "answer_4be1b6b4_1"]
    assert first.sessions[0].date == "2023/05/20 (Sat) 02:21"
    assert first.sessions[1].user_turns == (
        "I graduated with a degree in Business Administration, and I'm thinking about an MBA.",
        "Which schools are good for part-time study?",
    )
    assert first.sessions[1].turns[0].has_answer
    assert first.questions[0].answer == "Business Administration"
    assert first.questions[0].agent_id == "athena"
    assert read.limited(2).instances == read.instances[:2]


def test_locomo_file_is_read_as_one_instance_per_conversation() -> None:
    read = data.read(FIXTURES / "locomo_sample.json")
    assert read.name == "LoCoMo"
    (instance,) = read.instances
    # Sessions in numeric order (10 after 2), each turn the user's, with its speaker.
    assert [s.id for s in instance.sessions] == [
        "conv-26-session_1",
        "conv-26-session_2",
        "conv-26-session_10",
    ]
    assert instance.sessions[0].date == "1:56 pm on 8 May, 2023"
    assert (
        instance.sessions[0].user_turns[0] == "Caroline: Hey Mel! I went to an LGBTQ support group yesterday."
    )
    by_type = {q.question_type: q for q in instance.questions}
    assert by_type["temporal"].answer == "2022"
    assert by_type["temporal"].category == data.TEMPORAL
    assert by_type["single-hop"].category == data.INFORMATION_EXTRACTION
    assert by_type["open-domain"].answer == "Sweden"  # the first of ";"-separated answers, as LoCoMo scores
    assert by_type["open-domain"].answer_session_ids == ("conv-26-session_10",)
    assert by_type["multi-hop"].category == data.MULTI_SESSION
    assert by_type["adversarial"].abstention
    assert by_type["adversarial"].answer == data.LOCOMO_ADVERSARIAL_ANSWER


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "expected a JSON list"),
        ("[]", "non-empty JSON list"),
        ('[{"id": 1}]', "neither LongMemEval"),
        ("not json", "not JSON"),
        (
            '[{"question_id": "q", "haystack_sessions": [[]], "question": "?", "answer": "a"}]',
            "question_type",
        ),
    ],
)
def test_other_files_are_refused_saying_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(data.DatasetError, match=message):
        data.read(path)


# -- the scorer -----------------------------------------------------------------------------------------


def test_words_normalize_case_accents_punctuation_thousands_and_articles() -> None:
    assert words("The Copper-Kettle, 1,800 kcal! Valparaíso") == [
        "copper",
        "kettle",
        "1800",
        "kcal",
        "valparaiso",
    ]


def test_containment_is_of_whole_words_in_order() -> None:
    assert contains("Here is what I know: my daily calorie target is now 1,800.", "1,800")
    assert contains("Here is what I know: my target is 1800", "1,800")
    assert not contains("my target is 11,800", "1,800")
    assert contains("we shop at the Blue Heron Books", "Blue Heron Books")
    assert not contains("Heron Blue Books", "Blue Heron Books")
    assert not contains("anything", "")


def test_abstention_is_recognized_in_the_offline_answer_and_in_common_wordings() -> None:
    assert abstains(UNKNOWN_ANSWER)
    for said in ("I do not know.", "That was not mentioned.", "You never mentioned a cat.", "I'm not sure."):
        assert abstains(said)
    assert not abstains("Here is what I know: our beagle is called Biscuit")


def test_score_by_category() -> None:
    synthetic = generate(17, 4)
    by_category = {}
    for instance in synthetic.instances:
        by_category.setdefault(instance.questions[0].category, instance.questions[0])
    extraction = by_category[data.INFORMATION_EXTRACTION]
    assert score(extraction, f"Here is what I know: {extraction.answer}").correct
    assert not score(extraction, UNKNOWN_ANSWER).correct
    # Multi-session: every part must be there.
    multi = by_category[data.MULTI_SESSION]
    first, second = multi.answer_parts
    assert score(multi, f"Here is what I know: {first}; {second}").correct
    assert not score(multi, f"Here is what I know: {first}").correct
    # Knowledge update: the latest value; the old one beside it is right but stale.
    update = by_category[data.KNOWLEDGE_UPDATE]
    (old,) = update.stale_answers
    fresh = score(update, f"Here is what I know: it is {update.answer}")
    assert fresh.correct
    assert not fresh.stale
    both = score(update, f"Here is what I know: it was {old}; it is {update.answer}")
    assert both.correct
    assert both.stale
    assert not score(update, f"Here is what I know: it is {old}").correct
    # Abstention: right only when it says it does not know.
    abstention = by_category[data.ABSTENTION]
    assert score(abstention, UNKNOWN_ANSWER).correct
    assert not score(abstention, "Here is what I know: our beagle is called Biscuit").correct


def test_judge_prompt_follows_longmemeval_criteria_per_type() -> None:
    read = data.read(FIXTURES / "longmemeval_sample.json")
    plain, unanswerable, update = (i.questions[0] for i in read.instances)
    prompt = judge_prompt(plain, "You studied Business Administration.")
    assert "Question: What degree did I graduate with?" in prompt
    assert "Answer: Business Administration" in prompt
    assert prompt.endswith("Answer yes or no only.")
    assert "unanswerable" in judge_prompt(unanswerable, "I don't know")
    assert "Explanation:" in judge_prompt(unanswerable, "I don't know")
    assert "earlier information together with the updated answer" in judge_prompt(update, "25:50")
    assert judge_label("Yes.")
    assert not judge_label("no")


# -- the report -----------------------------------------------------------------------------------------


def test_report_has_every_category_with_accuracy_latency_and_tokens() -> None:
    synthetic = generate(17, 1)
    lived = []
    for index, instance in enumerate(synthetic.instances):
        (question,) = instance.questions
        asked = Asked(
            question.id,
            question.category,
            question.question_type,
            question.agent_id,
            question.question,
            question.answer,
            answer=UNKNOWN_ANSWER,
            recalled=index,
            memory_tokens=3 * index,
            prompt_tokens=40 + index,
            recall_ms=10.0 + index,
            first_delta_ms=12.0 + index,
            completion_ms=20.0 + index,
        )
        asked.correct = score(question, asked.answer).correct
        lived.append(Lived(instance.id, turns=3, asked=[asked]))
    result = report(Settings(instances=1), synthetic, lived, 0.0, 12.3, 4.5)
    assert list(result["categories"]) == list(data.CATEGORIES)
    assert result["categories"][data.ABSTENTION]["accuracy"] == 1.0
    assert result["total"]["questions"] == 5
    assert result["total"]["accuracy"] == 0.2
    assert result["total"]["recall_ms"] == {"p50": 12.0, "p95": 14.0}
    assert result["total"]["memory_tokens"] == {"mean": 6.0, "p95": 12.0}
    assert result["replay"]["turns"] == 15
    text = markdown(result)
    assert "| abstention | 1 | 100% (1) |" in text
    assert "python -m bench.memory_eval --seed 17 --instances 1" in text
    assert summarize([])["accuracy"] == 0.0


def test_the_explicit_control_says_only_the_evidence_with_remember() -> None:
    synthetic = generate(17, 2)
    told = synthetic.told_explicitly()
    assert told.notes
    for before, after in zip(synthetic.instances, told.instances, strict=True):
        assert before.questions == after.questions
        for plain, explicit in zip(before.sessions, after.sessions, strict=True):
            for turn, said in zip(plain.turns, explicit.turns, strict=True):
                assert said.content == (f"remember {turn.content}" if turn.has_answer else turn.content)
    assert Settings(explicit=True).command().endswith("--explicit")
