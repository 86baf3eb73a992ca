"""The agent catalog file and its start-up sync."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import Unauthenticated, Unavailable
from orchestrator.app import checked, sync_catalog
from orchestrator.catalog import AgentSpec, Catalog, CatalogError
from orchestrator.prompt import build_prompt, memories_message
from orchestrator.records import HistoryMessage, Memory, Role, Scope


def test_the_shipped_catalog_has_the_four_agents_with_everything_filled_in() -> None:
    catalog = Catalog.load()
    assert [agent.id for agent in catalog] == ["athena", "nutrition", "focus", "sme"]
    assert len({agent.accent_token for agent in catalog}) == 4
    for agent in catalog:
        assert agent.enabled
        assert agent.accent_token.startswith("accent-")
        assert "{message}" in agent.user_prompt


def _entry(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "coach",
        "name": "Coach",
        "description": "Coaches.",
        "system_prompt": "You coach.",
        "user_prompt": "Question: {message}",
        "model": "gpt-4o-mini",
        "accent_token": "accent-red",
        **overrides,
    }


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"agents": []}, "no agents"),
        ({"agent": []}, '"agents" list'),
        ({"agents": [_entry(id="Bad Id")]}, "agents[0].id"),
        ({"agents": [_entry(user_prompt="no placeholder")]}, "{message}"),
        ({"agents": [_entry(name="")]}, "agents[0].name"),
        ({"agents": [_entry(enabled="yes")]}, "enabled"),
        ({"agents": [_entry(), _entry()]}, "unique"),
    ],
)
def test_malformed_catalogs_are_refused_with_the_field(document: Any, problem: str) -> None:
    with pytest.raises(
        CatalogError, match=problem.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")
    ):
        checked(Catalog.parse(document))  # the form of each entry, then the contract's field rules


def test_a_catalog_file_can_replace_the_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"agents": [_entry(enabled=False)]}))
    [agent] = list(Catalog.load(path))
    assert (agent.id, agent.enabled) == ("coach", False)
    assert agent.render_user_prompt("a {b} c") == "Question: a {b} c"


class _FlakyStore:
    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or Unavailable("memory is starting")
        self.calls: list[tuple[list[str], tuple[tuple[str, str], ...]]] = []

    async def sync_agents(self, agents: Sequence[AgentSpec], metadata: Sequence[tuple[str, str]]) -> None:
        self.calls.append(([agent.id for agent in agents], tuple(metadata)))
        if len(self.calls) <= self.failures:
            raise self.error


async def test_the_sync_retries_until_memory_answers_and_sends_the_credentials() -> None:
    store = _FlakyStore(failures=2)
    metadata = [("x-athena-service-key", "k")]
    assert await sync_catalog(store, Catalog.load(), metadata, within=5, first_delay=0.001)
    assert len(store.calls) == 3
    assert store.calls[-1] == (["athena", "nutrition", "focus", "sme"], (("x-athena-service-key", "k"),))


async def test_the_sync_does_not_retry_a_refused_credential_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FlakyStore(failures=5, error=Unauthenticated("this internal method needs the service key"))
    assert not await sync_catalog(store, Catalog.load(), [], within=5, first_delay=0.001)
    assert len(store.calls) == 1
    assert "memory refused the agent catalog" in caplog.text


def test_memories_are_one_line_each_under_the_header() -> None:
    message = memories_message(
        [
            Memory("1", "likes\ntea", Scope.USER),
            Memory("2", "  ", Scope.USER),
            Memory("3", "runs", Scope.AGENT),
        ]
    )
    assert message == {"role": "system", "content": "Memories:\n- likes tea\n- runs"}
    assert memories_message([]) is None


def test_history_skips_empty_messages() -> None:
    agent = Catalog.load().get("athena")
    assert agent is not None
    history = [
        HistoryMessage("1", Role.USER, "athena", "hi"),
        HistoryMessage("2", Role.ASSISTANT, "athena", "", failed=True),
    ]
    messages = build_prompt(agent, [], history, "again")
    assert [m["content"] for m in messages[1:]] == ["hi", "again"]
