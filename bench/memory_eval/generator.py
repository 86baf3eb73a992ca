"""The synthetic set: multi-session conversations in LongMemEval's five abilities, deterministic for a seed.

Every instance is one person (a fresh user) with three to five sessions, each a new conversation with one
of the four agents, then one question asked in a new conversation, usually of another agent (what one
agent heard, every agent should know). Facts are said **in passing**, inside a message that asks for
something else ("We just got back from the vet with our beagle Biscuit and I'm worn out. What's a quick
dinner?"); nothing says "remember". Sessions mix in distractor chatter, and distractor sessions sit
between the evidence sessions.

- **information extraction** (`single-session-user`): a detail said once (a pet's name, a home town, a
  workplace); the question asks for it.
- **multi-session reasoning** (`multi-session`): two details from two sessions with different agents; the
  question needs both (`answer_parts`: the answer must name each).
- **knowledge updates** (`knowledge-update`): a fact stated, then changed in a later session ("My
  dietitian moved my daily calorie target to 1,800"); the answer is the latest value, and the older one is
  recorded in `stale_answers` (an answer that also names it is counted right but *stale*).
- **temporal reasoning** (`temporal-reasoning`): the public API cannot backdate a message (ChatRequest has
  no time), so timing is made observable two ways: (a) by the order the sessions are replayed in, which the
  system sees on its own clock — "what was my calorie target before it changed?" (the answer is the older
  value, and the current one is its `stale_answers`); (b) by a date said in the text — "On 14 March I
  passed my driving test" → "When did I pass my driving test?". `haystack_dates` carry plausible session
  dates for the JSON shape only.
- **abstention** (`_abs` question ids): a neighbouring detail was said (the dog's name) but the one asked
  about never was (the cat's name): the right answer is that it is not known.

No message or question asks for a tool by the offline model's rules (checked by the unit tests), so every
turn is answered from memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bench.memory_eval.dataset import (
    ABSTENTION,
    CATEGORIES,
    INFORMATION_EXTRACTION,
    KNOWLEDGE_UPDATE,
    MULTI_SESSION,
    TEMPORAL,
    Dataset,
    Instance,
    Question,
    Session,
    Turn,
)

AGENTS = ("athena", "nutrition", "focus", "sme")
DATE_FORMAT = "%Y/%m/%d (%a) %H:%M"
"""LongMemEval's way of writing `haystack_dates` and `question_date`."""
START = datetime(2026, 3, 2, 9, 0)

CHATTER = {
    "nutrition": (
        "What's a quick high-protein breakfast?",
        "Is oat milk or almond milk better in coffee?",
        "Can you suggest a simple soup for a cold evening?",
        "How do I stop snacking late in the evening?",
        "What can I cook with leftover rice?",
    ),
    "focus": (
        "How do I stop checking my phone every five minutes?",
        "What's a good way to start a Monday?",
        "How long should a break between tasks be?",
        "Give me a trick for getting started on a boring task.",
        "How do I keep a to-do list from growing forever?",
    ),
    "sme": (
        "What's a polite way to chase an unpaid invoice?",
        "How do I price a small design job?",
        "What should go in a one-page business plan?",
        "How do I reply to a one-star review?",
        "Is it worth printing business cards these days?",
    ),
    "athena": (
        "Give me an idea for a rainy Sunday.",
        "What's a good novel for a long train ride?",
        "How do I keep houseplants alive in winter?",
        "Suggest a name for a neighbourhood book club.",
        "What's an easy card game for four people?",
    ),
}

DOGS = ("Biscuit", "Pepper", "Juniper", "Marlow", "Tofu", "Ziggy")
CITIES = ("Porto", "Leeds", "Tampere", "Graz", "Valparaiso", "Ghent")
WORKPLACES = ("children's hospital", "harbour ferry office", "county library", "glass recycling plant")
INSTRUMENTS = ("cello", "trombone", "ukulele", "harp", "bassoon")
CARS = ("Volvo estate", "Fiat Panda", "Skoda Octavia", "Toyota Yaris")
SISTERS = ("Elena", "Maren", "Ottilie", "Rosalind", "Tamsin")
SHOPS = ("Copper Kettle", "Blue Heron Books", "Little Fern Florist", "Northside Cycles")
LANGUAGES = ("Portuguese", "Japanese", "Finnish", "Turkish", "Welsh", "Korean")
SONS = ("Arlo", "Felix", "Idris", "Matteo", "Soren")
DAUGHTERS = ("Clementine", "Ines", "Noor", "Wren", "Zadie")
CRAFTS = ("pottery", "watercolour", "woodworking", "bookbinding")
SPORTS = ("bouldering", "rowing", "fencing", "archery")
ASSISTANTS = ("Priya", "Dominik", "Lucia", "Tobias")
COFOUNDERS = ("Henrike", "Kwame", "Saoirse", "Mateus")
TARGETS = ("1,600", "1,800", "2,000", "2,200", "2,400")
NEIGHBOURHOODS = ("Riverside", "Old Town", "Hillcrest", "Eastgate", "Harbourview")
MANAGERS = ("Gwen", "Rashid", "Yelena", "Bartholomew", "Ingrid")
RACES = ("10k", "half marathon", "5k", "trail race")
MONTHS = ("January", "February", "March", "April")
EVENTS = (
    ("passed my driving test", "When did I pass my driving test?"),
    ("signed the lease for the shop", "When did I sign the lease for the shop?"),
    ("ran my first 10k race", "When did I run my first 10k race?"),
    ("adopted a rescue greyhound", "When did I adopt my greyhound?"),
)


@dataclass(frozen=True)
class Said:
    """A message that states a fact in passing, to one agent."""

    agent: str
    text: str


@dataclass(frozen=True)
class Fact:
    """A detail said once, the question asking for it, and a question about a neighbour never said."""

    pool: tuple[str, ...]
    agent: str
    statement: str
    question: str
    unknown_question: str
    unknown_explanation: str


FACTS = (
    Fact(
        DOGS,
        "nutrition",
        "We just got back from the vet with our beagle {v} and I'm worn out. What's a quick dinner I can "
        "make in twenty minutes?",
        "What is my dog's name?",
        "What is my cat's name?",
        "You mentioned a dog, never a cat.",
    ),
    Fact(
        CITIES,
        "nutrition",
        "Growing up in {v} nobody in my family ate breakfast, and I'm trying to change that. What's an easy "
        "one to start with?",
        "Which city did I grow up in?",
        "Which city was my mother born in?",
        "You never said where your mother was born.",
    ),
    Fact(
        WORKPLACES,
        "focus",
        "After a long shift at the {v} I have no energy left for deep work. How do I get going in the "
        "evening?",
        "Where do I work?",
        "Where does my partner work?",
        "You never mentioned your partner's work.",
    ),
    Fact(
        INSTRUMENTS,
        "focus",
        "I practise the {v} for an hour after dinner, so my evenings are short. How should I split my "
        "mornings?",
        "Which instrument do I play?",
        "Which instrument does my son play?",
        "You never mentioned a son playing an instrument.",
    ),
    Fact(
        CARS,
        "sme",
        "My old {v} broke down again on the way to a client, so I arrived late. How do I apologise "
        "professionally?",
        "What car do I drive?",
        "What colour is my bicycle?",
        "You never mentioned a bicycle.",
    ),
    Fact(
        SISTERS,
        "athena",
        "My sister {v} is visiting next week and I want to plan something nice. Any ideas for a rainy "
        "afternoon in town?",
        "What is my sister's name?",
        "What is my brother's name?",
        "You mentioned a sister, never a brother.",
    ),
    Fact(
        SHOPS,
        "sme",
        "My shop, the {v}, had its best Saturday ever. What's a good way to thank regular customers?",
        "What is my shop called?",
        "What is my accountant's name?",
        "You never mentioned an accountant.",
    ),
)


@dataclass(frozen=True)
class Pair:
    """Two details from two sessions that one question needs together."""

    pools: tuple[tuple[str, ...], tuple[str, ...]]
    first: tuple[str, str]
    """(agent, statement with {v})."""
    second: tuple[str, str]
    question: str
    answer: str
    """With {a} and {b}."""


PAIRS = (
    Pair(
        (LANGUAGES, LANGUAGES),
        (
            "focus",
            "My {v} lesson ran over this morning and I lost my best focus hours. How do I protect them?",
        ),
        ("athena", "I've also started {v} classes on Thursdays, which is a lot on top of work. Any tips?"),
        "Which languages am I learning?",
        "{a} and {b}",
    ),
    Pair(
        (SONS, DAUGHTERS),
        ("nutrition", "My son {v} refuses anything green at dinner. How can I sneak vegetables into pasta?"),
        ("focus", "My daughter {v} has a school play tonight so I need to wrap up work by four. Any tips?"),
        "What are my children's names?",
        "{a} and {b}",
    ),
    Pair(
        (CRAFTS, SPORTS),
        ("athena", "I signed up for a {v} class at the community centre and I love it. What should I bring?"),
        ("nutrition", "My {v} sessions leave me starving afterwards. What's a good snack to pack?"),
        "Which two activities have I taken up?",
        "{a} and {b}",
    ),
    Pair(
        (ASSISTANTS, COFOUNDERS),
        (
            "sme",
            "My assistant {v} handles the invoices now, which frees up my mornings. What else could go?",
        ),
        ("focus", "My co-founder {v} wants to open a second location, and I can't think straight. Help?"),
        "Who are my assistant and my co-founder?",
        "{a} (assistant) and {b} (co-founder)",
    ),
)


@dataclass(frozen=True)
class Change:
    """A fact stated, then changed in a later session."""

    pool: tuple[str, ...]
    before: tuple[str, str]
    after: tuple[str, str]
    question: str
    """Asks for the current value."""
    past_question: str
    """Asks for the value before the change."""


CHANGES = (
    Change(
        TARGETS,
        ("nutrition", "My daily calorie target is {v} at the moment, and lunch is where I struggle. Ideas?"),
        ("nutrition", "My dietitian moved my daily calorie target to {v}, so I need smaller dinners. Ideas?"),
        "What is my daily calorie target?",
        "What was my daily calorie target before it changed?",
    ),
    Change(
        NEIGHBOURHOODS,
        ("focus", "We live in {v} for now and the commute eats my mornings. How do I use train time well?"),
        ("athena", "We finally moved to {v}, so I can walk to work now. How do I use the extra half hour?"),
        "Which neighbourhood do I live in?",
        "Which neighbourhood did I live in before I moved?",
    ),
    Change(
        MANAGERS,
        ("focus", "My manager {v} keeps pinging me during focus time. How do I set boundaries politely?"),
        (
            "sme",
            "{v} took over as my manager this week and likes long written updates. How do I keep mine short?",
        ),
        "Who is my manager?",
        "Who was my manager before the current one?",
    ),
    Change(
        RACES,
        (
            "nutrition",
            "I'm getting ready for a {v} this spring and I'm always hungry. What should I eat more of?",
        ),
        ("athena", "I switched my spring race to a {v} instead, so my plans changed a bit. Any advice?"),
        "Which race am I getting ready for?",
        "Which race was I getting ready for before I switched?",
    ),
)


class _Builder:
    """The sessions of one instance: evidence sessions in order, distractor sessions in between."""

    def __init__(self, rng: random.Random, instance_id: str) -> None:
        self.rng = rng
        self.instance_id = instance_id

    def chatter(self, agent: str, count: int) -> list[Turn]:
        return [Turn("user", text) for text in self.rng.sample(CHATTER[agent], count)]

    def evidence_session(self, said: Said) -> tuple[str, list[Turn]]:
        turns = self.chatter(said.agent, 2)
        turns.insert(self.rng.randint(0, 2), Turn("user", said.text, has_answer=True))
        return said.agent, turns

    def sessions(
        self, evidence: Sequence[Said], distractors: int = 2
    ) -> tuple[tuple[Session, ...], list[str]]:
        """The sessions, and the ids of the evidence ones (in `evidence` order)."""
        planned: list[tuple[str, list[Turn], bool]] = [(*self.evidence_session(s), True) for s in evidence]
        for _ in range(distractors):
            agent = self.rng.choice(AGENTS)
            planned.insert(self.rng.randint(0, len(planned)), (agent, self.chatter(agent, 2), False))
        sessions, evidence_ids = [], []
        moment = START + timedelta(days=self.rng.randint(0, 20), minutes=self.rng.randint(0, 600))
        for index, (agent, turns, is_evidence) in enumerate(planned):
            session_id = f"{self.instance_id}-s{index}"
            sessions.append(Session(session_id, moment.strftime(DATE_FORMAT), tuple(turns), agent))
            if is_evidence:
                evidence_ids.append(session_id)
            moment += timedelta(days=self.rng.randint(1, 9), minutes=self.rng.randint(-120, 120))
        self.question_date = (moment + timedelta(days=1)).strftime(DATE_FORMAT)
        return tuple(sessions), evidence_ids

    def asker(self, evidence: Sequence[Said]) -> str:
        """Another agent than those who heard the evidence, when there is one."""
        others = [agent for agent in AGENTS if agent not in {s.agent for s in evidence}]
        return self.rng.choice(others or list(AGENTS))


def _information_extraction(builder: _Builder, index: int, iid: str) -> Instance:
    fact = FACTS[index % len(FACTS)]
    value = builder.rng.choice(fact.pool)
    said = [Said(fact.agent, fact.statement.format(v=value))]
    sessions, ids = builder.sessions(said)
    question = Question(
        iid, "single-session-user", INFORMATION_EXTRACTION, fact.question, value,
        builder.question_date, tuple(ids), builder.asker(said),
    )  # fmt: skip
    return Instance(iid, sessions, (question,))


def _multi_session(builder: _Builder, index: int, iid: str) -> Instance:
    pair = PAIRS[index % len(PAIRS)]
    first = builder.rng.choice(pair.pools[0])
    second = builder.rng.choice([v for v in pair.pools[1] if v != first])
    said = [
        Said(pair.first[0], pair.first[1].format(v=first)),
        Said(pair.second[0], pair.second[1].format(v=second)),
    ]
    sessions, ids = builder.sessions(said)
    question = Question(
        iid, "multi-session", MULTI_SESSION, pair.question, pair.answer.format(a=first, b=second),
        builder.question_date, tuple(ids), builder.asker(said), answer_parts=(first, second),
    )  # fmt: skip
    return Instance(iid, sessions, (question,))


def _change(builder: _Builder, index: int) -> tuple[Change, str, str, list[Said]]:
    change = CHANGES[index % len(CHANGES)]
    old, new = builder.rng.sample(change.pool, 2)
    said = [
        Said(change.before[0], change.before[1].format(v=old)),
        Said(change.after[0], change.after[1].format(v=new)),
    ]
    return change, old, new, said


def _knowledge_update(builder: _Builder, index: int, iid: str) -> Instance:
    change, old, new, said = _change(builder, index)
    sessions, ids = builder.sessions(said)
    question = Question(
        iid, "knowledge-update", KNOWLEDGE_UPDATE, change.question, new, builder.question_date,
        tuple(ids[1:]), builder.asker(said), stale_answers=(old,),
    )  # fmt: skip
    return Instance(iid, sessions, (question,))


def _temporal(builder: _Builder, index: int, iid: str) -> Instance:
    if index % 2 == 0:  # (a) the order the system saw: the value before the change
        change, old, new, said = _change(builder, index // 2)
        sessions, ids = builder.sessions(said)
        question = Question(
            iid, "temporal-reasoning", TEMPORAL, change.past_question, old, builder.question_date,
            tuple(ids), builder.asker(said), stale_answers=(new,),
        )  # fmt: skip
        return Instance(iid, sessions, (question,))
    # (b) a date said in the text
    event, asked = EVENTS[(index // 2) % len(EVENTS)]
    when = f"{builder.rng.randint(2, 27)} {builder.rng.choice(MONTHS)}"
    agent = builder.rng.choice(AGENTS)
    said = [Said(agent, f"On {when} I {event}, and I'm still smiling about it. How should I celebrate?")]
    sessions, ids = builder.sessions(said)
    question = Question(
        iid,
        "temporal-reasoning",
        TEMPORAL,
        asked,
        when,
        builder.question_date,
        tuple(ids),
        builder.asker(said),
    )
    return Instance(iid, sessions, (question,))


def _abstention(builder: _Builder, index: int, iid: str) -> Instance:
    fact = FACTS[index % len(FACTS)]
    said = [Said(fact.agent, fact.statement.format(v=builder.rng.choice(fact.pool)))]
    sessions, _ = builder.sessions(said)
    question = Question(
        f"{iid}_abs", "single-session-user", ABSTENTION, fact.unknown_question, fact.unknown_explanation,
        builder.question_date, (), builder.asker(said),
    )  # fmt: skip
    return Instance(question.id, sessions, (question,))


_MAKERS: dict[str, Callable[[_Builder, int, str], Instance]] = {
    INFORMATION_EXTRACTION: _information_extraction,
    MULTI_SESSION: _multi_session,
    KNOWLEDGE_UPDATE: _knowledge_update,
    TEMPORAL: _temporal,
    ABSTENTION: _abstention,
}
_SLUGS = {
    INFORMATION_EXTRACTION: "ie",
    MULTI_SESSION: "ms",
    KNOWLEDGE_UPDATE: "ku",
    TEMPORAL: "tr",
    ABSTENTION: "ab",
}


def generate(seed: int = 17, per_category: int = 10) -> Dataset:
    """`per_category` instances of each of the five abilities, interleaved (ie, ms, ku, tr, ab, ie, ...);
    the same seed gives the same set, byte for byte."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible test set, not a secret)
    # Templates are taken in turn from a per-category starting point the seed picks, so that each is used
    # about as often as the others.
    starts = {category: rng.randrange(100) for category in CATEGORIES}
    instances = []
    for index in range(per_category):
        for category in CATEGORIES:
            iid = f"syn{seed}-{_SLUGS[category]}-{index}"
            builder = _Builder(random.Random(rng.getrandbits(64)), iid)  # noqa: S311 (as above)
            instances.append(_MAKERS[category](builder, starts[category] + index, iid))
    return Dataset(
        "synthetic",
        tuple(instances),
        f"bench.memory_eval.generator (seed {seed}, {per_category} per category)",
    )
