"""The benchmark's instances and the readers of LongMemEval's and LoCoMo's files.

One `Instance` is what one fresh user lives through: its sessions, replayed in order (a new conversation
each, the user's turns only: the assistant's turns are the system's own to give), then its questions, each
asked in a new conversation. LongMemEval has one question per instance; LoCoMo one instance per
conversation with all its questions.

**LongMemEval** (`longmemeval_s.json`, `longmemeval_m.json`, `longmemeval_oracle.json`; Wu et al., ICLR 2025):
a JSON list of objects with `question_id`, `question_type` (`single-session-user`,
`single-session-assistant`, `single-session-preference`, `multi-session`, `knowledge-update`,
`temporal-reasoning`; a `question_id` ending in `_abs` is an abstention question), `question`, `answer`,
`question_date`, `haystack_dates`, `haystack_session_ids`, `haystack_sessions` (lists of
`{role, content, has_answer?}` turns) and `answer_session_ids`. The synthetic set (`generator`) is written in
this shape, with optional fields of its own that the reader also takes: `haystack_agent_ids` (the agent
each session talks to; default athena), `question_agent_id`, `answer_parts` (every part must be in the
answer) and `stale_answers` (values the fact had at another time than the one asked about).

**LoCoMo** (`locomo10.json`; Maharana et al., ACL 2024): a JSON list of objects with `sample_id`,
`conversation` (`speaker_a`, `speaker_b`, `session_<n>` lists of `{speaker, dia_id, text}`,
`session_<n>_date_time`) and `qa` (`question`, `answer`, `evidence` dia ids, `category`: 1 multi-hop,
2 temporal, 3 open-domain, 4 single-hop, 5 adversarial, whose `answer` is absent: the right answer is
that it was not said). Both speakers' turns are replayed as the user's messages, prefixed with the
speaker's name ("Caroline: ...").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_AGENT = "athena"

# The five abilities of LongMemEval, the categories results are reported by.
INFORMATION_EXTRACTION = "information extraction"
MULTI_SESSION = "multi-session reasoning"
KNOWLEDGE_UPDATE = "knowledge updates"
TEMPORAL = "temporal reasoning"
ABSTENTION = "abstention"
OPEN_DOMAIN = "open-domain (LoCoMo)"
"""LoCoMo's category 3 (commonsense / world knowledge), which none of the five abilities covers."""
CATEGORIES = (INFORMATION_EXTRACTION, MULTI_SESSION, KNOWLEDGE_UPDATE, TEMPORAL, ABSTENTION)

_LONGMEMEVAL_TYPES = {
    "single-session-user": INFORMATION_EXTRACTION,
    "single-session-assistant": INFORMATION_EXTRACTION,
    "single-session-preference": INFORMATION_EXTRACTION,
    "multi-session": MULTI_SESSION,
    "knowledge-update": KNOWLEDGE_UPDATE,
    "temporal-reasoning": TEMPORAL,
}
_LOCOMO_CATEGORIES = {
    1: ("multi-hop", MULTI_SESSION),
    2: ("temporal", TEMPORAL),
    3: ("open-domain", OPEN_DOMAIN),
    4: ("single-hop", INFORMATION_EXTRACTION),
    5: ("adversarial", ABSTENTION),
}
LOCOMO_ADVERSARIAL_ANSWER = "Not mentioned in the conversation."


class DatasetError(ValueError):
    """A file that is neither LongMemEval's nor LoCoMo's shape (the message says what is wrong)."""


@dataclass(frozen=True)
class Turn:
    role: str
    """"user" or "assistant" (only user turns are replayed)."""
    content: str
    has_answer: bool = False
    """The turn holds (part of) the evidence."""


@dataclass(frozen=True)
class Session:
    id: str
    date: str
    """When the dataset says it took place, as the dataset writes it (not replayable: see the README)."""
    turns: tuple[Turn, ...]
    agent_id: str = DEFAULT_AGENT

    @property
    def user_turns(self) -> tuple[str, ...]:
        return tuple(t.content for t in self.turns if t.role == "user" and t.content.strip())


@dataclass(frozen=True)
class Question:
    id: str
    question_type: str
    """The dataset's own type (LongMemEval `question_type`, LoCoMo's category name)."""
    category: str
    """One of the five abilities (or LoCoMo's open-domain)."""
    question: str
    answer: str
    question_date: str = ""
    answer_session_ids: tuple[str, ...] = ()
    agent_id: str = DEFAULT_AGENT
    answer_parts: tuple[str, ...] = ()
    """When set, every part must be in the answer (instead of `answer` whole)."""
    stale_answers: tuple[str, ...] = ()
    """Values the fact had at another time than the one asked about (knowledge updates: the older values;
    "what was it before?": the current one). An answer naming one as well is counted right but *stale*."""

    @property
    def abstention(self) -> bool:
        return self.category == ABSTENTION

    @property
    def gold_parts(self) -> tuple[str, ...]:
        return self.answer_parts or (self.answer,)


@dataclass(frozen=True)
class Instance:
    id: str
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Dataset:
    name: str
    """"synthetic", "LongMemEval" or "LoCoMo"."""
    instances: tuple[Instance, ...]
    source: str = ""
    """The file read, or the generator's parameters."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def limited(self, limit: int | None) -> Dataset:
        """The first `limit` instances (all with None or 0)."""
        if not limit:
            return self
        return Dataset(self.name, self.instances[:limit], self.source, self.notes)

    def told_explicitly(self) -> Dataset:
        """The control: every evidence turn (`has_answer`) said as `remember <turn>`, the explicit memory
        that worked before issue 17. Files without `has_answer` marks (LoCoMo) are unchanged."""
        return Dataset(
            self.name,
            tuple(
                replace(
                    instance,
                    sessions=tuple(
                        replace(
                            session,
                            turns=tuple(
                                replace(turn, content=f"remember {turn.content}")
                                if turn.has_answer and turn.role == "user"
                                else turn
                                for turn in session.turns
                            ),
                        )
                        for session in instance.sessions
                    ),
                )
                for instance in self.instances
            ),
            self.source,
            (*self.notes, "evidence turns said with `remember` (control)"),
        )


# -- LongMemEval ----------------------------------------------------------------------------------------


def longmemeval_category(question_id: str, question_type: str) -> str:
    if question_id.endswith("_abs"):
        return ABSTENTION
    try:
        return _LONGMEMEVAL_TYPES[question_type]
    except KeyError:
        raise DatasetError(f"question {question_id}: unknown question_type {question_type!r}") from None


def _require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise DatasetError(f"{where}: missing field {key!r}")
    return entry[key]


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    return ()


def longmemeval_instance(entry: Mapping[str, Any]) -> Instance:
    """One LongMemEval entry (or one of the synthetic set) as an instance with its one question."""
    question_id = str(_require(entry, "question_id", "LongMemEval entry"))
    where = f"question {question_id}"
    sessions_raw = _require(entry, "haystack_sessions", where)
    if not isinstance(sessions_raw, list):
        raise DatasetError(f"{where}: haystack_sessions must be a list of sessions")
    session_ids = _strings(entry.get("haystack_session_ids")) or tuple(
        f"{question_id}-s{index}" for index in range(len(sessions_raw))
    )
    dates = _strings(entry.get("haystack_dates")) or ("",) * len(sessions_raw)
    agents = _strings(entry.get("haystack_agent_ids")) or (DEFAULT_AGENT,) * len(sessions_raw)
    if not len(session_ids) == len(dates) == len(agents) == len(sessions_raw):
        raise DatasetError(
            f"{where}: haystack_sessions, _session_ids, _dates and _agent_ids differ in length"
        )
    sessions = []
    for session_id, date, agent, turns in zip(session_ids, dates, agents, sessions_raw, strict=True):
        if not isinstance(turns, list):
            raise DatasetError(f"{where}: session {session_id} must be a list of turns")
        sessions.append(
            Session(
                session_id,
                date,
                tuple(
                    Turn(str(t.get("role", "")), str(t.get("content", "")), bool(t.get("has_answer", False)))
                    for t in turns
                    if isinstance(t, Mapping)
                ),
                agent,
            )
        )
    question_type = str(_require(entry, "question_type", where))
    question = Question(
        id=question_id,
        question_type=question_type,
        category=longmemeval_category(question_id, question_type),
        question=str(_require(entry, "question", where)),
        answer=str(_require(entry, "answer", where)),
        question_date=str(entry.get("question_date", "")),
        answer_session_ids=_strings(entry.get("answer_session_ids")),
        agent_id=str(entry.get("question_agent_id") or DEFAULT_AGENT),
        answer_parts=_strings(entry.get("answer_parts")),
        stale_answers=_strings(entry.get("stale_answers")),
    )
    return Instance(question_id, tuple(sessions), (question,))


def longmemeval_entry(instance: Instance) -> dict[str, Any]:
    """The LongMemEval JSON object of a one-question instance (what the generator writes)."""
    (question,) = instance.questions
    entry: dict[str, Any] = {
        "question_id": question.id,
        "question_type": question.question_type,
        "question": question.question,
        "answer": question.answer,
        "question_date": question.question_date,
        "haystack_dates": [s.date for s in instance.sessions],
        "haystack_session_ids": [s.id for s in instance.sessions],
        "haystack_sessions": [
            [
                {"role": t.role, "content": t.content, **({"has_answer": True} if t.has_answer else {})}
                for t in s.turns
            ]
            for s in instance.sessions
        ],
        "answer_session_ids": list(question.answer_session_ids),
        "haystack_agent_ids": [s.agent_id for s in instance.sessions],
        "question_agent_id": question.agent_id,
    }
    if question.answer_parts:
        entry["answer_parts"] = list(question.answer_parts)
    if question.stale_answers:
        entry["stale_answers"] = list(question.stale_answers)
    return entry


# -- LoCoMo ---------------------------------------------------------------------------------------------

_SESSION_KEY = re.compile(r"^session_(\d+)$")


def locomo_instance(entry: Mapping[str, Any]) -> Instance:
    """One LoCoMo conversation with all its questions; every turn is the user's, "<speaker>: <text>"."""
    sample_id = str(entry.get("sample_id", "locomo"))
    conversation = _require(entry, "conversation", f"LoCoMo sample {sample_id}")
    if not isinstance(conversation, Mapping):
        raise DatasetError(f"LoCoMo sample {sample_id}: conversation must be an object")
    numbers = sorted(int(m[1]) for key in conversation if (m := _SESSION_KEY.match(str(key))))
    sessions = []
    for number in numbers:
        turns = conversation[f"session_{number}"]
        if not isinstance(turns, list):
            continue
        sessions.append(
            Session(
                f"{sample_id}-session_{number}",
                str(conversation.get(f"session_{number}_date_time", "")),
                tuple(
                    Turn("user", f"{t.get('speaker', '')}: {t.get('text', '')}".strip(": "))
                    for t in turns
                    if isinstance(t, Mapping) and str(t.get("text", "")).strip()
                ),
            )
        )
    questions = []
    for index, qa in enumerate(_require(entry, "qa", f"LoCoMo sample {sample_id}")):
        if not isinstance(qa, Mapping):
            continue
        number = int(qa.get("category", 0))
        if number not in _LOCOMO_CATEGORIES:
            raise DatasetError(f"LoCoMo sample {sample_id}, qa {index}: unknown category {number!r}")
        name, category = _LOCOMO_CATEGORIES[number]
        if category == ABSTENTION:
            answer = LOCOMO_ADVERSARIAL_ANSWER
        else:
            answer = str(_require(qa, "answer", f"LoCoMo sample {sample_id}, qa {index}"))
            if number == 3:  # LoCoMo's own evaluation keeps the first of ";"-separated answers
                answer = answer.split(";")[0].strip()
        evidence_sessions = sorted(
            {f"{sample_id}-session_{e.split(':')[0].removeprefix('D')}" for e in _strings(qa.get("evidence"))}
        )
        questions.append(
            Question(
                id=f"{sample_id}-q{index}",
                question_type=name,
                category=category,
                question=str(_require(qa, "question", f"LoCoMo sample {sample_id}, qa {index}")),
                answer=answer,
                answer_session_ids=tuple(evidence_sessions),
            )
        )
    return Instance(sample_id, tuple(sessions), tuple(questions))


# -- files ----------------------------------------------------------------------------------------------


def detect(entries: Sequence[Any]) -> str:
    """ "LongMemEval" or "LoCoMo" by the fields of the first entry."""
    if not entries or not isinstance(entries[0], Mapping):
        raise DatasetError("expected a non-empty JSON list of objects")
    first = entries[0]
    if "haystack_sessions" in first and "question_id" in first:
        return "LongMemEval"
    if "conversation" in first and "qa" in first:
        return "LoCoMo"
    raise DatasetError(
        "neither LongMemEval (question_id, haystack_sessions, ...) nor LoCoMo (conversation, qa) fields: "
        f"found {sorted(first)[:8]}"
    )


def parse(entries: Sequence[Any], source: str = "", synthetic: bool = False) -> Dataset:
    kind = detect(entries)
    if kind == "LoCoMo":
        instances = tuple(locomo_instance(e) for e in entries)
    else:
        instances = tuple(longmemeval_instance(e) for e in entries)
    return Dataset("synthetic" if synthetic else kind, instances, source)


def read(path: Path) -> Dataset:
    """A LongMemEval or LoCoMo JSON file (auto-detected) as instances."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DatasetError(f"{path}: not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list")
    return parse(entries, str(path))


def write_longmemeval(instances: Iterable[Instance], path: Path) -> None:
    path.write_text(json.dumps([longmemeval_entry(i) for i in instances], indent=1) + "\n", encoding="utf-8")
