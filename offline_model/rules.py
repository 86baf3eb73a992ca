"""What the offline model answers: a pure function of the conversation and the offered tools.

The rules look at the last message (SPEC §4):

- the last message is a tool result → one sentence confirming it (busy blocks counted, events named with
  their times, files named, health data as the day's value or the range's total or average with its lowest
  and highest day, and what could not answer — a calendar or drive to reconnect — said; after a
  handoff, the receiving agent answers the user's question instead);
- otherwise the last user message: `remember <fact>` → `remember_memory{text, scope: "user"}`,
  `note <fact>` → the same with scope "agent", `forget <fact>` → `forget_memory{query}`,
  `ask <agent_id> <question>` → `handoff_to_<agent_id>{reason}`, a request to find files or documents
  "about|for|named ... <topic>" → `file_search{query: topic}`, a question about what is on the calendar
  ("what's on my calendar tomorrow?", "what meetings do I have?", "my events today") →
  `calendar_events{start, end}` over tomorrow or today (UTC days) when it says so, else the next 7 days
  (`calendar_freebusy` when only that is offered), a question about the person's own health data ("how
  many steps did I walk today?", "how did I sleep last night?", "my resting heart rate this month") →
  `wearable_stats{metric, range}` (the metric its words name; today, yesterday, 30 or 90 days when it says
  so, else 7 days; sleep "last night" is today's, the night that ended this morning), other words about
  the calendar → `calendar_freebusy{start, end}` over the next 7 days; a question about what the person
  said before ("what did I tell the nutrition coach last week about dinner?", "what did we talk about…",
  "remind me what I said about…") → `recall_conversations{query, agent?, since?, until?}`
  (`conversation_recall_call`: the words after "about" as the query, else the whole question; "the <id>
  coach|agent" as the agent; "today", "yesterday", "last|past|this week" (the last 7 days, today
  included), "last|past month" (30 days) as UTC dates, both ends included); any other question about the
  person ("…I…?", "…my…?") that no recalled memory answers → `recall_conversations{query}` with the
  question's own words (`past_mentions_call`): what they said before may answer it;
- a request whose `response_format` asks for the JSON schema `athena_memory_facts` (the memory service's
  fact extraction, `memory.facts`) is answered `{"facts": [...]}` by the rules of `extract_facts` ("I'm
  vegetarian", "I am allergic to X", "my goal is now N kcal", "I live in X", "call me X");
- a tool is only called when the request offers it; anything else gets the memory answer: "Here is what
  I know: " + the memories of the `Memories:` system message joined by "; ", or "I don't know that yet."

Test directives may prefix the last user message when the server enables them (the setting
`test_directives`, off by default): `!fail <status> <count>` (the first `count` requests carrying that
exact message are answered with HTTP `status`, see `FailureInjector`) and `!slow <ms>` (wait before the
first chunk). They are stripped before the rules run.

Messages are the OpenAI Chat Completions wire format, already decoded from JSON. Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

REMEMBER_TOOL = "remember_memory"
FORGET_TOOL = "forget_memory"
CALENDAR_TOOL = "calendar_freebusy"
EVENTS_TOOL = "calendar_events"
FILES_TOOL = "file_search"
HEALTH_TOOL = "wearable_stats"
RECALL_CONVERSATIONS_TOOL = "recall_conversations"
HANDOFF_PREFIX = "handoff_to_"
"""The orchestrator offers one tool per reachable agent, named `handoff_to_<agent_id>`."""

UNKNOWN_ANSWER = "I don't know that yet."
MEMORIES_HEADER = "Memories:"
CALENDAR_WINDOW = timedelta(days=7)
EVENTS_NAMED = 10
"""Events an answer names at most; the rest are counted."""

Message = Mapping[str, Any]
"""One Chat Completions message as decoded from JSON (`role`, `content`, `tool_calls`, ...)."""


@dataclass(frozen=True)
class TextReply:
    """The model answers with text."""

    text: str


@dataclass(frozen=True)
class ToolCallReply:
    """The model calls one tool."""

    name: str
    arguments: dict[str, Any]
    """Decoded arguments; the wire carries them as a JSON string."""

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


Reply = TextReply | ToolCallReply


@dataclass(frozen=True)
class Directives:
    """Test directives found at the start of the last user message."""

    fail_status: int | None = None
    """HTTP status to answer with while the failure budget lasts."""
    fail_count: int = 0
    """How many requests carrying this exact message fail before it is answered normally."""
    slow_ms: float = 0.0
    """Extra wait before the first chunk (or the whole answer when not streaming)."""
    text: str = ""
    """The message without its directives, which the rules answer."""


_DIRECTIVE = re.compile(r"^\s*!(?:(?P<fail>fail)\s+(?P<status>\d{3})\s+(?P<count>\d+)|slow\s+(?P<ms>\d+))\b")


def parse_directives(text: str) -> Directives:
    """Strip leading `!fail <status> <count>` / `!slow <ms>` directives (any order) from `text`."""
    fail_status: int | None = None
    fail_count = 0
    slow_ms = 0.0
    while match := _DIRECTIVE.match(text):
        if match["fail"]:
            status = int(match["status"])
            if 400 <= status <= 599:
                fail_status, fail_count = status, int(match["count"])
        else:
            slow_ms = float(match["ms"])
        text = text[match.end() :]
    return Directives(fail_status, fail_count, slow_ms, text.strip())


@dataclass
class FailureInjector:
    """Remembers, per exact message text, how many injected failures were already answered."""

    _answered: dict[str, int] = field(default_factory=dict)

    def status_for(self, message: str) -> int | None:
        """The HTTP status this request must fail with, or None to answer it normally."""
        directives = parse_directives(message)
        if directives.fail_status is None:
            return None
        answered = self._answered.get(message, 0)
        if answered >= directives.fail_count:
            return None
        self._answered[message] = answered + 1
        return directives.fail_status


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, a list of parts (text parts joined), or null."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def count_tokens(text: str) -> int:
    """The offline model's token count: whitespace-separated words."""
    return len(text.split())


def last_user_text(messages: Sequence[Message]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def plan_reply(
    messages: Sequence[Message],
    offered_tools: Iterable[str],
    now: datetime | None = None,
    *,
    directives: bool = False,
) -> Reply:
    """The offline model's reply to `messages` when the request offers the tools named `offered_tools`.

    `now` (timezone-aware, defaults to the current UTC time) anchors the calendar window; with
    `directives`, test directives are stripped from the last user message first.
    """
    tools = frozenset(offered_tools)
    if messages and messages[-1].get("role") == "tool":
        return _after_tool_result(messages)
    text = last_user_text(messages)
    if directives:
        text = parse_directives(text).text
    now = now or datetime.now(UTC)
    call = _tool_call_for(text, now)
    if call is not None and call.name == EVENTS_TOOL and EVENTS_TOOL not in tools:
        call = _freebusy_call(now)  # calendars that cannot list events still say when the person is busy
    if call is not None and call.name in tools:
        return call
    if RECALL_CONVERSATIONS_TOOL in tools and not recalled_memories(messages):
        search = past_mentions_call(text)
        if search is not None:
            return search
    return memory_answer(messages)


_ABOUT_ME = re.compile(r"\b(?:I|I'm|I’m|I've|I’ve|me|my|mine|myself)\b", re.IGNORECASE)
_QUESTION_WORDS = re.compile(
    r"\b(?:what|what's|whats|which|who|whom|whose|where|when|how|why|do|does|did|am|is|are|was|were|have|has|"
    r"had|can|could|would|should|will|tell|remind|me|my|mine|myself|i|i'm|i’m|i've|i’ve|a|an|the|of|for|to|in|"
    r"on|at|about|it|that|this|these|those|you|your|any|ever|again|currently|now|please|know|remember|recall)\b",
    re.IGNORECASE,
)


_SENTENCES = re.compile(r"[^.!?]+[.!?]*")
_ASKING_ABOUT = re.compile(
    r"^\s*(?:what|which|who|whose|where|when|how\s+(?:many|much|old|long|often))\b", re.IGNORECASE
)
_ASKING_ADVICE = re.compile(r"\b(?:should|could|can|would|shall|might)\s+(?:I|we)\b", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The sentences of `text`, each with its closing punctuation."""
    return [found.strip() for found in _SENTENCES.findall(text) if found.strip()]


def past_mentions_call(text: str) -> ToolCallReply | None:
    """`recall_conversations{query}` for a question about the person that no memory answers ("Which
    instrument do I play?", "When did I adopt my greyhound?"): what they said in earlier conversations
    may. Only the message's last sentence counts, and only a question asking what, which, who, where,
    when or how many about "I" or "my" (not for advice: "how should I celebrate?"). The query is its own
    words without question and function words; None for anything else."""
    said = sentences(text)
    question = said[-1] if said else ""
    if (
        not question.endswith("?")
        or not _ASKING_ABOUT.search(question)
        or _ASKING_ADVICE.search(question)
        or not _ABOUT_ME.search(question)
    ):
        return None
    query = " ".join(_QUESTION_WORDS.sub(" ", question.rstrip("?")).split())
    query = clean_fact(query)
    if len(query) < 3:
        return None
    return ToolCallReply(RECALL_CONVERSATIONS_TOOL, {"query": query[:200]})


def memory_answer(messages: Sequence[Message]) -> TextReply:
    """ "Here is what I know: a; b" from the `Memories:` system messages, or "I don't know that yet"."""
    memories = recalled_memories(messages)
    if not memories:
        return TextReply(UNKNOWN_ANSWER)
    return TextReply("Here is what I know: " + "; ".join(memories))


def recalled_memories(messages: Sequence[Message]) -> list[str]:
    """The `- <text>` lines of every system message whose content starts with `Memories:`."""
    memories: list[str] = []
    for message in messages:
        if message.get("role") not in ("system", "developer"):
            continue
        content = content_text(message.get("content")).strip()
        if not content.startswith(MEMORIES_HEADER):
            continue
        for line in content.splitlines()[1:]:
            line = line.strip()
            if line.startswith("-") and (memory := line[1:].strip()):
                memories.append(memory)
    return memories


_REMEMBER = re.compile(r"^(remember|note)\b[\s:,]*(?P<fact>.+)$", re.IGNORECASE | re.DOTALL)
_FORGET = re.compile(r"^forget\b[\s:,]*(?P<fact>.+)$", re.IGNORECASE | re.DOTALL)
_ASK = re.compile(r"^ask\s+@?(?P<agent>[a-z0-9_-]+)[\s:,]+(?P<question>.+)$", re.IGNORECASE | re.DOTALL)
_CALENDAR = re.compile(
    r"\b(calendar|free|busy|schedule[sd]?|available|availability|meetings?)\b", re.IGNORECASE
)
_EVENTS = re.compile(
    r"\bwhat(?:'s|’s|s|\s+is)?\s+on\s+my\s+(?:calendar|schedule|agenda)\b"
    r"|\b(?:what|which|any|my|list)\s+(?:meetings|events|appointments|agenda)\b",
    re.IGNORECASE,
)
_HEALTH_METRICS = (  # the first that matches names the metric
    (re.compile(r"\bresting\s+(?:heart\s*rate|pulse)\b", re.IGNORECASE), "resting_heart_rate"),
    (re.compile(r"\b(?:heart\s*rate|pulse|bpm)\b", re.IGNORECASE), "heart_rate"),
    (re.compile(r"\b(?:sleep|slept|asleep)\b", re.IGNORECASE), "sleep_minutes"),
    (re.compile(r"\b(?:steps?|walked)\b", re.IGNORECASE), "steps"),
    (re.compile(r"\b(?:weigh|weight|weighed)\b", re.IGNORECASE), "weight_kg"),
    (re.compile(r"\b(?:calories|kcal|active\s+energy|burn(?:ed|t)?)\b", re.IGNORECASE), "active_energy_kcal"),
    (
        re.compile(r"\b(?:workouts?|exercised?|trained|training\s+minutes)\b", re.IGNORECASE),
        "workout_minutes",
    ),
)
_HEALTH_QUESTION = re.compile(r"\b(?:how|what|did|was|were|am|my|show|tell)\b", re.IGNORECASE)
_YESTERDAY = re.compile(r"\b(?:yesterday|last\s+night)\b", re.IGNORECASE)
_MONTH = re.compile(r"\b(?:month|30\s+days)\b", re.IGNORECASE)
_QUARTER = re.compile(r"\b(?:quarter|90\s+days|three\s+months)\b", re.IGNORECASE)
_TOMORROW = re.compile(r"\btomorrow\b", re.IGNORECASE)
_TODAY = re.compile(r"\b(?:today|tonight)\b", re.IGNORECASE)
_FILES = re.compile(
    r"\b(find|search|look\s+(?:for|up)|show)\b.*\b(files?|documents?|docs?|spreadsheets?)\b",
    re.IGNORECASE | re.DOTALL,
)
_FILES_TOPIC = re.compile(  # the words after the last "about", "for", "named"...
    r".*\b(?:for|about|on|mentioning|named|called|containing)\s+(?P<topic>[^?!.]+)", re.IGNORECASE | re.DOTALL
)
_LEADING_THAT = re.compile(r"^that\s+", re.IGNORECASE)
_TRAILING = " .!?;,:"
_OPENING_QUOTES = "\"'“‘"
_CLOSING_QUOTES = "\"'”’"


def _tool_call_for(text: str, now: datetime) -> ToolCallReply | None:
    """The tool call the rules ask for on `text`, whether or not the request offers it."""
    text = text.strip()
    if match := _REMEMBER.match(text):
        fact = clean_fact(match["fact"])
        if fact:
            scope = "user" if match[1].lower() == "remember" else "agent"
            return ToolCallReply(REMEMBER_TOOL, {"text": fact, "scope": scope})
    if match := _FORGET.match(text):
        fact = clean_fact(match["fact"])
        if fact:
            return ToolCallReply(FORGET_TOOL, {"query": fact})
    if match := _ASK.match(text):
        question = match["question"].strip()
        if question:
            return ToolCallReply(HANDOFF_PREFIX + match["agent"].lower(), {"reason": question})
    if (call := conversation_recall_call(text, now)) is not None:
        return call
    if _FILES.search(text):
        topic = _FILES_TOPIC.match(text)
        query = clean_fact(topic["topic"]) if topic else ""
        if len(query) >= 2:
            return ToolCallReply(FILES_TOOL, {"query": query[:200]})
    if _EVENTS.search(text):
        return _events_call(text, now)
    if not _CALENDAR.search(text) and (call := _health_call(text)) is not None:
        return call
    if _CALENDAR.search(text):
        return _freebusy_call(now)
    return None


_PAST_CONVERSATION = re.compile(
    r"\b(?:what|when)\s+did\s+(?:I|we)\s+(?:tell|say|mention|ask|write|talk|discuss)\b"
    r"|\bremind\s+me\s+what\s+(?:I|we)\s+(?:told|said|asked|wrote|discussed)\b",
    re.IGNORECASE,
)
_AGENT_NAMED = re.compile(
    r"\b(?P<agent>[a-z][a-z0-9_]{0,31})\s+(?:coach|agent|assistant|expert)\b", re.IGNORECASE
)
_PAST_TOPIC = re.compile(r"\babout\s+(?P<topic>.+)$", re.IGNORECASE | re.DOTALL)
_PERIODS = (  # (words, days back from today; 0 = today only), the first that matches
    (re.compile(r"\b(?:last|past|this)\s+week\b", re.IGNORECASE), 7),
    (re.compile(r"\b(?:last|past|this)\s+month\b", re.IGNORECASE), 30),
    (re.compile(r"\byesterday\b", re.IGNORECASE), -1),
    (re.compile(r"\btoday\b", re.IGNORECASE), 0),
)


def conversation_recall_call(text: str, now: datetime) -> ToolCallReply | None:
    """`recall_conversations` for a question about what the person said in earlier conversations, else
    None. The period words are dates in the arguments, not part of the query."""
    if not _PAST_CONVERSATION.search(text):
        return None
    topic = _PAST_TOPIC.search(text)
    query = topic["topic"] if topic else text
    arguments: dict[str, Any] = {}
    today = now.astimezone(UTC).date()
    for pattern, days in _PERIODS:
        if pattern.search(text):
            query = pattern.sub(" ", query)
            first = today - timedelta(days=max(days, 1) if days else 0)
            last = today - timedelta(days=1) if days < 0 else today
            arguments["since"], arguments["until"] = first.isoformat(), last.isoformat()
            break
    query = " ".join(clean_fact(query).split())
    if len(query) < 2:
        return None
    if agent := _AGENT_NAMED.search(text):
        arguments["agent"] = agent["agent"].lower()
    return ToolCallReply(RECALL_CONVERSATIONS_TOOL, {"query": query[:200], **arguments})


def _freebusy_call(now: datetime) -> ToolCallReply:
    start = now.astimezone(UTC).replace(microsecond=0)
    return ToolCallReply(CALENDAR_TOOL, {"start": iso_utc(start), "end": iso_utc(start + CALENDAR_WINDOW)})


def _events_call(text: str, now: datetime) -> ToolCallReply:
    """`calendar_events` over the UTC day the question names (tomorrow, today), else the next 7 days."""
    moment = now.astimezone(UTC).replace(microsecond=0)
    midnight = moment.replace(hour=0, minute=0, second=0)
    if _TOMORROW.search(text):
        start, end = midnight + timedelta(days=1), midnight + timedelta(days=2)
    elif _TODAY.search(text):
        start, end = midnight, midnight + timedelta(days=1)
    else:
        start, end = moment, moment + CALENDAR_WINDOW
    return ToolCallReply(EVENTS_TOOL, {"start": iso_utc(start), "end": iso_utc(end)})


def _health_call(text: str) -> ToolCallReply | None:
    """`wearable_stats{metric, range}` for a question about the person's own health data: the metric its
    words name, over today, yesterday (or last night), 30 or 90 days when it says so, else 7 days."""
    if not _HEALTH_QUESTION.search(text):
        return None
    metric = next((name for pattern, name in _HEALTH_METRICS if pattern.search(text)), None)
    if metric is None:
        return None
    if _YESTERDAY.search(text) and metric != "sleep_minutes":
        period = "yesterday"
    elif _TODAY.search(text) or (metric == "sleep_minutes" and _YESTERDAY.search(text)):
        period = "today"  # the night that ended this morning
    elif _QUARTER.search(text):
        period = "90d"
    elif _MONTH.search(text):
        period = "30d"
    else:
        period = "7d"
    return ToolCallReply(HEALTH_TOOL, {"metric": metric, "range": period})


def clean_fact(fact: str) -> str:
    """`that my goal is 2000 kcal.` → `my goal is 2000 kcal`: no leading "that", quotes or trailing
    sentence punctuation, whitespace collapsed."""
    fact = _LEADING_THAT.sub("", " ".join(fact.split())).rstrip(_TRAILING)
    if len(fact) >= 2 and fact[0] in _OPENING_QUOTES and fact[-1] in _CLOSING_QUOTES:
        fact = fact[1:-1].strip().rstrip(_TRAILING)
    return fact


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z` suffix, e.g. `2025-03-01T09:30:00Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _after_tool_result(messages: Sequence[Message]) -> TextReply:
    result = messages[-1]
    name, arguments = _originating_call(messages, result.get("tool_call_id"))
    content = content_text(result.get("content"))
    if name is not None and name.startswith(HANDOFF_PREFIX):
        # The receiving agent answers the question the user asked with `ask <agent> <question>`.
        return memory_answer(messages)
    failure = _tool_error(content)
    if failure is not None:
        return TextReply(f"Sorry — that didn't work: {failure}")
    if name == REMEMBER_TOOL:
        fact = str(arguments.get("text", "")).strip()
        return TextReply(f"Got it — I'll remember that {fact}." if fact else "Got it — I'll remember that.")
    if name == FORGET_TOOL:
        # Say what happened: a forget that matched nothing must not read as done.
        if _decode_arguments(content).get("forgotten", 0):
            return TextReply("Done — I've forgotten that.")
        return TextReply("I couldn't find anything like that to forget.")
    if name == CALENDAR_TOOL:
        return TextReply(_calendar_summary(content, arguments))
    if name == EVENTS_TOOL:
        return TextReply(_events_summary(content, arguments))
    if name == FILES_TOOL:
        return TextReply(_files_summary(content))
    if name == HEALTH_TOOL:
        return TextReply(_health_summary(content))
    if name == RECALL_CONVERSATIONS_TOOL:
        # Asked about past conversations, everything found is quoted; a question no memory answered is
        # answered only by what the person stated (not by their questions, nor by the agents' answers).
        asked = bool(_PAST_CONVERSATION.search(last_user_text(messages)))
        summary = _past_messages_summary(content, statements_only=not asked)
        if summary is None:
            return TextReply("I couldn't find that in our past conversations." if asked else UNKNOWN_ANSWER)
        return TextReply(summary)
    return TextReply("Done.")


PAST_MESSAGES_NAMED = 3
"""Past messages a summary quotes at most."""


def _past_messages_summary(content: str, *, statements_only: bool = False) -> str | None:
    """The best past messages, each with its day and who said it to whom (with `statements_only`, the
    person's messages that are not questions); None when none was found."""
    messages = [
        message
        for message in _decode_arguments(content).get("messages") or []
        if isinstance(message, Mapping)
        and not (
            statements_only
            and (
                message.get("role") != "user"
                or all(said.endswith("?") for said in sentences(str(message.get("text", ""))))
            )
        )
    ]
    quoted = []
    for message in messages[:PAST_MESSAGES_NAMED]:
        day = str(message.get("at", ""))[:10]
        agent = str(message.get("agent", "")) or "the agent"
        said = " ".join(str(message.get("text", "")).split())
        who = f"you told {agent}" if message.get("role") == "user" else f"{agent} said"
        quoted.append(f"on {day} {who}: “{said}”")
    if not quoted:
        return None
    return "From our past conversations: " + "; ".join(quoted) + "."


def _originating_call(messages: Sequence[Message], tool_call_id: Any) -> tuple[str | None, dict[str, Any]]:
    """Name and decoded arguments of the assistant tool call a tool result answers (the latest
    call when the id matches none)."""
    fallback: tuple[str | None, dict[str, Any]] | None = None
    for message in reversed(messages[:-1]):
        if message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for call in calls:
            if not isinstance(call, Mapping):
                continue
            function = call.get("function")
            if not isinstance(function, Mapping):
                continue
            found = (_str_or_none(function.get("name")), _decode_arguments(function.get("arguments")))
            if call.get("id") == tool_call_id:
                return found
            if fallback is None:
                fallback = found
    return fallback if fallback is not None else (None, {})


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _decode_arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str):
        try:
            decoded = json.loads(raw)
        except ValueError:
            return {}
        if isinstance(decoded, dict):
            return decoded
    return {}


def _tool_error(content: str) -> str | None:
    """The message of a tool result shaped `{"error": ...}`, if it is one."""
    try:
        decoded = json.loads(content)
    except ValueError:
        return None
    if not isinstance(decoded, dict) or not decoded.get("error"):
        return None
    error = decoded["error"]
    if isinstance(error, Mapping):
        error = error.get("message") or "the tool failed"
    return str(error).rstrip(".") + "."


def _calendar_summary(content: str, arguments: Mapping[str, Any]) -> str:
    try:
        decoded: Any = json.loads(content)
    except ValueError:
        decoded = None
    start = _readable_time(arguments.get("start"))
    end = _readable_time(arguments.get("end"))
    if isinstance(decoded, Mapping):
        start = _readable_time(decoded.get("start")) or start
        end = _readable_time(decoded.get("end")) or end
    window = f" between {start} and {end}" if start and end else ""
    blocks = _busy_blocks(
        decoded.get("busy") if isinstance(decoded, Mapping) and "busy" in decoded else decoded
    )
    if blocks is None:
        summary = f"I checked your calendar{window}."
    elif blocks == 0:
        summary = f"You have no busy blocks{window}."
    else:
        noun = "block" if blocks == 1 else "blocks"
        summary = f"You have {blocks} busy {noun}{window}."
    return summary + _caveats(decoded)


def _events_summary(content: str, arguments: Mapping[str, Any]) -> str:
    """ "You have 2 events between …: standup (2026-12-03 09:00–10:00 UTC); Holiday (all day
    2026-12-03)." and what could not answer."""
    try:
        decoded: Any = json.loads(content)
    except ValueError:
        decoded = None
    listed = decoded.get("events") if isinstance(decoded, Mapping) else None
    start = _readable_time(decoded.get("start") if isinstance(decoded, Mapping) else None)
    end = _readable_time(decoded.get("end") if isinstance(decoded, Mapping) else None)
    start, end = start or _readable_time(arguments.get("start")), end or _readable_time(arguments.get("end"))
    window = f" between {start} and {end}" if start and end else ""
    if not isinstance(listed, list):
        return f"I checked your calendar{window}." + _caveats(decoded)
    named = [_event_words(e) for e in listed if isinstance(e, Mapping)]
    if not named:
        return f"You have no events{window}." + _caveats(decoded)
    more = len(named) - EVENTS_NAMED
    shown = "; ".join(named[:EVENTS_NAMED]) + (f"; and {more} more" if more > 0 else "")
    if decoded.get("truncated"):
        shown += "; and there are more after these"
    count = f"{len(named)} event{'s' if len(named) != 1 else ''}"
    return f"You have {count}{window}: {shown}." + _caveats(decoded)


def _event_words(event: Mapping[str, Any]) -> str:
    """`standup (2026-12-03 09:00–10:00 UTC)`, `Holiday (all day 2026-12-03)`."""
    title = str(event.get("title") or "(no title)")
    if event.get("all_day"):
        first, after = str(event.get("start_date", "")), str(event.get("end_date", ""))
        try:
            last = (date.fromisoformat(after) - timedelta(days=1)).isoformat()
        except ValueError:
            last = first
        days = first if last <= first else f"{first} to {last}"
        return f"{title} (all day {days})"
    begins, ends = _readable_time(event.get("start")), _readable_time(event.get("end"))
    if not begins:
        return title
    if ends and ends[:10] == begins[:10]:  # the same day: "09:00–10:00 UTC"
        return f"{title} ({begins.removesuffix(' UTC')}–{ends[11:]})"
    return f"{title} ({begins}{' – ' + ends if ends else ''})"


def _files_summary(content: str) -> str:
    try:
        decoded: Any = json.loads(content)
    except ValueError:
        decoded = None
    files = decoded.get("files") if isinstance(decoded, Mapping) else None
    if not isinstance(files, list):
        return "I looked through your files."
    names = [str(f.get("name")) for f in files if isinstance(f, Mapping) and f.get("name")]
    if not names:
        summary = "I found no matching files."
    else:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        summary = f"I found {len(names)} file{'s' if len(names) != 1 else ''}: {shown}."
    return summary + _caveats(decoded)


_METRIC_WORDS = {
    "steps": "steps",
    "heart_rate": "heart rate",
    "resting_heart_rate": "resting heart rate",
    "sleep_minutes": "sleep",
    "active_energy_kcal": "active energy",
    "weight_kg": "weight",
    "workout_minutes": "workouts",
}
_RANGE_WORDS = {
    "today": "today",
    "yesterday": "yesterday",
    "7d": "over the last 7 days",
    "30d": "over the last 30 days",
    "90d": "over the last 90 days",
}


def _amount(value: Any, unit: str) -> str:
    number = float(value)
    if unit == "min":
        hours, minutes = divmod(round(number), 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
    whole = number.is_integer() or unit in ("count", "kcal") or number >= 100
    shown = f"{number:,.0f}" if whole else f"{number:,.1f}"
    return f"{shown} {'steps' if unit == 'count' else unit}"


def _health_summary(content: str) -> str:
    """`wearable_stats`' result in a sentence: the day's value, or the range's total (or average) with its
    lowest and highest day; no data said as such."""
    decoded = _decode_arguments(content)
    metric = str(decoded.get("metric", ""))
    what = _METRIC_WORDS.get(metric, metric.replace("_", " "))
    when = _RANGE_WORDS.get(str(decoded.get("range", "")), "")
    unit = str(decoded.get("unit", ""))
    days = decoded.get("days") if isinstance(decoded.get("days"), list) else []
    if not days:
        return f"I found no {what} data {when}.".replace("  ", " ") + _caveats(decoded)
    average = _amount(decoded.get("average_per_day", 0), unit)
    lowest, highest = (_amount(decoded.get(key, 0), unit) for key in ("lowest", "highest"))
    span = f"lowest {lowest}, highest {highest}"
    if len(days) == 1:
        summary = f"Your {what} {when}: {_amount(days[0].get('value', 0), unit)}."
    elif "total" in decoded:
        total = _amount(decoded["total"], unit)
        summary = f"Your {what} {when}: {total} in total, {average} a day on average ({span})."
    else:
        summary = f"Your {what} {when}: {average} on average ({span})."
    return summary + _caveats(decoded)


def _caveats(decoded: Any) -> str:
    """What a result says the person should know: calendars or drives that did not answer (reconnect one,
    try again later), or that none is connected."""
    if not isinstance(decoded, Mapping):
        return ""
    said = [
        str(item["message"])
        for item in decoded.get("unavailable") or ()
        if isinstance(item, Mapping) and item.get("message")
    ]
    if isinstance(decoded.get("note"), str):
        said.append(decoded["note"])
    return "".join(f" {sentence}" for sentence in said)


_BUSY_KEYS = ("busy", "busy_blocks", "blocks", "intervals", "events", "items")


def _busy_blocks(decoded: Any) -> int | None:
    """How many busy intervals a free/busy result lists, wherever they sit; None if it lists none."""
    if isinstance(decoded, list):
        return len(decoded)
    if not isinstance(decoded, Mapping):
        return None
    for key in _BUSY_KEYS:
        value = decoded.get(key)
        if isinstance(value, list):
            return len(value)
    counts = [count for value in decoded.values() if (count := _busy_blocks(value)) is not None]
    return sum(counts) if counts else None


def _readable_time(value: Any) -> str:
    """`2025-03-01T09:30:00Z` → `2025-03-01 09:30 UTC`; anything unparseable as given (or "")."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- fact extraction (issue 17) --------------------------------------------------------------------------

FACTS_SCHEMA = "athena_memory_facts"
"""`response_format.json_schema.name` of the memory service's extraction requests (`memory.facts`)."""
FACT_CONFIDENCE = 0.9
"""The confidence the offline model gives every fact it finds by rule."""

_VALUE_END = r"(?=\s*(?:[.,;!?]|\band\b|\bbut\b|\bso\b|\bplease\b|$))"
_DIETS = r"vegetarian|vegan|pescatarian|keto|gluten[- ]free|lactose[- ]intolerant"
_FACT_RULES: tuple[tuple[re.Pattern[str], str, str, bool], ...] = (
    # (pattern, key (may use {slug}), text template ({value}), ended)
    (
        re.compile(
            rf"\bI(?:'m|’m| am)\s+(?:no\s+longer|not)\s+(?:a\s+)?(?P<value>{_DIETS})(?:\s+any\s*more)?\b",
            re.IGNORECASE,
        ),
        "diet",
        "The user is no longer {value}.",
        True,
    ),
    (
        re.compile(rf"\bI(?:'m|’m| am)\s+(?:a\s+|now\s+|actually\s+)?(?P<value>{_DIETS})\b", re.IGNORECASE),
        "diet",
        "The user is {value}.",
        False,
    ),
    (
        re.compile(rf"\bI(?:'m|’m| am)\s+allergic\s+to\s+(?P<value>[^.,;!?]+?){_VALUE_END}", re.IGNORECASE),
        "allergy_{slug}",
        "The user is allergic to {value}.",
        False,
    ),
    (
        re.compile(
            r"\bmy\s+(?:daily\s+)?(?:calorie\s+|caloric\s+|kcal\s+)?goal\s+is\s+(?:now\s+)?"
            r"(?P<value>\d[\d,.]*)\s*(?:kcal|calories)\b",
            re.IGNORECASE,
        ),
        "caloric_goal",
        "The user's caloric goal is {value} kcal.",
        False,
    ),
    (
        re.compile(
            rf"\bI\s+(?:now\s+)?(?:live|moved)\s+(?:in|to)\s+(?P<value>[A-Z][^.,;!?]*?){_VALUE_END}",
            re.IGNORECASE,
        ),
        "home_city",
        "The user lives in {value}.",
        False,
    ),
    (
        re.compile(rf"\b(?:please\s+)?call\s+me\s+(?P<value>[^.,;!?]+?){_VALUE_END}", re.IGNORECASE),
        "preferred_name",
        "The user wants to be called {value}.",
        False,
    ),
)


def extract_facts(text: str) -> list[dict[str, Any]]:
    """The durable facts a person's message states, as the extraction schema has them (`text`, `key`,
    `scope`, `confidence`, `ended`), by rule:

    - "I'm vegetarian" (vegan, pescatarian, keto, gluten-free, lactose-intolerant; "I am a ...") → key
      `diet`, "The user is vegetarian."; "I'm no longer vegetarian" / "I'm not vegan anymore" → `diet`
      ended;
    - "I'm allergic to peanuts" → key `allergy_peanuts`, "The user is allergic to peanuts.";
    - "my goal is now 1,800 kcal" ("my daily calorie goal is 2000 calories") → key `caloric_goal`,
      "The user's caloric goal is 1,800 kcal." (the number as written);
    - "I live in Lisbon" / "I moved to Porto" → key `home_city`, "The user lives in Lisbon.";
    - "call me Sam" → key `preferred_name`, "The user wants to be called Sam.".

    Every fact is user-wide with confidence `FACT_CONFIDENCE`; one per key (the first rule matching it).
    A message asking to `remember`/`note`/`forget` something states nothing here (the tools store it).
    """
    if _REMEMBER.match(text.strip()) or _FORGET.match(text.strip()):
        return []
    facts: list[dict[str, Any]] = []
    keys: set[str] = set()
    for pattern, key_template, template, ended in _FACT_RULES:
        match = pattern.search(text)
        if match is None:
            continue
        value = " ".join(match["value"].split()).strip(_TRAILING)
        if not value:
            continue
        slug = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")[:40] or "other"
        key = key_template.format(slug=slug)
        if key in keys:
            continue
        keys.add(key)
        facts.append(
            {
                "text": template.format(value=value),
                "key": key,
                "scope": "user",
                "confidence": FACT_CONFIDENCE,
                "ended": ended,
            }
        )
    return facts


def facts_reply(messages: Sequence[Message]) -> TextReply:
    """The answer to an extraction request: `{"facts": [...]}` for its last user message."""
    return TextReply(json.dumps({"facts": extract_facts(last_user_text(messages))}, ensure_ascii=False))


def response_schema_name(response_format: Any) -> str | None:
    """The `json_schema.name` of a Chat Completions `response_format`, if it asks for one."""
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema")
        if isinstance(schema, Mapping) and isinstance(schema.get("name"), str):
            return str(schema["name"])
    return None
