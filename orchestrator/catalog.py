"""The agent catalog: a file in the repo (`agents.json`), loaded at start-up and seeded into memory.

The file is the source of truth for prompts and models; memory's `agents` table mirrors it (SyncAgents at
start-up, so edits apply on restart) and adds each user's enabled state. Field rules (the agent id's form
among them) are the contract's: `memory.v1.AgentDefinition`'s annotations, checked when the catalog is
loaded by the service (`orchestrator.app`) and again by memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

MESSAGE_PLACEHOLDER = "{message}"
"""Where a user-prompt template puts the user's message."""


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the agent and field."""


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent of the catalog."""

    id: str
    """Stable id, for example "nutrition"."""
    name: str
    """Display name."""
    description: str
    """One sentence on what the agent helps with (also the description of its handoff tool)."""
    system_prompt: str
    """First system message of every prompt of this agent."""
    user_prompt: str
    """Template wrapping the user's message at `{message}`."""
    model: str
    """Model name sent to the OpenAI-compatible endpoint (unless settings override it)."""
    accent_token: str
    """Design token of the agent's accent colour, for example "accent-green"."""
    enabled: bool = True
    """Whether the agent is available at all."""

    def render_user_prompt(self, message: str) -> str:
        """The user's message through the template (plain replacement: braces in it stay as typed)."""
        return self.user_prompt.replace(MESSAGE_PLACEHOLDER, message)


_FIELDS = ("id", "name", "description", "system_prompt", "user_prompt", "model", "accent_token")


class Catalog:
    """The agents, in display order."""

    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        self._agents = {agent.id: agent for agent in agents}
        if len(self._agents) != len(agents):
            raise CatalogError("agent ids must be unique")

    def __iter__(self) -> Iterator[AgentSpec]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    def get(self, agent_id: str) -> AgentSpec | None:
        return self._agents.get(agent_id)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        """The catalog at `path`, or the one shipped with the package."""
        if path is None:
            text = resources.files("orchestrator").joinpath("agents.json").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise CatalogError(f"catalog is not valid JSON: {exc}") from exc
        return cls.parse(document)

    @classmethod
    def parse(cls, document: Any) -> Catalog:
        if not isinstance(document, Mapping) or not isinstance(document.get("agents"), list):
            raise CatalogError('catalog must be an object with an "agents" list')
        agents = [_agent(entry, index) for index, entry in enumerate(document["agents"])]
        if not agents:
            raise CatalogError("catalog has no agents")
        return cls(agents)


def _agent(entry: Any, index: int) -> AgentSpec:
    if not isinstance(entry, Mapping):
        raise CatalogError(f"agents[{index}] must be an object")
    values: dict[str, str] = {}
    for name in _FIELDS:
        value = entry.get(name)
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(f"agents[{index}].{name} must be a non-empty string")
        values[name] = value
    if MESSAGE_PLACEHOLDER not in values["user_prompt"]:
        raise CatalogError(f"agents[{index}].user_prompt must contain {MESSAGE_PLACEHOLDER}")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise CatalogError(f"agents[{index}].enabled must be a boolean")
    return AgentSpec(enabled=enabled, **values)
