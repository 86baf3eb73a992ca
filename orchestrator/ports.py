"""What the orchestrator needs from the rest of the mesh, as protocols of plain Python records.

Domain modules (`turn`, `prompt`, `tools`, `catalog`) depend on these and on `orchestrator.records` only;
the gRPC adapter is `orchestrator.memory_client.GrpcMemoryGateway`, and tests use the in-process double
in `tests/doubles/memory.py`, both held to one contract suite (tests/service/test_memory_gateway_contract.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from orchestrator.catalog import AgentSpec
from orchestrator.records import (
    AssistantMessage,
    Memory,
    NewTurn,
    PastMessage,
    Scope,
    StoredMemory,
    TurnStart,
)


class MemoryGateway(Protocol):
    """What a turn and its tools ask of memory, always on behalf of the current caller."""

    async def start_turn(
        self, turn: NewTurn, history_messages: int, lease_seconds: float = 6.0, recall_k: int | None = None
    ) -> TurnStart:
        """Checks the caller may talk to `turn.agent_id` (FailedPrecondition otherwise) and stores the user
        message (NotFound for a conversation that is not the caller's), answering up to `history_messages`
        earlier messages; the caller then holds the turn for `lease_seconds`. A turn repeating an earlier
        one (its client request id) is found instead: done, running, or taken over (`TurnState`); the
        same id with another text, agent or conversation is InvalidArgument. With `recall_k`, up to that
        many memories are recalled for the message at the same time (`TurnStart.memories`); a failing
        recall sets `recall_failed` instead of failing the turn."""
        ...

    async def renew_turn(self, message_id: str, lease_seconds: float) -> None:
        """Holds the turn of user message `message_id` for `lease_seconds` more."""
        ...

    async def append_assistant_message(
        self, conversation_id: str, message: AssistantMessage, *, detached: bool = False
    ) -> None:
        """Stores the answer. `detached` writes outlive the caller's deadline (storing a failed turn)."""
        ...

    async def recall(self, query: str, agent_id: str, k: int) -> list[Memory]: ...

    async def recall_conversations(
        self,
        query: str,
        *,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        k: int = 8,
        exclude_conversation_id: str = "",
    ) -> list[PastMessage]:
        """The caller's past messages matching `query` (of one agent, within [since, until), not of the
        conversation `exclude_conversation_id`), best first."""
        ...

    async def remember(self, text: str, scope: Scope, agent_id: str, key: str = "") -> StoredMemory: ...

    async def forget(self, query: str, agent_id: str) -> list[str]:
        """Deletes the memory that best fits `query`; returns the ids deleted."""
        ...

    async def put_ephemeral(self, namespace: str, key: str, value_json: str, ttl_seconds: float) -> None: ...

    async def get_ephemeral(self, namespace: str, key: str) -> str | None: ...


class AnswerOutbox(Protocol):
    """Keeps answers memory could not store, durably, until they are delivered to it."""

    async def put(self, user_id: str, conversation_id: str, message: AssistantMessage) -> None:
        """Keeps `message` of `user_id`'s conversation; raises Unavailable when it cannot either."""
        ...


class AgentStore(Protocol):
    """Where the catalog is seeded (memory's AgentService), for no user: `credentials` is the metadata
    carrying the deployment's service key."""

    async def sync_agents(
        self, agents: Sequence[AgentSpec], credentials: Sequence[tuple[str, str]]
    ) -> None: ...
