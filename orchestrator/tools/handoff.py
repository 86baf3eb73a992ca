"""Handoffs as tools: one `handoff_to_<agent_id>` per other agent the user may talk to.

The turn runs handoffs itself (they change who answers); this module only names and describes them.
"""

from __future__ import annotations

from functools import cache

from orchestrator.catalog import AgentSpec
from orchestrator.model import ToolSpec

PREFIX = "handoff_to_"


@cache  # one per agent of the catalog, offered on every model call
def handoff_tool(agent: AgentSpec) -> ToolSpec:
    return ToolSpec(
        PREFIX + agent.id,
        f"Hand the conversation to {agent.name}: {agent.description} They answer the user from here on.",
        {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "maxLength": 1000, "description": "Why, in one line."}
            },
            "required": ["reason"],
            "additionalProperties": False,
        },
    )


def handoff_target(tool_name: str) -> str | None:
    """The agent id a handoff tool name points at; None for other tools."""
    if tool_name.startswith(PREFIX) and len(tool_name) > len(PREFIX):
        return tool_name[len(PREFIX) :]
    return None
