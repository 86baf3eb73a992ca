"""The SQL behind the stores of memory.stores, on asyncpg.

Queries still say `WHERE user_id = $1` (clear intent, better plans); row-level security, set up by
`Database.transaction`, is the second wall behind them. Each public method is one transaction.

What people said and what is remembered is stored sealed with the user's data key (`memory.keys`,
`mesh.envelope`), bound to its table, column and row: conversation titles, message contents and tool calls,
memory texts and keys. The keyword stage searches blind tokens of the memories' words (`words`).
"""

# ruff: noqa: S608 (queries interpolate only the column-list constants of this module; values are bound)

from __future__ import annotations

import builtins
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from memory.conversation_recall import ConversationQuery, FoundMessage, MessageCandidates
from memory.database import Connection, Database
from memory.domain import (
    USER_SCOPE,
    AgentDefinition,
    ConversationRecord,
    Handoff,
    MemoryRecord,
    MessageRecord,
    MessageStatus,
    NewAssistantMessage,
    NewMemory,
    NewTurn,
    Role,
    Scope,
    Source,
    ToolCall,
    TurnStart,
    TurnState,
    UserAgent,
    conversation_title,
)
from memory.facts import Action, Decision, FactCandidate, FactPolicy, decide
from memory.keys import UserKeys
from memory.pagination import Cursor
from memory.stores import Candidates, CandidateSearch, ExportRecord, Purged, StatedMessage, Vector
from memory.timeframe import Timeframe
from memory.vectors import CurrentModel
from mesh.envelope import Cipher
from mesh.errors import FailedPrecondition, InvalidArgument, NotFound

_MEMORY_COLUMNS = (
    "id, agent_scope, agent_id, key, text, created_at, updated_at, source, valid_from, valid_to, supersedes,"
    " conversation_id, message_id, confidence"
)
_MESSAGE_COLUMNS = "id, role, agent_id, content, tool_call, status, error, created_at"
_CONVERSATION_COLUMNS = "id, agent_id, title, created_at, updated_at"
_TURN_COLUMNS = f"{_MESSAGE_COLUMNS}, seq, conv_id, answer_id"
"""A user message as a turn."""
_AGENT_COLUMNS = (
    "a.id, a.name, a.description, a.system_prompt, a.user_prompt, a.model, a.accent_token, a.enabled"
)


def _memory(cipher: Cipher, row: asyncpg.Record) -> MemoryRecord:
    scope = Scope.USER if row["agent_scope"] == USER_SCOPE else Scope.AGENT
    key = row["key"]
    return MemoryRecord(
        id=str(row["id"]),
        text=cipher.open_text("vector_memory", "text", row["id"], row["text"]),
        scope=scope,
        agent_id=row["agent_id"],
        key=cipher.open_text("vector_memory", "key", row["id"], key) if key is not None else "",
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        source=Source(row["source"]),
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        supersedes_id=str(row["supersedes"] or ""),
        conversation_id=str(row["conversation_id"] or ""),
        message_id=str(row["message_id"] or ""),
        confidence=float(row["confidence"]),
    )


def _message(cipher: Cipher, row: asyncpg.Record) -> MessageRecord:
    calls = json.loads(cipher.open("messages", "tool_call", row["id"], row["tool_call"]))
    return MessageRecord(
        id=str(row["id"]),
        role=Role(row["role"]),
        agent_id=row["agent_id"],
        content=cipher.open_text("messages", "content", row["id"], row["content"]),
        tool_calls=tuple(_tool_call(call) for call in calls),
        status=MessageStatus(row["status"]),
        error=row["error"],
        created_at=row["created_at"],
    )


def _conversation(
    cipher: Cipher, row: asyncpg.Record, messages: Sequence[MessageRecord] = ()
) -> ConversationRecord:
    return ConversationRecord(
        id=str(row["id"]),
        agent_id=row["agent_id"],
        title=cipher.open_text("conversations", "title", row["id"], row["title"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        messages=tuple(messages),
    )


def _sealed_title(cipher: Cipher, conversation_id: uuid.UUID, text: str) -> bytes:
    return cipher.seal("conversations", "title", conversation_id, conversation_title(text))


def _sealed_tool_calls(cipher: Cipher, message_id: uuid.UUID, calls: Sequence[ToolCall]) -> bytes:
    return cipher.seal("messages", "tool_call", message_id, json.dumps(_tool_calls_json(calls)))


def _user_agent(row: asyncpg.Record) -> UserAgent:
    definition = AgentDefinition(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        system_prompt=row["system_prompt"],
        user_prompt=row["user_prompt"],
        model=row["model"],
        accent_token=row["accent_token"],
        enabled=row["enabled"],
    )
    return UserAgent(definition=definition, enabled=row["enabled"] and row["user_enabled"])


def _tool_calls_json(calls: Sequence[ToolCall]) -> list[dict[str, object]]:
    return [
        {
            "call_id": c.call_id,
            "name": c.name,
            "arguments_json": c.arguments_json,
            "result_json": c.result_json,
            "is_error": c.is_error,
            **({"handoff": dataclasses.asdict(c.handoff)} if c.handoff is not None else {}),
        }
        for c in calls
    ]


def _tool_call(stored: dict[str, Any]) -> ToolCall:
    handoff = stored.get("handoff")
    return ToolCall(
        call_id=stored["call_id"],
        name=stored["name"],
        arguments_json=stored["arguments_json"],
        result_json=stored["result_json"],
        is_error=stored["is_error"],
        handoff=Handoff(**handoff) if handoff else None,
    )


def _vector(values: Vector) -> npt.NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


class PostgresMemoryStore:
    """Long-term memories in `vector_memory`: vectors of the current model (`current`, with its partial
    HNSW index, memory.vectors) and the blind `words` (GIN). Writes record the current model; the vector
    stage (and the similarity of reconciliation) reads only its vectors.

    Memories have history: a newer version of a keyed fact closes the current one (`valid_to`) and links to
    it (`supersedes`); only current versions are unique per key and recalled by default."""

    def __init__(
        self, database: Database, keys: UserKeys, current: CurrentModel, *, ef_search: int = 100
    ) -> None:
        self._db = database
        self._keys = keys
        self._current = current
        self._ef_search = ef_search

    async def upsert(self, user_id: str, memory: NewMemory, embedding: Vector) -> tuple[MemoryRecord, bool]:
        cipher = await self._keys.writing(user_id)
        try:
            return await self._upsert(cipher, user_id, memory, embedding)
        except asyncpg.UniqueViolationError:  # the same key stored at the same moment: it is there now
            return await self._upsert(cipher, user_id, memory, embedding)

    async def _upsert(
        self, cipher: Cipher, user_id: str, memory: NewMemory, embedding: Vector
    ) -> tuple[MemoryRecord, bool]:
        uid = uuid.UUID(user_id)
        text_token = cipher.text_token(memory.text)
        async with self._db.transaction(user_id) as connection:
            # The same key (or, keyless, exactly the same text) in the same scope is the same memory. The
            # same text again (a retried tool call) refreshes it; another text under the same key is a new
            # version: the current one is closed and kept as history.
            if memory.key:
                found = await connection.fetchrow(
                    """SELECT id, text_token FROM vector_memory
                       WHERE user_id = $1 AND agent_scope = $2 AND key_token = $3 AND valid_to IS NULL
                       FOR UPDATE""",
                    uid,
                    memory.agent_scope,
                    cipher.key_token(memory.key),
                )
            else:
                found = await connection.fetchrow(
                    """SELECT id, text_token FROM vector_memory
                       WHERE user_id = $1 AND agent_scope = $2 AND key_token IS NULL AND text_token = $3
                             AND valid_to IS NULL
                       ORDER BY created_at LIMIT 1 FOR UPDATE""",
                    uid,
                    memory.agent_scope,
                    text_token,
                )
            if found is not None and found["text_token"] == text_token:
                row = await connection.fetchrow(
                    f"""UPDATE vector_memory SET agent_id = $2, embedding = $3, embedding_model = $4,
                            source = 'explicit', confidence = 1.0, updated_at = clock_timestamp()
                        WHERE id = $1 RETURNING {_MEMORY_COLUMNS}""",
                    found["id"],
                    memory.agent_id,
                    _vector(embedding),
                    self._current.id,
                )
                assert row is not None
                return _memory(cipher, row), False
            supersedes = await _close(connection, found["id"]) if found is not None else None
            row = await _insert_memory(
                connection,
                cipher,
                uid,
                memory,
                embedding,
                self._current.id,
                _Provenance(source=Source.EXPLICIT, supersedes=supersedes),
            )
        return _memory(cipher, row), found is None

    def scan_settings(self, limit: int) -> dict[str, str]:
        # Iterative index scans (pgvector ≥ 0.8) keep walking the HNSW graph until `limit` rows survive
        # the per-user filter, instead of filtering a fixed ef_search-sized candidate list down to few.
        return {"hnsw.ef_search": str(max(self._ef_search, limit)), "hnsw.iterative_scan": "relaxed_order"}

    async def nearest(
        self, user_id: str, agent_id: str, embedding: Vector, limit: int
    ) -> list[tuple[MemoryRecord, float]]:
        """The vector stage's candidates alone (the recall benchmark measures them)."""
        return (await self.candidates(user_id, agent_id, embedding, None, limit)).nearest

    async def candidates(
        self,
        user_id: str,
        agent_id: str,
        embedding: Vector,
        text: str | None,
        limit: int,
        timeframe: Timeframe | None = None,
    ) -> Candidates:
        cipher = await self._keys.reading(user_id)
        if cipher is None:  # nothing stored yet
            return Candidates(nearest=[], keyword=[])
        search = CandidateSearch(agent_id, embedding, text, limit, timeframe)
        async with self._db.statements(user_id, settings=self.scan_settings(limit)) as connection:
            arguments = self.search_arguments(cipher, search)
            rows = await connection.fetch(self.search_sql(_SEARCH_PARAMETERS), uuid.UUID(user_id), *arguments)
        return _candidates(cipher, rows)

    def search_sql(self, parameters: _SearchParameters) -> str:
        """Both stages' candidates as one query, its values at `parameters` (`search_arguments` in that
        order, the user's id apart). The vector stage reads only vectors of the current model, compared as
        `vector(N)` (the cast and model id as literals, so the model's partial HNSW index answers). The
        keyword rank: the share of the query's words the memory holds, in 0..1; `current` says whether the
        memory has a current vector (one without is found only by its words until it is re-embedded)."""
        current = self._current
        p = parameters
        valid = f"""(valid_to IS NULL OR {p.past}::bool)
            AND ({p.end}::timestamptz IS NULL OR valid_from < {p.end})
            AND ({p.start}::timestamptz IS NULL OR valid_to IS NULL OR valid_to > {p.start})"""
        return f"""(SELECT {_MEMORY_COLUMNS}, true AS vector, true AS current,
                           1.0 - (embedding::{current.cast} <=> {p.vector}::{current.cast}) AS similarity
                    FROM vector_memory
                    WHERE user_id = {p.user} AND agent_scope = ANY({p.scopes}::text[])
                          AND embedding_model = {current.id} AND {valid}
                    ORDER BY embedding::{current.cast} <=> {p.vector}::{current.cast} LIMIT {p.limit})
                   UNION ALL
                   (SELECT {_MEMORY_COLUMNS}, false AS vector,
                           embedding_model IS NOT DISTINCT FROM {current.id} AS current,
                           cardinality(ARRAY(
                               SELECT unnest(words) INTERSECT SELECT unnest({p.words}::bytea[])
                           ))::float8 / greatest(cardinality({p.words}::bytea[]), 1) AS similarity
                    FROM vector_memory
                    WHERE cardinality({p.words}::bytea[]) > 0 AND user_id = {p.user}
                          AND agent_scope = ANY({p.scopes}::text[]) AND words && {p.words}::bytea[]
                          AND {valid}
                    ORDER BY similarity DESC, updated_at DESC LIMIT {p.limit})"""

    @staticmethod
    def search_arguments(cipher: Cipher, search: CandidateSearch) -> list[Any]:
        """The values of `search_sql` after the user's id: scopes, vector, limit, words, past, start, end."""
        window = search.timeframe
        return [
            [USER_SCOPE, search.agent_id],
            _vector(search.embedding),
            search.limit,
            cipher.words(search.text) if search.text else [],
            window is not None,
            window.start if window is not None else None,
            window.end if window is not None else None,
        ]

    async def delete(self, user_id: str, memory_ids: Sequence[str]) -> list[str]:
        """Deletes the memories and the versions they superseded; a keyed one leaves a tombstone (its blind
        key token and when) so that an old message does not infer it again (`memory.facts.decide`)."""
        if not memory_ids:
            return []
        async with self._db.transaction(user_id) as connection:
            rows = await connection.fetch(
                """WITH RECURSIVE chain AS (
                       SELECT id, supersedes, true AS asked FROM vector_memory
                       WHERE user_id = $1 AND id = ANY($2::uuid[])
                       UNION
                       SELECT m.id, m.supersedes, false FROM vector_memory AS m
                       JOIN chain ON m.id = chain.supersedes WHERE m.user_id = $1
                   ), gone AS (
                       DELETE FROM vector_memory AS m USING chain WHERE m.id = chain.id
                       RETURNING m.id, m.agent_scope, m.key_token, chain.asked
                   ), tombstones AS (
                       INSERT INTO memory_tombstones (user_id, agent_scope, key_token)
                       SELECT DISTINCT $1::uuid, agent_scope, key_token FROM gone WHERE key_token IS NOT NULL
                       ON CONFLICT (user_id, agent_scope, key_token)
                       DO UPDATE SET forgotten_at = clock_timestamp()
                   )
                   SELECT id FROM gone WHERE asked""",
                uuid.UUID(user_id),
                [uuid.UUID(i) for i in memory_ids],
            )
        deleted = {str(row["id"]) for row in rows}
        return [i for i in memory_ids if i in deleted]

    async def list(
        self, user_id: str, limit: int, after: Cursor | None, *, include_history: bool = False
    ) -> list[MemoryRecord]:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return []
        async with self._db.transaction(user_id, readonly=True) as connection:
            rows = await _newest_first(
                connection,
                _MEMORY_COLUMNS,
                "vector_memory",
                "created_at",
                user_id,
                limit,
                after,
                where="" if include_history else "AND valid_to IS NULL",
            )
        return [_memory(cipher, row) for row in rows]

    async def history(self, user_id: str, memory_id: str) -> builtins.list[MemoryRecord]:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            raise NotFound("memory not found")
        uid = uuid.UUID(user_id)
        async with self._db.transaction(user_id, readonly=True) as connection:
            rows = await connection.fetch(
                f"""WITH RECURSIVE newer AS (
                        SELECT id, supersedes FROM vector_memory WHERE user_id = $1 AND id = $2
                        UNION
                        SELECT m.id, m.supersedes FROM vector_memory AS m
                        JOIN newer ON m.supersedes = newer.id WHERE m.user_id = $1
                    ), older AS (
                        SELECT id, supersedes FROM vector_memory WHERE user_id = $1 AND id = $2
                        UNION
                        SELECT m.id, m.supersedes FROM vector_memory AS m
                        JOIN older ON m.id = older.supersedes WHERE m.user_id = $1
                    )
                    SELECT {_MEMORY_COLUMNS} FROM vector_memory
                    WHERE user_id = $1 AND id IN (SELECT id FROM newer UNION SELECT id FROM older)
                    ORDER BY valid_from DESC, created_at DESC, id DESC""",
                uid,
                uuid.UUID(memory_id),
            )
        if not rows:
            raise NotFound("memory not found")
        return [_memory(cipher, row) for row in rows]

    async def correct(self, user_id: str, memory_id: str, text: str, embedding: Vector) -> MemoryRecord:
        cipher = await self._keys.writing(user_id)
        uid = uuid.UUID(user_id)
        async with self._db.transaction(user_id) as connection:
            row = await connection.fetchrow(
                f"SELECT {_MEMORY_COLUMNS} FROM vector_memory WHERE user_id = $1 AND id = $2 FOR UPDATE",
                uid,
                uuid.UUID(memory_id),
            )
            if row is None:
                raise NotFound("memory not found")
            old = _memory(cipher, row)
            if not old.current:
                raise FailedPrecondition("the memory was superseded; correct its current version")
            await _close(connection, row["id"])
            new = NewMemory(text=text, scope=old.scope, agent_id=old.agent_id, key=old.key)
            inserted = await _insert_memory(
                connection,
                cipher,
                uid,
                new,
                embedding,
                self._current.id,
                _Provenance(
                    source=Source.EXPLICIT,
                    supersedes=row["id"],
                    conversation_id=row["conversation_id"],
                    message_id=row["message_id"],
                ),
            )
        return _memory(cipher, inserted)

    async def learns_facts(self, user_id: str) -> bool:
        async with self._db.statements(user_id) as connection:
            learns = await connection.fetchval(
                "SELECT learns_facts FROM users WHERE id = $1", uuid.UUID(user_id)
            )
        return learns is not False  # a user with nothing stored yet has the default: on

    async def set_learns_facts(self, user_id: str, enabled: bool) -> bool:
        await self._keys.writing(user_id)  # the first write sets the user up
        async with self._db.transaction(user_id) as connection:
            learns = await connection.fetchval(
                "UPDATE users SET learns_facts = $2 WHERE id = $1 RETURNING learns_facts",
                uuid.UUID(user_id),
                enabled,
            )
        return bool(learns)

    async def stated(self, user_id: str, answer_id: str) -> StatedMessage | None:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return None
        async with self._db.statements(user_id) as connection:
            row = await connection.fetchrow(
                f"""SELECT {_MESSAGE_COLUMNS}, conv_id FROM messages
                    WHERE user_id = $1 AND answer_id = $2 AND role = 'user'""",
                uuid.UUID(user_id),
                uuid.UUID(answer_id),
            )
        if row is None:
            return None
        return StatedMessage(message=_message(cipher, row), conversation_id=str(row["conv_id"]))

    async def reconcile(
        self,
        user_id: str,
        candidate: FactCandidate,
        embedding: Vector,
        origin: StatedMessage,
        policy: FactPolicy,
    ) -> Decision:
        cipher = await self._keys.writing(user_id)
        try:
            return await self._reconcile(cipher, user_id, candidate, embedding, origin, policy)
        except asyncpg.UniqueViolationError:  # a concurrent version of the same key: decide again
            return await self._reconcile(cipher, user_id, candidate, embedding, origin, policy)

    async def _reconcile(
        self,
        cipher: Cipher,
        user_id: str,
        candidate: FactCandidate,
        embedding: Vector,
        origin: StatedMessage,
        policy: FactPolicy,
    ) -> Decision:
        uid = uuid.UUID(user_id)
        agent_scope = USER_SCOPE if candidate.scope is Scope.USER else origin.message.agent_id
        key_token = cipher.key_token(candidate.key)
        message_id = uuid.UUID(origin.message.id)
        async with self._db.transaction(user_id, settings=self.scan_settings(1)) as connection:
            # Extracted from this message before (a redelivered job): its effect is there already.
            done = await connection.fetchval(
                """SELECT 1 FROM vector_memory WHERE user_id = $1 AND message_id = $2 AND key_token = $3
                   AND agent_scope = $4""",
                uid,
                message_id,
                key_token,
                agent_scope,
            )
            if done is not None:
                return Decision(Action.NOOP, "extracted from this message before")
            current_row = await connection.fetchrow(
                f"""SELECT {_MEMORY_COLUMNS} FROM vector_memory
                    WHERE user_id = $1 AND agent_scope = $2 AND key_token = $3 AND valid_to IS NULL
                    FOR UPDATE""",
                uid,
                agent_scope,
                key_token,
            )
            forgotten_at = await connection.fetchval(
                """SELECT forgotten_at FROM memory_tombstones
                   WHERE user_id = $1 AND agent_scope = $2 AND key_token = $3""",
                uid,
                agent_scope,
                key_token,
            )
            # Similarity only to vectors of the current model (the candidate's embedding is its).
            current = self._current
            nearest = await connection.fetchval(
                f"""SELECT 1.0 - (embedding::{current.cast} <=> $3::{current.cast}) FROM vector_memory
                    WHERE user_id = $1 AND agent_scope = $2 AND valid_to IS NULL
                          AND embedding_model = {current.id}
                    ORDER BY embedding::{current.cast} <=> $3::{current.cast} LIMIT 1""",
                uid,
                agent_scope,
                _vector(embedding),
            )
            decision = decide(
                candidate,
                stated_at=origin.message.created_at,
                current=_memory(cipher, current_row) if current_row is not None else None,
                similarity=float(nearest) if nearest is not None else None,
                forgotten_at=forgotten_at,
                policy=policy,
            )
            if decision.closes is not None:  # it held until the person said otherwise
                await _close(connection, uuid.UUID(decision.closes.id), origin.message.created_at)
            if decision.action in (Action.ADD, Action.UPDATE):
                await _insert_memory(
                    connection,
                    cipher,
                    uid,
                    NewMemory(
                        text=candidate.text,
                        scope=candidate.scope,
                        agent_id=origin.message.agent_id,
                        key=candidate.key,
                    ),
                    embedding,
                    self._current.id,
                    _Provenance(
                        source=Source.INFERRED,
                        supersedes=uuid.UUID(decision.closes.id) if decision.closes is not None else None,
                        conversation_id=uuid.UUID(origin.conversation_id),
                        message_id=message_id,
                        confidence=candidate.confidence,
                        valid_from=origin.message.created_at,
                    ),
                )
        return decision


@dataclasses.dataclass(frozen=True, slots=True)
class _SearchParameters:
    """Where `PostgresMemoryStore.search_sql` finds its values. `past`, `start`, `end`: which versions are
    candidates, the current ones (`past` false) or those valid at some moment of [start, end) (either end
    may be NULL: open)."""

    user: str
    scopes: str
    vector: str
    limit: str
    words: str
    past: str
    start: str
    end: str

    @classmethod
    def after(cls, user: str, last: int) -> _SearchParameters:
        """The user's id at `user`, the others numbered from after `$last`."""
        return cls(user, *(f"${last + offset}" for offset in range(1, 8)))


_SEARCH_PARAMETERS = _SearchParameters.after("$1", 1)
_CANDIDATE_COLUMNS = (
    *(name.strip() for name in _MEMORY_COLUMNS.split(",")),
    "vector",
    "current",
    "similarity",
)
"""A candidate row's columns, in the order `search_sql` selects them."""


def _candidates(cipher: Cipher, rows: Sequence[Any]) -> Candidates:
    """Both stages' candidates from `search_sql`'s rows (records, or mappings of `_CANDIDATE_COLUMNS`)."""
    found = [(row, (_memory(cipher, row), float(row["similarity"]))) for row in rows]
    return Candidates(
        nearest=[hit for row, hit in found if row["vector"]],
        keyword=[hit for row, hit in found if not row["vector"]],
        unembedded=[hit for row, hit in found if not row["vector"] and not row["current"]],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Provenance:
    source: Source
    supersedes: uuid.UUID | None = None
    conversation_id: uuid.UUID | None = None
    message_id: uuid.UUID | None = None
    confidence: float = 1.0
    valid_from: datetime | None = None
    """None: now."""


async def _close(connection: Connection, memory_id: uuid.UUID, at: datetime | None = None) -> uuid.UUID:
    """Closes the current version `memory_id`: valid until `at` (when its successor was stated), or now;
    answers its id."""
    await connection.execute(
        """UPDATE vector_memory SET valid_to = COALESCE($2, clock_timestamp()), updated_at = clock_timestamp()
           WHERE id = $1""",
        memory_id,
        at,
    )
    return memory_id


async def _insert_memory(
    connection: Connection,
    cipher: Cipher,
    uid: uuid.UUID,
    memory: NewMemory,
    embedding: Vector,
    model_id: int,
    provenance: _Provenance,
) -> asyncpg.Record:
    """A new memory (version) with its vector, made by the model `model_id` (the current one)."""
    memory_id = uuid.uuid4()
    row = await connection.fetchrow(
        f"""INSERT INTO vector_memory (id, user_id, agent_scope, agent_id, key, key_token, text, text_token,
                                       words, embedding, source, supersedes, conversation_id, message_id,
                                       confidence, valid_from, embedding_model)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                    COALESCE($16, clock_timestamp()), $17)
            RETURNING {_MEMORY_COLUMNS}""",
        memory_id,
        uid,
        memory.agent_scope,
        memory.agent_id,
        cipher.seal("vector_memory", "key", memory_id, memory.key) if memory.key else None,
        cipher.key_token(memory.key) if memory.key else None,
        cipher.seal("vector_memory", "text", memory_id, memory.text),
        cipher.text_token(memory.text),
        cipher.words(memory.text),
        _vector(embedding),
        provenance.source.value,
        provenance.supersedes,
        provenance.conversation_id,
        provenance.message_id,
        provenance.confidence,
        provenance.valid_from,
        model_id,
    )
    assert row is not None
    return row


class PostgresConversationStore:
    """Conversations and their messages."""

    def __init__(self, database: Database, keys: UserKeys, memories: PostgresMemoryStore) -> None:
        """`memories`: the store whose candidates `start_turn_searching` reads along."""
        self._db = database
        self._keys = keys
        self._memories = memories

    async def start_turn(self, user_id: str, turn: NewTurn) -> TurnStart:
        """A new turn is stored in one statement; a client request id met before (found when that
        statement stores nothing) is looked up and resumed in a transaction of its own."""
        cipher = await self._keys.writing(user_id)
        try:
            start, _ = await self._start_new_turn(cipher, user_id, turn)
            return start
        except _Repeated:
            pass
        return await self._resume_turn(cipher, user_id, turn)

    async def start_turn_searching(
        self, user_id: str, turn: NewTurn, search: CandidateSearch
    ) -> tuple[TurnStart, Candidates | None]:
        """`start_turn` whose statement also reads the candidates of `search` (one round trip and one
        connection for both, where a recall of its own takes a second of each)."""
        cipher = await self._keys.writing(user_id)
        try:
            return await self._start_new_turn(cipher, user_id, turn, search)
        except _Repeated:
            pass
        return await self._resume_turn(cipher, user_id, turn), None

    async def _resume_turn(self, cipher: Cipher, user_id: str, turn: NewTurn) -> TurnStart:
        try:
            return await self._start_turn(cipher, user_id, turn)
        except asyncpg.UniqueViolationError:
            # A concurrent request with the same client_request_id won the race: answer its message.
            return await self._start_turn(cipher, user_id, turn)

    async def _start_new_turn(
        self, cipher: Cipher, user_id: str, turn: NewTurn, search: CandidateSearch | None = None
    ) -> tuple[TurnStart, Candidates | None]:
        """The common case in one round trip (two with an existing conversation's history; one more when
        the connection served another user last), outside a transaction: one statement stores the user
        message with the agents' states, its conversation created or touched in it, and stores nothing
        when the agent is not available or the client request id was used before (then the full path
        decides). A statement that fails stores nothing; if the history's read fails after it, the message
        is stored and a retry resumes its turn once its lease lapsed."""
        uid = uuid.UUID(user_id)
        new_conversation = turn.conversation_id is None
        conv_uuid = uuid.uuid4() if new_conversation else uuid.UUID(str(turn.conversation_id))
        message_id = uuid.uuid4()
        statement = _turn_statement(new_conversation)
        searching: list[Any] = []
        settings = None
        if search is not None:
            # The candidates as one more column (an array of records), their values after the turn's.
            found = self._memories.search_sql(_SearchParameters.after("$1", _TURN_PARAMETERS))
            statement = _turn_statement(
                new_conversation, f", ARRAY(SELECT candidate FROM ({found}) AS candidate) AS candidates"
            )
            searching = self._memories.search_arguments(cipher, search)
            settings = self._memories.scan_settings(search.limit)
        async with self._db.statements(user_id, settings=settings) as connection:
            row = await connection.fetchrow(
                statement,
                uid,
                conv_uuid,
                turn.agent_id,
                _sealed_title(cipher, conv_uuid, turn.text) if new_conversation else None,
                message_id,
                cipher.seal("messages", "content", message_id, turn.text),
                turn.client_request_id,
                uuid.uuid4(),
                turn.lease_seconds,
                _sealed_tool_calls(cipher, message_id, ()),
                *searching,
            )
            assert row is not None, "the statement answers one row, the agents' states"
            try:
                _check_agent_state(turn.agent_id, row)
            except FailedPrecondition:
                if turn.client_request_id is None:
                    raise
                raise _Repeated from None  # maybe a repeat of a turn whose agent was disabled since
            if row["conv_agent_id"] is None and turn.client_request_id is None:
                raise NotFound("conversation not found")
            if row["id"] is None:  # maybe a repeat: the full path decides (and refuses)
                if new_conversation and row["conv_agent_id"] is not None:
                    # Two tries of one request at once both created a conversation; the one whose
                    # message lost the race removes its own, still empty.
                    await connection.execute(
                        "DELETE FROM conversations WHERE user_id = $1 AND id = $2", uid, conv_uuid
                    )
                raise _Repeated
            history: list[MessageRecord] = []
            if not new_conversation and turn.history_messages:
                history = await _messages(
                    connection, cipher, uid, row["conv_id"], turn.history_messages, before=row["seq"]
                )
        candidates = None
        if searching:
            records = [dict(zip(_CANDIDATE_COLUMNS, values, strict=True)) for values in row["candidates"]]
            candidates = _candidates(cipher, records)
        start = TurnStart(
            conversation=ConversationRecord(
                id=str(row["conv_id"]),
                agent_id=row["conv_agent_id"],
                title=cipher.open_text("conversations", "title", row["conv_id"], row["conv_title"]),
                created_at=row["conv_created_at"],
                updated_at=row["conv_updated_at"],
            ),
            message=_message(cipher, row),
            replayed=False,
            enabled_agent_ids=tuple(row["enabled_agent_ids"] or ()),
            state=TurnState.ANSWER,
            answer_id=str(row["answer_id"]),
            answer=None,
            history=tuple(history),
        )
        return start, candidates

    async def _start_turn(self, cipher: Cipher, user_id: str, turn: NewTurn) -> TurnStart:
        uid = uuid.UUID(user_id)
        async with self._db.transaction(user_id) as connection:
            agents = await connection.fetch(_AGENT_STATES, uid)
            enabled = tuple(row["id"] for row in agents if row["available"])
            message = None
            if turn.client_request_id is not None:
                # Locked: of two repeats finding an abandoned turn at once, one takes it over.
                message = await connection.fetchrow(
                    f"SELECT {_TURN_COLUMNS} FROM messages"
                    " WHERE user_id = $1 AND client_request_id = $2 FOR UPDATE",
                    uid,
                    turn.client_request_id,
                )
            replayed = message is not None
            answer = None
            if message is None:
                _check_agent(turn.agent_id, agents)
                message = await self._insert_user_message(connection, cipher, uid, turn)
                state = TurnState.ANSWER
            else:
                _check_same_request(cipher, message, turn)
                state, message, answer = await self._resume(connection, uid, message, turn)
            conversation = await connection.fetchrow(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = $1", message["conv_id"]
            )
            history: list[MessageRecord] = []
            if state is TurnState.ANSWER and turn.history_messages:
                history = await _messages(
                    connection, cipher, uid, message["conv_id"], turn.history_messages, before=message["seq"]
                )
        assert conversation is not None
        return TurnStart(
            conversation=_conversation(cipher, conversation),
            message=_message(cipher, message),
            replayed=replayed,
            enabled_agent_ids=enabled,
            state=state,
            answer_id=str(message["answer_id"]),
            answer=_message(cipher, answer) if answer is not None else None,
            history=tuple(history),
        )

    @staticmethod
    async def _resume(
        connection: Connection, uid: uuid.UUID, message: asyncpg.Record, turn: NewTurn
    ) -> tuple[TurnState, asyncpg.Record, asyncpg.Record | None]:
        """An earlier turn met again: done (with its answer), running under a live lease, or taken over."""
        if message["answer_id"] is not None:
            answer = await connection.fetchrow(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND id = $2 AND conv_id = $3",
                uid,
                message["answer_id"],
                message["conv_id"],
            )
            if answer is not None:
                return TurnState.DONE, message, answer
        taken = await connection.fetchrow(
            f"""UPDATE messages SET lease_until = clock_timestamp() + make_interval(secs => $2),
                    answer_id = COALESCE(answer_id, gen_random_uuid())
                WHERE id = $1 AND (lease_until IS NULL OR lease_until <= clock_timestamp())
                RETURNING {_TURN_COLUMNS}""",
            message["id"],
            turn.lease_seconds,
        )
        if taken is None:
            return TurnState.RUNNING, message, None
        return TurnState.ANSWER, taken, None

    async def renew_turn(self, user_id: str, message_id: str, lease_seconds: float) -> None:
        """One statement whole on its own (`Database.statements`; a long answer renews every few seconds): one
        round trip, two when the connection served another user last, where a transaction costs three."""
        async with self._db.statements(user_id) as connection:
            renewed = await connection.fetchval(
                """UPDATE messages SET lease_until = clock_timestamp() + make_interval(secs => $3)
                   WHERE user_id = $1 AND id = $2 AND role = 'user' RETURNING 1""",
                uuid.UUID(user_id),
                uuid.UUID(message_id),
                lease_seconds,
            )
        if renewed is None:
            raise NotFound("turn not found")

    @staticmethod
    async def _insert_user_message(
        connection: Connection, cipher: Cipher, uid: uuid.UUID, turn: NewTurn
    ) -> asyncpg.Record:
        if turn.conversation_id is None:
            conv_uuid = uuid.uuid4()
            await connection.execute(
                "INSERT INTO conversations (id, user_id, agent_id, title) VALUES ($1, $2, $3, $4)",
                conv_uuid,
                uid,
                turn.agent_id,
                _sealed_title(cipher, conv_uuid, turn.text),
            )
        else:
            conv_uuid = uuid.UUID(turn.conversation_id)
            found = await connection.fetchval(
                "UPDATE conversations SET updated_at = clock_timestamp() WHERE user_id = $1 AND id = $2"
                " RETURNING 1",
                uid,
                conv_uuid,
            )
            if found is None:
                raise NotFound("conversation not found")
        message_id = uuid.uuid4()
        message = await connection.fetchrow(
            f"""INSERT INTO messages (id, conv_id, user_id, role, agent_id, content, tool_call,
                                      client_request_id, answer_id, lease_until)
                VALUES ($1, $2, $3, 'user', $4, $5, $6, $7, $8, clock_timestamp() + make_interval(secs => $9))
                RETURNING {_TURN_COLUMNS}""",
            message_id,
            conv_uuid,
            uid,
            turn.agent_id,
            cipher.seal("messages", "content", message_id, turn.text),
            _sealed_tool_calls(cipher, message_id, ()),
            turn.client_request_id,
            uuid.uuid4(),
            turn.lease_seconds,
        )
        assert message is not None
        return message

    async def append_assistant_message(self, user_id: str, message: NewAssistantMessage) -> MessageRecord:
        cipher = await self._keys.writing(user_id)
        uid = uuid.UUID(user_id)
        conv_uuid = uuid.UUID(message.conversation_id)
        message_id = uuid.UUID(message.message_id)
        async with self._db.statements(user_id) as connection:
            # One statement, one round trip (a transaction costs three): the message stored in the
            # conversation, which it touches; the same message id again (a retried or completed turn)
            # replaces the earlier version.
            row = await connection.fetchrow(
                _APPEND_ASSISTANT_MESSAGE,
                message_id,
                conv_uuid,
                uid,
                message.agent_id,
                cipher.seal("messages", "content", message_id, message.content),
                _sealed_tool_calls(cipher, message_id, message.tool_calls),
                message.status.value,
                message.error,
            )
            assert row is not None, "the statement answers one row"
            if not row["conversation_found"]:
                raise NotFound("conversation not found")
            if row["id"] is None:  # nothing was stored, nor the conversation touched
                raise InvalidArgument("message.id", "is the id of another message")
        return _message(cipher, row)

    async def list(self, user_id: str, limit: int, after: Cursor | None) -> list[ConversationRecord]:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return []
        async with self._db.transaction(user_id, readonly=True) as connection:
            rows = await _newest_first(
                connection, _CONVERSATION_COLUMNS, "conversations", "updated_at", user_id, limit, after
            )
        return [_conversation(cipher, row) for row in rows]

    async def get(self, user_id: str, conversation_id: str, last_messages: int) -> ConversationRecord:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            raise NotFound("conversation not found")
        uid = uuid.UUID(user_id)
        conv_uuid = uuid.UUID(conversation_id)
        async with self._db.transaction(user_id, readonly=True) as connection:
            conversation = await connection.fetchrow(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE user_id = $1 AND id = $2",
                uid,
                conv_uuid,
            )
            if conversation is None:
                raise NotFound("conversation not found")
            messages = await _messages(connection, cipher, uid, conv_uuid, last_messages)
        return _conversation(cipher, conversation, messages)

    async def delete(self, user_id: str, conversation_id: str) -> None:
        async with self._db.transaction(user_id) as connection:
            deleted = await connection.fetchval(
                "DELETE FROM conversations WHERE user_id = $1 AND id = $2 RETURNING id",
                uuid.UUID(user_id),
                uuid.UUID(conversation_id),
            )
        if deleted is None:
            raise NotFound("conversation not found")


async def _messages(
    connection: Connection,
    cipher: Cipher,
    user_id: uuid.UUID,
    conv_id: uuid.UUID,
    last: int = 0,
    before: int | None = None,
) -> list[MessageRecord]:
    """The conversation's messages oldest first: all, or the `last` ones (before the message with
    sequence number `before`, if given)."""
    if last > 0:
        rows = await connection.fetch(
            f"""SELECT * FROM (SELECT {_MESSAGE_COLUMNS}, seq FROM messages
                               WHERE user_id = $1 AND conv_id = $2 AND seq < $4
                               ORDER BY seq DESC LIMIT $3) AS recent
                ORDER BY seq""",
            user_id,
            conv_id,
            last,
            before if before is not None else 2**63 - 1,
        )
    else:
        rows = await connection.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND conv_id = $2 ORDER BY seq",
            user_id,
            conv_id,
        )
    return [_message(cipher, row) for row in rows]


_LIST_AGENTS = f"""SELECT {_AGENT_COLUMNS}, COALESCE(ua.enabled, true) AS user_enabled
    FROM agents AS a LEFT JOIN user_agents AS ua ON ua.agent_id = a.id AND ua.user_id = $1"""


class _Repeated(Exception):
    """A turn with a client request id found something the full path must judge (the id used before, an
    agent or a conversation gone): it is looked up there instead, in a transaction of its own."""


_APPEND_ASSISTANT_MESSAGE = f"""WITH conversation AS (
        SELECT id FROM conversations WHERE user_id = $3 AND id = $2 FOR NO KEY UPDATE
    ), message AS (
        INSERT INTO messages (id, conv_id, user_id, role, agent_id, content, tool_call, status, error)
        SELECT $1, conversation.id, $3, 'assistant', $4, $5, $6, $7, $8 FROM conversation
        ON CONFLICT (id) DO UPDATE
        SET agent_id = EXCLUDED.agent_id, content = EXCLUDED.content, tool_call = EXCLUDED.tool_call,
            status = EXCLUDED.status, error = EXCLUDED.error, words = NULL, embedding = NULL,
            embedding_model = NULL
        WHERE messages.conv_id = EXCLUDED.conv_id AND messages.role = 'assistant'
        RETURNING {_MESSAGE_COLUMNS}
    ), touched AS (
        UPDATE conversations SET updated_at = clock_timestamp()
        WHERE user_id = $3 AND id = (SELECT id FROM conversation) AND EXISTS (SELECT FROM message)
    )
    SELECT EXISTS (SELECT FROM conversation) AS conversation_found, message.*
    FROM (VALUES (1)) AS one LEFT JOIN message ON true"""
"""An assistant message stored in (or replaced within) the user's conversation $2, touching it: one
statement, whole on its own (autocommit). Always one row, whose message columns are NULL when the id
belongs to another message (then nothing changed: the conversation is touched only when the message is
stored) or there is no such conversation (`conversation_found`). The conversation is locked first, as an
UPDATE of it would: appends to one conversation, and its deletion, take turns."""

_AGENT_CHOSEN = """agent_states AS (
        SELECT a.id, a.position, a.enabled, a.enabled AND COALESCE(ua.enabled, true) AS available
        FROM agents AS a LEFT JOIN user_agents AS ua ON ua.agent_id = a.id AND ua.user_id = $1
    ), chosen AS (
        SELECT COALESCE(bool_or(id = $3), false) AS agent_known,
               COALESCE(bool_or(enabled) FILTER (WHERE id = $3), false) AS agent_enabled,
               COALESCE(bool_or(available) FILTER (WHERE id = $3), false) AS agent_available,
               array_agg(id ORDER BY position, id) FILTER (WHERE available) AS enabled_agent_ids
        FROM agent_states
    )"""
"""The CTE `chosen`: one row saying whether the user may talk to agent $3 now, and the agents they may."""

_REPEATED = "EXISTS (SELECT 1 FROM messages WHERE user_id = $1 AND client_request_id = $7)"
"""Whether the turn's client request id was used before: then its statement creates or touches nothing."""

_NEW_TURN_MESSAGE = f"""message AS (
        INSERT INTO messages (id, conv_id, user_id, role, agent_id, content, tool_call, client_request_id,
                              answer_id, lease_until)
        SELECT $5, conversation.id, $1, 'user', $3, $6, $10, $7, $8,
               clock_timestamp() + make_interval(secs => $9)
        FROM conversation
        ON CONFLICT (user_id, client_request_id) DO NOTHING
        RETURNING {_TURN_COLUMNS}
    )
    SELECT chosen.*, message.*, conversation.agent_id AS conv_agent_id, conversation.title AS conv_title,
           conversation.created_at AS conv_created_at, conversation.updated_at AS conv_updated_at{{columns}}
    FROM chosen LEFT JOIN conversation ON true LEFT JOIN message ON true"""
"""The user message of a turn, in the conversation of the CTE `conversation`, with that conversation and
the agents' states (`chosen`): always one row. The conversation's columns are NULL when there is none (or
the agent is not available), the message's when its client request id was used before. `{columns}`: more
columns a caller reads along (`_turn_statement`)."""

_NEW_CONVERSATION_TURN = f"""WITH {_AGENT_CHOSEN}, conversation AS (
        INSERT INTO conversations (id, user_id, agent_id, title)
        SELECT $2, $1, $3, $4 FROM chosen WHERE agent_available AND NOT {_REPEATED}
        RETURNING {_CONVERSATION_COLUMNS}
    ), {_NEW_TURN_MESSAGE}"""
"""A turn starting a conversation: one statement, whole on its own (autocommit)."""

_CONTINUED_TURN = f"""WITH {_AGENT_CHOSEN}, conversation AS (
        UPDATE conversations SET updated_at = clock_timestamp()
        WHERE user_id = $1 AND id = $2 AND $4::text IS NULL AND (SELECT agent_available FROM chosen)
              AND NOT {_REPEATED}
        RETURNING {_CONVERSATION_COLUMNS}
    ), {_NEW_TURN_MESSAGE}"""
"""A turn in an existing conversation of the user: no row when there is none. (The title, $4, is NULL
here: named only so that both statements take the same parameters.)"""

_TURN_PARAMETERS = 10
"""The turn statements' values are $1 to $10; what `_turn_statement` adds is numbered after them."""


def _turn_statement(new_conversation: bool, columns: str = "") -> str:
    """The statement that starts a turn (`_NEW_CONVERSATION_TURN` or `_CONTINUED_TURN`), selecting
    `columns` (", ..." expressions) besides its own."""
    return (_NEW_CONVERSATION_TURN if new_conversation else _CONTINUED_TURN).replace("{columns}", columns)


_AGENT_STATES = """SELECT a.id, a.enabled, a.enabled AND COALESCE(ua.enabled, true) AS available
    FROM agents AS a LEFT JOIN user_agents AS ua ON ua.agent_id = a.id AND ua.user_id = $1
    ORDER BY a.position, a.id"""


def _check_same_request(cipher: Cipher, message: asyncpg.Record, turn: NewTurn) -> None:
    """A repeated client request id must repeat the request: the same text, agent and conversation."""
    same_conversation = turn.conversation_id is None or uuid.UUID(turn.conversation_id) == message["conv_id"]
    content = cipher.open_text("messages", "content", message["id"], message["content"])
    if content != turn.text or message["agent_id"] != turn.agent_id or not same_conversation:
        raise InvalidArgument(
            "client_request_id", "was used for another message; send a new message with a new id"
        )


def _check_agent(agent_id: str, agents: Sequence[asyncpg.Record]) -> None:
    """Refuses a turn with an agent the caller may not talk to now."""
    state = next((row for row in agents if row["id"] == agent_id), None)
    _refuse_unavailable(
        agent_id, state is not None and state["enabled"], state is not None and state["available"]
    )


def _check_agent_state(agent_id: str, chosen: asyncpg.Record) -> None:
    """`_check_agent` on the columns of the CTE `chosen`."""
    _refuse_unavailable(
        agent_id, chosen["agent_known"] and chosen["agent_enabled"], chosen["agent_available"]
    )


def _refuse_unavailable(agent_id: str, enabled: bool, available: bool) -> None:
    if not enabled:
        raise FailedPrecondition(f"agent {agent_id!r} is not available")
    if not available:
        raise FailedPrecondition(f"agent {agent_id!r} is disabled; enable it to chat with it")


class PostgresAgentStore:
    """The global agent catalog and each user's enabled state (default: enabled)."""

    def __init__(self, database: Database, keys: UserKeys) -> None:
        self._db = database
        self._keys = keys

    async def sync(self, agents: Sequence[AgentDefinition]) -> None:
        async with self._db.transaction(None) as connection:
            await connection.executemany(
                """INSERT INTO agents (id, name, description, system_prompt, user_prompt, model, accent_token,
                                       enabled, position, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
                   ON CONFLICT (id) DO UPDATE
                   SET name = EXCLUDED.name, description = EXCLUDED.description,
                       system_prompt = EXCLUDED.system_prompt, user_prompt = EXCLUDED.user_prompt,
                       model = EXCLUDED.model, accent_token = EXCLUDED.accent_token,
                       enabled = EXCLUDED.enabled,
                       position = EXCLUDED.position, updated_at = now()""",
                [
                    (
                        a.id,
                        a.name,
                        a.description,
                        a.system_prompt,
                        a.user_prompt,
                        a.model,
                        a.accent_token,
                        a.enabled,
                        position,
                    )
                    for position, a in enumerate(agents)
                ],
            )
            await connection.execute(
                "UPDATE agents SET enabled = false, updated_at = now()"
                " WHERE NOT (id = ANY($1::text[])) AND enabled",
                [a.id for a in agents],
            )

    async def list(self, user_id: str) -> list[UserAgent]:
        async with self._db.transaction(user_id, readonly=True) as connection:
            rows = await connection.fetch(f"{_LIST_AGENTS} ORDER BY a.position, a.id", uuid.UUID(user_id))
        return [_user_agent(row) for row in rows]

    async def set_enabled(self, user_id: str, agent_id: str, enabled: bool) -> UserAgent:
        uid = uuid.UUID(user_id)
        await self._keys.writing(user_id)  # the first write sets the user up
        async with self._db.transaction(user_id) as connection:
            if await connection.fetchval("SELECT 1 FROM agents WHERE id = $1", agent_id) is None:
                raise NotFound(f"agent {agent_id!r} not found")
            await connection.execute(
                """INSERT INTO user_agents (user_id, agent_id, enabled, enabled_at, updated_at)
                   VALUES ($1, $2, $3, CASE WHEN $3 THEN now() END, now())
                   ON CONFLICT (user_id, agent_id) DO UPDATE
                   SET enabled = EXCLUDED.enabled,
                       enabled_at = CASE WHEN EXCLUDED.enabled AND NOT user_agents.enabled THEN now()
                                         ELSE user_agents.enabled_at END,
                       updated_at = now()""",
                uid,
                agent_id,
                enabled,
            )
            row = await connection.fetchrow(f"{_LIST_AGENTS} WHERE a.id = $2", uid, agent_id)
        assert row is not None
        return _user_agent(row)


class PostgresUserDataStore:
    """Export and erasure of everything a user has in PostgreSQL."""

    _TABLES = (
        "messages",
        "conversations",
        "vector_memory",
        "memory_tombstones",
        "user_agents",
        "notifications",
        "notification_settings",
        "push_subscriptions",
    )

    def __init__(self, database: Database, keys: UserKeys) -> None:
        self._db = database
        self._keys = keys

    async def export(self, user_id: str) -> AsyncIterator[ExportRecord]:
        uid = uuid.UUID(user_id)
        cipher = await self._keys.reading(user_id)
        # One repeatable-read snapshot for the whole stream, so the export is consistent.
        async with self._db.transaction(user_id, readonly=True) as connection:
            for row in await connection.fetch(f"{_LIST_AGENTS} ORDER BY a.position, a.id", uid):
                yield _user_agent(row)
            if cipher is None:  # nothing else stored
                return
            conversations = await connection.fetch(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations"
                " WHERE user_id = $1 ORDER BY created_at, id",
                uid,
            )
            for conversation in conversations:
                messages = await _messages(connection, cipher, uid, conversation["id"])
                yield _conversation(cipher, conversation, messages)
            async for row in connection.cursor(
                f"SELECT {_MEMORY_COLUMNS} FROM vector_memory WHERE user_id = $1 ORDER BY created_at, id", uid
            ):
                yield _memory(cipher, row)

    async def purge(self, user_id: str) -> Purged:
        """Destroys the user's data key first (every copy of their rows is unreadable from then on, and no
        write sets the account up again), then deletes their rows."""
        data_key = await self._keys.erase(user_id)
        uid = uuid.UUID(user_id)
        async with self._db.transaction(user_id) as connection:
            counts = await connection.fetchrow(
                "SELECT "
                + ", ".join(f"(SELECT count(*) FROM {t} WHERE user_id = $1) AS {t}" for t in self._TABLES),
                uid,
            )
            # One delete: every user-data table cascades from users.
            users = await connection.fetchval(
                "WITH gone AS (DELETE FROM users WHERE id = $1 RETURNING 1) SELECT count(*) FROM gone", uid
            )
        assert counts is not None
        return Purged(rows=int(users) + sum(int(counts[t]) for t in self._TABLES), data_key=data_key)


async def _newest_first(
    connection: Connection,
    columns: str,
    table: str,
    order_column: str,
    user_id: str,
    limit: int,
    after: Cursor | None,
    *,
    where: str = "",
) -> list[asyncpg.Record]:
    """One page of the user's rows, newest first by (`order_column`, id), after the previous page's cursor.
    `columns`, `table`, `order_column` and `where` (more conditions) are this module's constants, never
    request data."""
    keyset = f"AND ({order_column}, id) < ($3, $4)" if after is not None else ""
    cursor = (after.at, uuid.UUID(after.id)) if after is not None else ()
    return await connection.fetch(
        f"""SELECT {columns} FROM {table} WHERE user_id = $1 {where} {keyset}
            ORDER BY {order_column} DESC, id DESC LIMIT $2""",
        uuid.UUID(user_id),
        limit,
        *cursor,
    )


_RECALLED_MESSAGE_COLUMNS = f"{_MESSAGE_COLUMNS}, conv_id"
_MESSAGE_FILTERS = """user_id = $1 AND status = 'complete' AND ($2::text IS NULL OR agent_id = $2)
    AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4)
    AND ($8::uuid IS NULL OR conv_id <> $8)"""
"""The caller's complete messages of the query's agent and time window ($1 to $4), but those of the
conversation asking ($8)."""


class PostgresMessageSearch:
    """Conversation recall's candidates: `messages` by their vector of the current model (its partial HNSW
    index) and by their blind words (GIN)."""

    def __init__(
        self, database: Database, keys: UserKeys, current: CurrentModel, *, ef_search: int = 100
    ) -> None:
        self._db = database
        self._keys = keys
        self._current = current
        self._ef_search = ef_search

    async def candidates(
        self, user_id: str, query: ConversationQuery, embedding: Vector, limit: int
    ) -> MessageCandidates:
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return MessageCandidates(nearest=[], keyword=[])
        tokens = cipher.words(query.text)
        current = self._current
        settings = {
            "hnsw.ef_search": str(max(self._ef_search, limit)),
            "hnsw.iterative_scan": "relaxed_order",
        }
        async with self._db.transaction(user_id, readonly=True, settings=settings) as connection:
            rows = await connection.fetch(
                f"""(SELECT {_RECALLED_MESSAGE_COLUMNS}, true AS vector, true AS current,
                            1.0 - (embedding::{current.cast} <=> $5::{current.cast}) AS similarity
                     FROM messages
                     WHERE {_MESSAGE_FILTERS} AND embedding_model = {current.id} AND embedding IS NOT NULL
                     ORDER BY embedding::{current.cast} <=> $5::{current.cast} LIMIT $6)
                    UNION ALL
                    (SELECT {_RECALLED_MESSAGE_COLUMNS}, false AS vector,
                            embedding_model IS NOT DISTINCT FROM {current.id} AS current,
                            cardinality(ARRAY(
                                SELECT unnest(words) INTERSECT SELECT unnest($7::bytea[])
                            ))::float8 / greatest(cardinality($7::bytea[]), 1) AS similarity
                     FROM messages
                     WHERE cardinality($7::bytea[]) > 0 AND {_MESSAGE_FILTERS} AND words && $7::bytea[]
                     ORDER BY similarity DESC, created_at DESC LIMIT $6)""",
                uuid.UUID(user_id),
                query.agent_id,
                query.since,
                query.until,
                _vector(embedding),
                limit,
                tokens,
                uuid.UUID(query.exclude_conversation_id) if query.exclude_conversation_id else None,
            )

        def found(row: asyncpg.Record) -> tuple[FoundMessage, float]:
            return FoundMessage(str(row["conv_id"]), _message(cipher, row)), float(row["similarity"])

        return MessageCandidates(
            nearest=[found(row) for row in rows if row["vector"]],
            keyword=[found(row) for row in rows if not row["vector"]],
            unembedded=[found(row) for row in rows if not row["vector"] and not row["current"]],
        )
