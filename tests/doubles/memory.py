"""`InMemoryGateway`: the orchestrator's `MemoryGateway` for one user, in dictionaries.

It keeps memory's contract where a turn can observe it (agent availability, idempotent user messages by
client request id, titles, history, answers replaced by id, scopes, keyed and same-text upserts, ephemeral
JSON values with a time to live) and recalls by shared words instead of vectors;
tests/service/test_memory_gateway_contract.py holds it and the gRPC adapter to the same behaviour. Rules
memory declares once (the title, JSON values) are memory's own functions. `fail_with` makes every call of
a method raise, to test degraded paths.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from memory.domain import conversation_title, require_json
from mesh.errors import AthenaError, FailedPrecondition, InvalidArgument, NotFound
from orchestrator.catalog import AgentSpec
from orchestrator.records import (
    AssistantMessage,
    HistoryMessage,
    Memory,
    NewTurn,
    PastMessage,
    Role,
    Scope,
    StoredMemory,
    TurnStart,
    TurnState,
)

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset(
    {"a", "an", "the", "is", "my", "i", "me", "what", "do", "you", "to", "of", "and", "it"}
)
DEFAULT_EPHEMERAL_TTL_SECONDS = 300.0
"""What a time to live of zero means (memory.v1.PutEphemeralRequest.ttl)."""


def _words(text: str) -> set[str]:
    return {word for word in _WORD.findall(text.lower()) if word not in _STOP_WORDS}


@dataclass
class _Memory:
    id: str
    text: str
    scope: Scope
    agent_id: str
    key: str


@dataclass
class _Turn:
    conversation_id: str
    turn: NewTurn
    answer_id: str
    lease_until: float


@dataclass
class _Conversation:
    title: str
    messages: list[HistoryMessage | AssistantMessage] = field(default_factory=list)


@dataclass
class InMemoryGateway:
    """Everything memory would hold for one user."""

    agents: list[AgentSpec] = field(default_factory=list)
    """The catalog as last synced."""
    disabled: set[str] = field(default_factory=set)
    """Agents this user disabled."""
    memories: list[_Memory] = field(default_factory=list)
    conversations: dict[str, _Conversation] = field(default_factory=dict)
    ephemeral: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    failures: dict[str, AthenaError] = field(default_factory=dict)
    """Method name → error it raises (every call, until removed)."""
    calls: list[str] = field(default_factory=list)
    started: list[NewTurn] = field(default_factory=list)
    """Every turn `start_turn` was given, as given (its embedding included)."""
    """Names of the methods called, in order."""
    clock: Callable[[], float] = time.monotonic
    """Decides when a turn's lease has lapsed."""
    _requests: dict[str, str] = field(default_factory=dict)
    """Client request id → user message id."""
    _turns: dict[str, _Turn] = field(default_factory=dict)
    """User message id → the turn."""

    def fail_with(self, method: str, error: AthenaError) -> None:
        self.failures[method] = error

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if method in self.failures:
            raise self.failures[method]

    async def sync_agents(self, agents: Sequence[AgentSpec], credentials: Sequence[tuple[str, str]]) -> None:
        self._enter("sync_agents")
        self.agents = list(agents)

    def _enabled(self) -> frozenset[str]:
        return frozenset(a.id for a in self.agents if a.enabled and a.id not in self.disabled)

    async def start_turn(
        self, turn: NewTurn, history_messages: int, lease_seconds: float = 6.0, recall_k: int | None = None
    ) -> TurnStart:
        self._enter("start_turn")
        self.started.append(turn)
        enabled = self._enabled()
        message_id = self._requests.get(turn.client_request_id) if turn.client_request_id else None
        replayed = message_id is not None
        if message_id is None:
            state, answer = TurnState.ANSWER, None
            message_id = self._store_user_message(turn, enabled, lease_seconds)
        else:
            state, answer = self._resume(message_id, turn, lease_seconds)
        held = self._turns[message_id]
        conversation = self.conversations[held.conversation_id]
        earlier = self.messages(held.conversation_id)
        before = next(i for i, m in enumerate(earlier) if m.id == message_id)
        wanted = state is TurnState.ANSWER and history_messages
        history = earlier[:before][-history_messages:] if wanted else []
        memories: list[Memory] = []
        recall_failed = False
        if recall_k is not None:  # in the same call (a failure set for "recall" fails this recall too)
            recall_failed = "recall" in self.failures
            if not recall_failed:
                memories = self._recalled(turn.text.strip()[:4000], turn.agent_id, recall_k)
        return TurnStart(
            held.conversation_id,
            conversation.title,
            message_id,
            enabled,
            held.answer_id,
            state,
            answer,
            tuple(history),
            replayed=replayed,
            memories=tuple(memories),
            recall_failed=recall_failed,
        )

    def _store_user_message(self, turn: NewTurn, enabled: frozenset[str], lease_seconds: float) -> str:
        agent = next((a for a in self.agents if a.id == turn.agent_id), None)
        if agent is None or not agent.enabled:
            raise FailedPrecondition(f"agent {turn.agent_id!r} is not available")
        if turn.agent_id not in enabled:
            raise FailedPrecondition(f"agent {turn.agent_id!r} is disabled; enable it to chat with it")
        if turn.conversation_id and turn.conversation_id not in self.conversations:
            raise NotFound("conversation not found")
        conversation_id = turn.conversation_id or str(uuid.uuid4())
        conversation = self.conversations.setdefault(
            conversation_id, _Conversation(conversation_title(turn.text))
        )
        message = HistoryMessage(str(uuid.uuid4()), Role.USER, turn.agent_id, turn.text)
        conversation.messages.append(message)
        self._turns[message.id] = _Turn(
            conversation_id, turn, str(uuid.uuid4()), self.clock() + lease_seconds
        )
        if turn.client_request_id:
            self._requests[turn.client_request_id] = message.id
        return message.id

    def _resume(
        self, message_id: str, turn: NewTurn, lease_seconds: float
    ) -> tuple[TurnState, AssistantMessage | None]:
        held = self._turns[message_id]
        first = held.turn
        same_conversation = not turn.conversation_id or turn.conversation_id == held.conversation_id
        if (first.text, first.agent_id) != (turn.text, turn.agent_id) or not same_conversation:
            raise InvalidArgument(
                "client_request_id", "was used for another message; send a new message with a new id"
            )
        answer = next(
            (m for m in self.assistant_messages(held.conversation_id) if m.id == held.answer_id), None
        )
        if answer is not None:
            return TurnState.DONE, answer
        if held.lease_until > self.clock():
            return TurnState.RUNNING, None
        held.lease_until = self.clock() + lease_seconds
        return TurnState.ANSWER, None

    async def renew_turn(self, message_id: str, lease_seconds: float) -> None:
        self._enter("renew_turn")
        held = self._turns.get(message_id)
        if held is None:
            raise NotFound("turn not found")
        held.lease_until = self.clock() + lease_seconds

    async def append_assistant_message(
        self, conversation_id: str, message: AssistantMessage, *, detached: bool = False
    ) -> None:
        self._enter("append_assistant_message")
        if conversation_id not in self.conversations:
            raise NotFound("conversation not found")
        messages = self.conversations[conversation_id].messages
        for index, stored in enumerate(messages):
            if isinstance(stored, AssistantMessage) and stored.id == message.id:
                messages[index] = message  # the same id again (failed, then completed) replaces it
                return
        messages.append(message)

    def messages(self, conversation_id: str) -> list[HistoryMessage]:
        """Every message of the conversation as history, oldest first."""
        return [
            item
            if isinstance(item, HistoryMessage)
            else HistoryMessage(item.id, Role.ASSISTANT, item.agent_id, item.content, failed=item.failed)
            for item in self.conversations[conversation_id].messages
        ]

    def assistant_messages(self, conversation_id: str) -> list[AssistantMessage]:
        messages = self.conversations[conversation_id].messages
        return [item for item in messages if isinstance(item, AssistantMessage)]

    def _visible(self, agent_id: str) -> list[_Memory]:
        return [m for m in self.memories if m.scope is Scope.USER or m.agent_id == agent_id]

    async def recall(self, query: str, agent_id: str, k: int) -> list[Memory]:
        self._enter("recall")
        return self._recalled(query, agent_id, k)

    def _recalled(self, query: str, agent_id: str, k: int) -> list[Memory]:
        wanted = _words(query)
        scored = []
        for memory in self._visible(agent_id):
            shared = len(wanted & _words(memory.text))
            if shared:
                scored.append((shared / max(1, len(wanted)), memory))
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [
            Memory(m.id, m.text, m.scope, m.agent_id, similarity=0.0, score=score, stage="keyword")
            for score, m in scored[:k]
        ]

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
        """Messages sharing words with `query`, most shared first (every message is "now": a window that
        excludes the present finds nothing)."""
        self._enter("recall_conversations")
        now = datetime.now(UTC)
        if (since is not None and since > now) or (until is not None and until <= now):
            return []
        wanted = _words(query)
        scored = []
        for conversation_id, conversation in self.conversations.items():
            if conversation_id == exclude_conversation_id:
                continue
            for message in conversation.messages:
                role = message.role if isinstance(message, HistoryMessage) else Role.ASSISTANT
                content = message.content
                message_agent = message.agent_id
                shared = len(wanted & _words(content))
                if shared and (agent_id is None or message_agent == agent_id):
                    past = PastMessage(
                        conversation_id, message.id, role, message_agent, content, now, shared / len(wanted)
                    )
                    scored.append(past)
        scored.sort(key=lambda past: past.score, reverse=True)
        return [replace(past, stage="keyword") for past in scored[:k]]

    async def remember(self, text: str, scope: Scope, agent_id: str, key: str = "") -> StoredMemory:
        """Refreshes the memory with the same key in the same scope (or, without a key, exactly the same
        text) when the text is the same, so a retried call stores nothing twice; another text under the
        key is a new version with an id of its own that replaces it (memory keeps the old one as history,
        which recall does not answer). The latest agent is the author."""
        self._enter("remember")
        for memory in self.memories:
            same_scope = memory.scope is scope and (scope is Scope.USER or memory.agent_id == agent_id)
            if same_scope and (memory.key == key if key else (not memory.key and memory.text == text)):
                if memory.text != text:
                    memory.id = str(uuid.uuid4())
                memory.text, memory.agent_id = text, agent_id
                return StoredMemory(memory.id, text, scope, key, created=False)
        memory = _Memory(str(uuid.uuid4()), text, scope, agent_id, key)
        self.memories.append(memory)
        return StoredMemory(memory.id, text, scope, key)

    async def forget(self, query: str, agent_id: str) -> list[str]:
        self._enter("forget")
        found = await self.recall(query, agent_id, 1)
        ids = {memory.id for memory in found}
        self.memories = [memory for memory in self.memories if memory.id not in ids]
        return sorted(ids)

    async def put_ephemeral(self, namespace: str, key: str, value_json: str, ttl_seconds: float) -> None:
        self._enter("put_ephemeral")
        require_json(value_json, "value_json")
        ttl_seconds = ttl_seconds or DEFAULT_EPHEMERAL_TTL_SECONDS
        self.ephemeral[(namespace, key)] = (time.monotonic() + ttl_seconds, value_json)

    async def get_ephemeral(self, namespace: str, key: str) -> str | None:
        self._enter("get_ephemeral")
        entry = self.ephemeral.get((namespace, key))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]
