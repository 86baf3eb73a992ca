"""Prompt packaging (pure): what the model sees for one step of a turn, in this order —

1. the answering agent's system prompt, and a system message with today's date (UTC), from which the
   model turns "last week" into dates (tools such as `recall_conversations` take dates);
2. one system message `Memories:` with a `- <text>` line per recalled memory (only when there are any);
3. the recent history of the conversation (user and assistant texts);
4. the user's message through the agent's user-prompt template;
5. this turn's tool calls and tool results so far.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date

from orchestrator.catalog import AgentSpec
from orchestrator.model import ChatMessage, ModelToolCall
from orchestrator.records import HistoryMessage, Memory, Role

MEMORIES_HEADER = "Memories:"


def memories_message(memories: Sequence[Memory]) -> ChatMessage | None:
    """The `Memories:` system message, or None without memories. Each memory stays on its own line; one
    that no longer holds says when it did: "- <text> (from 2026-02-01 until 2026-03-15)"."""
    lines = [" ".join(memory.text.split()) + _validity(memory) for memory in memories]
    lines = [line for line in lines if line]
    if not lines:
        return None
    return {"role": "system", "content": "\n".join([MEMORIES_HEADER, *(f"- {line}" for line in lines)])}


def _validity(memory: Memory) -> str:
    if not memory.valid_to:
        return ""
    since = f"from {memory.valid_from} " if memory.valid_from else ""
    return f" ({since}until {memory.valid_to})"


def history_messages(history: Sequence[HistoryMessage]) -> list[ChatMessage]:
    """Earlier messages as plain user/assistant texts (empty ones, such as failed turns that produced
    nothing, are left out)."""
    return [
        {"role": "user" if message.role is Role.USER else "assistant", "content": message.content}
        for message in history
        if message.content.strip()
    ]


def today_message(today: date) -> ChatMessage:
    """The system message saying what day it is."""
    return {"role": "system", "content": f"Today is {today.isoformat()} ({today:%A}), UTC."}


def build_prompt(
    agent: AgentSpec,
    memories: Sequence[Memory],
    history: Sequence[HistoryMessage],
    user_text: str,
    transcript: Sequence[ChatMessage] = (),
    today: date | None = None,
) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = [{"role": "system", "content": agent.system_prompt}]
    if today is not None:
        messages.append(today_message(today))
    recalled = memories_message(memories)
    if recalled is not None:
        messages.append(recalled)
    messages.extend(history_messages(history))
    messages.append({"role": "user", "content": agent.render_user_prompt(user_text)})
    messages.extend(transcript)
    return tuple(messages)


def tool_calls_message(text: str, calls: Sequence[ModelToolCall]) -> ChatMessage:
    """The assistant message of a step that called tools, as the model must see it next step."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json or "{}"},
            }
            for call in calls
        ],
    }


def tool_result_message(call_id: str, result_json: str) -> ChatMessage:
    return {"role": "tool", "tool_call_id": call_id, "content": result_json}


def handoff_result(to_agent: AgentSpec) -> str:
    return json.dumps({"handoff": to_agent.id, "agent": to_agent.name}, ensure_ascii=False)
