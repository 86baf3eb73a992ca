"""Memory tools: remember, recall and forget through the memory service, as the calling agent."""

from __future__ import annotations

from typing import Any

from orchestrator.records import Scope
from orchestrator.tools.registry import Tool, ToolContext, string_argument

REMEMBER = "remember_memory"
RECALL = "recall_memory"
FORGET = "forget_memory"

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
    ]
