"""Memory tools: remember, recall and forget through the memory service, as the calling agent, and recall
of the person's past conversations (`recall_conversations`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from mesh.errors import InvalidArgument
from orchestrator.records import Scope
from orchestrator.tools.registry import Tool, ToolContext, string_argument

REMEMBER = "remember_memory"
RECALL = "recall_memory"
FORGET = "forget_memory"
RECALL_CONVERSATIONS = "recall_conversations"

CONVERSATION_RESULTS = 5
"""Past messages a `recall_conversations` call answers at most."""
_DAY = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$",
}

_TEXT = {"type": "string", "minLength": 1, "maxLength": 4000}


async def _remember(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    stored = await context.memory.remember(
        string_argument(arguments, "text"),
        Scope(arguments["scope"]),
        context.agent_id,
        str(arguments.get("key", "")),
    )
    return {"id": stored.id, "text": stored.text, "scope": stored.scope.value, "created": stored.created}


async def _recall(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    memories = await context.memory.recall(string_argument(arguments, "query"), context.agent_id, 8)
    return {
        "memories": [
            {
                "id": memory.id,
                "text": memory.text,
                "scope": memory.scope.value,
                "score": round(memory.score, 4),
            }
            for memory in memories
        ]
    }


def window_bound(value: str, field_name: str, *, end: bool) -> datetime:
    """A `since`/`until` argument as a moment: a date is a whole UTC day, both ends included (`until`
    2026-03-07 ends at the start of 2026-03-08); a date-time without a zone is UTC."""
    try:
        if "T" not in value:
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(field_name, "must be a date (YYYY-MM-DD) or an ISO 8601 date-time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _recall_conversations(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    since = arguments.get("since")
    until = arguments.get("until")
    found = await context.memory.recall_conversations(
        string_argument(arguments, "query"),
        agent_id=str(arguments["agent"]).strip() or None if "agent" in arguments else None,
        since=window_bound(str(since), "since", end=False) if since else None,
        until=window_bound(str(until), "until", end=True) if until else None,
        k=CONVERSATION_RESULTS,
        exclude_conversation_id=context.conversation_id,
    )
    return {
        "messages": [
            {
                "conversation_id": past.conversation_id,
                "role": past.role.value,
                "agent": past.agent_id,
                "at": past.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "text": past.text,
                "stage": past.stage,
            }
            for past in found
        ]
    }


async def _forget(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    forgotten = await context.memory.forget(string_argument(arguments, "query"), context.agent_id)
    return {"forgotten": len(forgotten), "ids": forgotten}


def memory_tools() -> list[Tool]:
    return [
        Tool(
            REMEMBER,
            "Store a fact about the user for later turns. scope 'user' = every agent may use it (goals, "
            "preferences); 'agent' = only you (logs, tasks). A key replaces the older value of that fact.",
            {
                "type": "object",
                "properties": {
                    "text": {**_TEXT, "description": "The fact, as a short sentence."},
                    "scope": {"type": "string", "enum": ["user", "agent"]},
                    "key": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                },
                "required": ["text", "scope"],
                "additionalProperties": False,
            },
            _remember,
        ),
        Tool(
            RECALL,
            "Search what you remember about the user (their user-wide memories and your own).",
            {
                "type": "object",
                "properties": {"query": {**_TEXT, "description": "What to look for."}},
                "required": ["query"],
                "additionalProperties": False,
            },
            _recall,
        ),
        Tool(
            FORGET,
            "Delete the memory that best matches the query, when the user asks you to forget something.",
            {
                "type": "object",
                "properties": {"query": {**_TEXT, "description": "The fact to forget."}},
                "required": ["query"],
                "additionalProperties": False,
            },
            _forget,
        ),
        Tool(
            RECALL_CONVERSATIONS,
            "Search the user's past conversations (with you or other agents) for what was said: their own "
            "messages and the agents' answers, best match first. Use it when they ask what they told or "
            "asked an agent before. Turn relative times into dates from today's date in the prompt "
            "(UTC; a date covers the whole day, both ends included).",
            {
                "type": "object",
                "properties": {
                    "query": {**_TEXT, "description": "What was said, in a few words (the topic)."},
                    "agent": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_]{0,31}$",
                        "description": "Only conversations with this agent id.",
                    },
                    "since": {**_DAY, "description": "First day (YYYY-MM-DD) or moment to search from."},
                    "until": {**_DAY, "description": "Last day (YYYY-MM-DD) or moment to search to."},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            _recall_conversations,
        ),
    ]
