"""Facts learnt from conversations: what the extraction model must answer, how its answer is checked, and
how a candidate fact is reconciled with what is already remembered. No I/O, no gRPC.

The design follows the memory systems people compare us with: mem0's reconciliation (each candidate is
added, updates an existing fact, invalidates one, or changes nothing) and Zep/Graphiti's validity
intervals (a fact that stops holding is closed with `valid_to` and kept as history, never silently
deleted; its successor links to it).

Who wins (`decide`), precisely:

- The newest statement wins, by when it was made: a candidate updates or invalidates the current version
  of its key (same key, same scope) only if it was stated after that version started to hold. So an
  inferred fact never overrides an explicit memory stored after the message it comes from (a `remember`
  or the person's correction made meanwhile), nor a newer inferred one (a job retried late).
- A keyed fact the person forgot is not inferred again from a message older than the forgetting (the
  tombstone's time): deleting means deleting, even if the old turn is extracted again.
- Duplicates change nothing: the same key with the same words, or (keyless or under another key) a
  current memory of the scope that is nearly the same by embedding (`FactPolicy.duplicate_similarity`).
- Candidates below the deployment's minimum confidence change nothing (`FactPolicy.min_confidence`).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memory.domain import MemoryRecord, Scope, Source

SCHEMA_NAME = "athena_memory_facts"
"""The `response_format.json_schema.name` of extraction requests (the offline model answers it by rule)."""

MAX_FACTS = 10
"""Facts one answer may hold."""
MAX_FACT_LENGTH = 500


@dataclass(frozen=True, slots=True)
class FactPolicy:
    """The reconciliation knobs of one deployment (MEMORY_EXTRACTION_* settings)."""

    min_confidence: float = 0.6
    """Candidates less certain than this are not remembered."""
    duplicate_similarity: float = 0.92
    """Cosine similarity at which a candidate counts as the same as a current memory (a near-duplicate).
    Measured with the offline embedder: different values of one kind ("vegetarian" / "vegan", "Lisbon" /
    "Porto", "1,800" / "2,000 kcal") ≈ 0.74-0.81, rewordings of one fact ≈ 0.90 ("is a vegetarian") to 1.0
    (case, punctuation): the threshold errs on keeping a rewording rather than losing a new fact."""


EXTRACTION_PROMPT = """You extract durable facts about the user from one message they sent to an assistant.
A durable fact stays true beyond this conversation: diet, allergies, goals, where they live, what to call
them, family, work, preferences. Ignore questions, requests, small talk, and anything about the assistant.
For each fact answer:
- text: the fact as a short sentence about the user in the third person, e.g. "The user is vegetarian.";
- key: a short stable snake_case subject shared by every value of the same fact, e.g. "diet",
  "caloric_goal", "home_city", "preferred_name", "allergy_peanuts";
- scope: "user" when every assistant should know it, "agent" when it only matters to this assistant;
- confidence: 0..1, how sure you are the user stated it about themselves;
- ended: true when the user says the fact no longer holds ("I'm not vegetarian anymore"), else false.
Answer {"facts": []} when there are none."""
"""The fixed system prompt of an extraction request; the user message is the person's message alone."""

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "facts": {
            "type": "array",
            "maxItems": MAX_FACTS,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "key": {"type": "string"},
                    "scope": {"type": "string", "enum": ["user", "agent"]},
                    "confidence": {"type": "number"},
                    "ended": {"type": "boolean"},
                },
                "required": ["text", "key", "scope", "confidence", "ended"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["facts"],
    "additionalProperties": False,
}
"""Structured output (OpenAI `response_format: {type: json_schema, strict: true}`)."""


def response_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": RESPONSE_SCHEMA},
    }


class MalformedExtraction(ValueError):
    """The model's answer is not what the schema promises (the job fails and is retried)."""


@dataclass(frozen=True, slots=True)
class FactCandidate:
    """One fact the model says the person stated."""

    text: str
    key: str
    scope: Scope
    confidence: float
    ended: bool = False


_KEY = re.compile(r"^[a-z0-9_.-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_extraction(content: str | None) -> list[FactCandidate]:
    """The candidates of a model's answer, checked strictly against `RESPONSE_SCHEMA` (and the limits of a
    memory); raises `MalformedExtraction` saying what is wrong."""
    if not content:
        raise MalformedExtraction("the answer is empty")
    try:
        decoded = json.loads(content)
    except ValueError:
        raise MalformedExtraction("the answer is not JSON") from None
    if not isinstance(decoded, dict) or set(decoded) != {"facts"} or not isinstance(decoded["facts"], list):
        raise MalformedExtraction('the answer must be an object with exactly "facts", an array')
    facts = decoded["facts"]
    if len(facts) > MAX_FACTS:
        raise MalformedExtraction(f"more than {MAX_FACTS} facts")
    return [_candidate(index, fact) for index, fact in enumerate(facts)]


def _candidate(index: int, fact: Any) -> FactCandidate:
    where = f"facts[{index}]"
    required = {"text", "key", "scope", "confidence", "ended"}
    if not isinstance(fact, dict) or set(fact) != required:
        raise MalformedExtraction(f"{where} must have exactly {', '.join(sorted(required))}")
    text, key, scope = fact["text"], fact["key"], fact["scope"]
    confidence, ended = fact["confidence"], fact["ended"]
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_FACT_LENGTH or _CONTROL.search(text):
        raise MalformedExtraction(f"{where}.text must be 1 to {MAX_FACT_LENGTH} characters of plain text")
    if not isinstance(key, str) or not _KEY.match(key.strip().lower()):
        raise MalformedExtraction(f"{where}.key must be 1 to 64 of a-z, 0-9, '_', '-', '.'")
    if scope not in ("user", "agent"):
        raise MalformedExtraction(f'{where}.scope must be "user" or "agent"')
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
        raise MalformedExtraction(f"{where}.confidence must be a number in 0..1")
    if not isinstance(ended, bool):
        raise MalformedExtraction(f"{where}.ended must be a boolean")
    return FactCandidate(
        text=" ".join(text.split()),
        key=key.strip().lower(),
        scope=Scope(scope),
        confidence=float(confidence),
        ended=ended,
    )


class Action(enum.Enum):
    """What reconciling a candidate does (mem0's ADD / UPDATE / DELETE / NOOP; here DELETE closes the
    version, it never erases it)."""

    ADD = "add"
    UPDATE = "update"
    """The current version is closed and the candidate stored as its successor."""
    INVALIDATE = "invalidate"
    """The current version is closed; nothing replaces it."""
    NOOP = "noop"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    closes: MemoryRecord | None = None
    """The version UPDATE and INVALIDATE close."""


def same_words(a: str, b: str) -> bool:
    """Equal but for case, spacing and final punctuation."""

    def folded(text: str) -> str:
        return " ".join(text.casefold().split()).rstrip(" .!")

    return folded(a) == folded(b)


def decide(
    candidate: FactCandidate,
    *,
    stated_at: datetime,
    current: MemoryRecord | None,
    similarity: float | None,
    forgotten_at: datetime | None,
    policy: FactPolicy,
) -> Decision:
    """Reconciles `candidate`, stated at `stated_at`, with `current` (the current version of its key in its
    scope, if any); `similarity`: the cosine similarity of the nearest current memory of the scope (None:
    there is none); `forgotten_at`: when the person last forgot a fact of this key (see the module
    docstring for the rules)."""
    if candidate.confidence < policy.min_confidence:
        return Decision(
            Action.NOOP, f"confidence {candidate.confidence:.2f} below {policy.min_confidence:.2f}"
        )
    if forgotten_at is not None and stated_at <= forgotten_at:
        return Decision(Action.NOOP, "the person forgot this fact after it was stated")
    if current is not None:
        since = current.valid_from or current.created_at
        if since >= stated_at:
            who = "an explicit memory" if current.source is Source.EXPLICIT else "a newer version"
            return Decision(Action.NOOP, f"{who} was stored after the statement")
        if candidate.ended:
            return Decision(Action.INVALIDATE, "the person said it no longer holds", closes=current)
        if same_words(current.text, candidate.text):
            return Decision(Action.NOOP, "already remembered")
        return Decision(Action.UPDATE, "a newer value of the same fact", closes=current)
    if candidate.ended:
        return Decision(Action.NOOP, "nothing current to invalidate")
    if similarity is not None and similarity >= policy.duplicate_similarity:
        return Decision(Action.NOOP, "a near-duplicate is remembered")
    return Decision(Action.ADD, "a new fact")
