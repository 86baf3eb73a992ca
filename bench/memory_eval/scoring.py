"""Whether an answer is right: offline by normalized containment, or by an LLM judge with a real model.

**Offline** (the default; the offline model answers "Here is what I know: <memories>" or "I don't know that
yet."): an answer is right when, normalized (case, accents, punctuation, thousands separators and the
articles a/an/the dropped, as LoCoMo's evaluation normalizes), it contains every part of the gold answer as
a run of whole words (`answer_parts`, else the answer whole). An abstention question is right when the
answer says it does not know (`abstains`) — and only then; any other question answered with "I don't know"
is wrong. An answer that also names the value the fact had at another time (`stale_answers`: for knowledge
updates the superseded value, for "what was it before?" the current one) is reported as *stale*: still
counted right, as LongMemEval's judge counts "previous information along with the updated answer", but
counted separately, because with an echoing model it means the old fact was recalled beside the new one.
Containment is lenient with a model that reads back every memory it is given: an answer listing all of a
person's memories contains every gold answer. The context tokens per question (harness) show that cost.

**LLM judge** (`--judge`, with OPENAI_API_KEY): LongMemEval's procedure — one yes/no question per answer to
the judge model at temperature 0, with the criteria of its `evaluate_qa.py` per question type (contains the
correct answer or all intermediate steps, a subset is not enough; temporal: off-by-one day counts are
tolerated; knowledge update: earlier information beside the updated answer is fine; preference: the rubric
is satisfied; abstention: the question is identified as unanswerable).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bench.memory_eval.dataset import Question

_ARTICLES = frozenset({"a", "an", "the"})
_THOUSANDS = re.compile(r"(?<=\d)[,\u202f\u00a0](?=\d{3}\b)")
_WORD = re.compile(r"[0-9a-z]+")
_ABSTAINS = re.compile(
    r"\b(?:i\s+)?(?:don['’]?t|do\s+not|did\s+not|didn['’]?t)\s+(?:know|have\s+(?:any|that|this)|recall)\b"
    r"|\bnot\s+sure\b|\bno\s+(?:information|record|memory|memories|idea)\b|\bnot\s+mentioned\b"
    r"|\bnever\s+(?:mentioned|said|told)\b|\bhaven['’]?t\s+(?:mentioned|said|told)\b"
    r"|\b(?:can['’]?t|cannot|couldn['’]?t)\s+(?:find|tell|recall|say)\b|\bunanswerable\b"
    r"|\bnot\s+(?:known|available)\b",
    re.IGNORECASE,
)


def words(text: str) -> list[str]:
    """`"The Copper-Kettle, 1,800 kcal!"` → `["copper", "kettle", "1800", "kcal"]`."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _THOUSANDS.sub("", text)
    return [word for word in _WORD.findall(text) if word not in _ARTICLES]


def contains(answer: str, gold: str) -> bool:
    """`gold`'s normalized words appear in `answer`'s as one contiguous run (False for an empty gold)."""
    needle, haystack = words(gold), words(answer)
    if not needle:
        return False
    size = len(needle)
    return any(haystack[i : i + size] == needle for i in range(len(haystack) - size + 1))


def abstains(answer: str) -> bool:
    """The answer says it does not know (the offline model's "I don't know that yet.", "not mentioned"...)."""
    return bool(_ABSTAINS.search(answer))


@dataclass(frozen=True)
class Verdict:
    correct: bool
    stale: bool = False
    """The answer names a value the fact had at another time (beside or instead of the one asked for)."""
    abstained: bool = False


def score(question: Question, answer: str) -> Verdict:
    """The offline verdict on `answer` (see the module's docstring)."""
    said_unknown = abstains(answer)
    if question.abstention:
        return Verdict(correct=said_unknown, abstained=said_unknown)
    stale = any(contains(answer, old) for old in question.stale_answers)
    correct = all(contains(answer, part) for part in question.gold_parts)
    return Verdict(correct=correct, stale=stale, abstained=said_unknown)


# -- the LLM judge (LongMemEval's criteria) --------------------------------------------------------------

_INTRO = "You will see a question, {what}, and a model's response."
_CONTAINS = (
    " Reply yes when the response contains the correct answer, or is equivalent to it, or gives every "
    "intermediate step that leads to it; reply no when it gives only part of what the answer needs, or "
    "something else."
)
_CRITERIA = {
    "temporal-reasoning": _CONTAINS
    + " Do not penalize a count of days, weeks or months that is off by one (19 days for 18 is correct).",
    "knowledge-update": _CONTAINS
    + " A response that gives earlier information together with the updated answer is correct as long as "
    "the updated answer is the one it gives as current.",
    "single-session-preference": (
        " Reply yes when the response satisfies the rubric: it need not cover every point, only recall and "
        "use the user's personal information correctly."
    ),
}
_ABSTENTION = (
    " The question cannot be answered from what the user said. Reply yes when the response recognizes "
    "that (it may say the information is missing or incomplete, or that something else was said but not "
    "the thing asked), no otherwise."
)


def judge_prompt(question: Question, response: str) -> str:
    """The judge's one user message for `response` (LongMemEval's criteria, by question type)."""
    if question.abstention:
        what, criteria, label = "an explanation of why it is unanswerable", _ABSTENTION, "Explanation"
    elif question.question_type == "single-session-preference":
        what, criteria, label = (
            "a rubric of the desired personalized response",
            _CRITERIA[question.question_type],
            "Rubric",
        )
    else:
        what, criteria, label = (
            "its correct answer",
            _CRITERIA.get(question.question_type, _CONTAINS),
            "Answer",
        )
    return (
        _INTRO.format(what=what)
        + criteria
        + f"\n\nQuestion: {question.question}\n\n{label}: {question.answer}\n\nModel response: {response}"
        + "\n\nIs the model response correct? Answer yes or no only."
    )


def judge_label(reply: str) -> bool:
    """The judge's yes/no, read as LongMemEval reads it ("yes" anywhere in the reply)."""
    return "yes" in reply.lower()
