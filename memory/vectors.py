"""The SQL of versioned embeddings (memory_0006): the model registry, the texts still lacking a vector of
the current model, and the re-embedding job with its cursor and lease.

A model is current once `make_current` has run for it: its row in `embedding_models` exists, its partial
HNSW indexes exist (`(embedding::vector(N)) WHERE embedding_model = id`, on `vector_memory` and
`messages`; a query names the same cast and model id as literals, so the planner can use them), and its
job in `embedding_jobs` is open. Only integers of this module's own rows are interpolated into SQL.
"""

# ruff: noqa: S608 (queries interpolate only model ids and dimensions read from embedding_models)

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from memory.database import Database
from memory.embedding_models import EmbeddingModel, ReembedProgress
from memory.keys import UserKeys
from mesh.envelope import Cipher

_MODELS_LOCK = 0x61746D6F
"""Advisory lock serialising replicas that make a model current at the same time."""
INDEX_TIMEOUT_SECONDS = 600.0
"""Longest the partial indexes of a new model may take to build (they scan the tables once)."""


@dataclass(frozen=True, slots=True)
class CurrentModel:
    """The configured model as the database knows it."""

    id: int
    model: EmbeddingModel

    @property
    def cast(self) -> str:
        """The SQL type its vectors are compared as: `vector(N)`."""
        return f"vector({self.model.dimension})"

    @property
    def stale(self) -> str:
        """SQL: the row has no vector of this model (NULL or another model), in a form an index on
        (user_id, embedding_model) answers."""
        return f"(embedding_model IS NULL OR embedding_model < {self.id} OR embedding_model > {self.id})"


def as_vector(values: Sequence[float]) -> npt.NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class PendingText:
    """A memory or message without a vector of the current model."""

    kind: str
    """"memory" or "message"."""
    id: uuid.UUID
    sealed: bytes
    """Its stored ciphertext: the vector is written only if the text is still this one."""
    text: str


class PostgresEmbeddingModels:
    """The registry, the job and the pending texts, on the memory database."""

    def __init__(self, database: Database, keys: UserKeys) -> None:
        self._db = database
        self._keys = keys

    async def make_current(self, model: EmbeddingModel) -> CurrentModel:
        """Registers `model` (once), makes sure its indexes exist, and opens its job: from the start for a
        new model, and again from the first user when the last sweep finished (a message whose embedding
        was lost to a crash is picked up by the next start)."""
        async with self._db.transaction(None) as connection:
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MODELS_LOCK)
            model_id = await connection.fetchval(
                """WITH added AS (
                       INSERT INTO embedding_models (name, dimension) VALUES ($1, $2)
                       ON CONFLICT (name, dimension) DO NOTHING RETURNING id
                   )
                   SELECT id FROM added UNION ALL
                   SELECT id FROM embedding_models WHERE name = $1 AND dimension = $2""",
                model.name,
                model.dimension,
            )
            current = CurrentModel(int(model_id), model)
            for table in ("vector_memory", "messages"):
                await connection.execute(
                    f"""CREATE INDEX IF NOT EXISTS {table}_embedding_{current.id} ON {table}
                        USING hnsw ((embedding::{current.cast}) vector_cosine_ops)
                        WHERE embedding_model = {current.id}""",
                    timeout=INDEX_TIMEOUT_SECONDS,
                )
            await connection.execute(
                """INSERT INTO embedding_jobs (model_id) VALUES ($1)
                   ON CONFLICT (model_id) DO UPDATE
                   SET after_user = NULL, users_done = 0, started_at = now(), updated_at = now(),
                       finished_at = NULL
                   WHERE embedding_jobs.finished_at IS NOT NULL""",
                current.id,
            )
        return current

    async def lease(self, current: CurrentModel, holder: str, seconds: float) -> tuple[bool, str | None]:
        """Takes (or renews) the open job of `current` for `holder`: (whether taken, the last user done)."""
        async with self._db.transaction(None) as connection:
            row = await connection.fetchrow(
                """UPDATE embedding_jobs
                   SET leased_by = $2, lease_until = now() + make_interval(secs => $3), updated_at = now()
                   WHERE model_id = $1 AND finished_at IS NULL
                         AND (leased_by IS NULL OR leased_by = $2 OR lease_until < now())
                   RETURNING after_user""",
                current.id,
                holder,
                seconds,
            )
        return (row is not None, row["after_user"] if row is not None else None)

    async def release(self, current: CurrentModel, holder: str) -> None:
        """Gives the lease up (a replica stopping), so that another takes over at once."""
        async with self._db.transaction(None) as connection:
            await connection.execute(
                """UPDATE embedding_jobs SET leased_by = NULL, lease_until = NULL, updated_at = now()
                   WHERE model_id = $1 AND leased_by = $2""",
                current.id,
                holder,
            )

    async def next_user(self, after: str | None) -> str | None:
        """The first user (by id) after `after` who has a data key, i.e. anything stored."""
        async with self._db.transaction(None, readonly=True) as connection:
            value = await connection.fetchval(
                "SELECT owner FROM data_keys WHERE owner > $1 ORDER BY owner LIMIT 1", after or ""
            )
        return str(value) if value is not None else None

    async def advance(
        self, current: CurrentModel, holder: str, user_id: str, embedded: int, seconds: float
    ) -> bool:
        """Records `user_id` as done (with `embedded` texts) and renews the lease; False when `holder` lost
        the lease meanwhile (another replica goes on from the cursor it finds)."""
        async with self._db.transaction(None) as connection:
            done = await connection.fetchval(
                """UPDATE embedding_jobs
                   SET after_user = $3, users_done = users_done + 1, embedded = embedded + $4,
                       lease_until = now() + make_interval(secs => $5), updated_at = now()
                   WHERE model_id = $1 AND leased_by = $2 AND finished_at IS NULL RETURNING 1""",
                current.id,
                holder,
                user_id,
                embedded,
                seconds,
            )
        return done is not None

    async def finish(self, current: CurrentModel, holder: str) -> bool:
        """Closes the job and drops the other models' indexes (their vectors were all replaced)."""
        async with self._db.transaction(None) as connection:
            done = await connection.fetchval(
                """UPDATE embedding_jobs SET finished_at = now(), leased_by = NULL, lease_until = NULL,
                       updated_at = now()
                   WHERE model_id = $1 AND leased_by = $2 AND finished_at IS NULL RETURNING 1""",
                current.id,
                holder,
            )
            if done is None:
                return False
            others = await connection.fetch("SELECT id FROM embedding_models WHERE id <> $1", current.id)
            for row in others:
                for table in ("vector_memory", "messages"):
                    await connection.execute(f"DROP INDEX IF EXISTS {table}_embedding_{int(row['id'])}")
        return True

    async def progress(self, current: CurrentModel) -> ReembedProgress:
        async with self._db.transaction(None, readonly=True) as connection:
            row = await connection.fetchrow(
                """SELECT users_done, embedded, finished_at IS NOT NULL AS finished,
                          CASE WHEN lease_until > now() THEN leased_by ELSE '' END AS leased_by,
                          (SELECT count(*) FROM data_keys) AS users_total
                   FROM embedding_jobs WHERE model_id = $1""",
                current.id,
            )
        assert row is not None, "make_current opened the job"
        return ReembedProgress(
            model=current.model,
            users_done=int(row["users_done"]),
            users_total=int(row["users_total"]),
            embedded=int(row["embedded"]),
            finished=bool(row["finished"]),
            leased_by=row["leased_by"] or "",
        )

    async def pending(
        self,
        current: CurrentModel,
        user_id: str,
        limit: int,
        message_ids: Sequence[str] | None = None,
    ) -> list[PendingText]:
        """Up to `limit` of the user's memories and messages without a vector of `current`, opened
        (only the messages `message_ids`, when given)."""
        uid = uuid.UUID(user_id)
        # Statements each whole on their own (`Database.statements`): a text changed between them is
        # caught when its vector is stored (`store` compares the sealed text).
        async with self._db.statements(user_id) as connection:
            memories = (
                await connection.fetch(
                    f"""SELECT id, text FROM vector_memory WHERE user_id = $1 AND {current.stale}
                        ORDER BY id LIMIT $2""",
                    uid,
                    limit,
                )
                if message_ids is None
                else []
            )
            messages = await connection.fetch(
                f"""SELECT id, content FROM messages
                    WHERE user_id = $1 AND {current.stale} AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[]))
                    ORDER BY id LIMIT $2""",
                uid,
                limit - len(memories),
                [uuid.UUID(i) for i in message_ids] if message_ids is not None else None,
            )
        if not memories and not messages:  # a sweep's common case: no data key unwrapped, no KMS call
            return []
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return []
        return [
            *(
                _pending(cipher, "memory", "vector_memory", "text", row["id"], row["text"])
                for row in memories
            ),
            *(
                _pending(cipher, "message", "messages", "content", row["id"], row["content"])
                for row in messages
            ),
        ]

    async def store(
        self,
        current: CurrentModel,
        user_id: str,
        texts: Sequence[PendingText],
        vectors: Sequence[Sequence[float] | None],
        words: Sequence[list[bytes]],
    ) -> int:
        """Writes each text's vector (None: nothing to embed) as `current`'s, unless the text changed since
        it was read; returns how many were written."""
        uid = uuid.UUID(user_id)
        written = 0
        # One text (a message a turn just stored, the common case) is one statement whole on its own: one
        # round trip where a transaction takes three. Several (a sweep's batch) share one commit.
        scope = self._db.statements(user_id) if len(texts) == 1 else self._db.transaction(user_id)
        async with scope as connection:
            for text, vector, tokens in zip(texts, vectors, words, strict=True):
                embedding = as_vector(vector) if vector is not None else None
                if text.kind == "memory":
                    done = await connection.fetchval(
                        """UPDATE vector_memory SET embedding = $3, embedding_model = $4
                           WHERE id = $1 AND user_id = $2 AND text = $5 RETURNING 1""",
                        text.id,
                        uid,
                        embedding,
                        current.id,
                        text.sealed,
                    )
                else:
                    done = await connection.fetchval(
                        """UPDATE messages SET embedding = $3, embedding_model = $4, words = $6
                           WHERE id = $1 AND user_id = $2 AND content = $5 RETURNING 1""",
                        text.id,
                        uid,
                        embedding,
                        current.id,
                        text.sealed,
                        tokens,
                    )
                written += done is not None
        return written

    async def store_words(
        self, user_id: str, texts: Sequence[PendingText], words: Sequence[list[bytes]]
    ) -> None:
        """Writes the blind words of the messages among `texts` that have none yet (their vectors could not
        be made now), unless the text changed since it was read."""
        rows = [
            (text.id, text.sealed, tokens)
            for text, tokens in zip(texts, words, strict=True)
            if text.kind == "message"
        ]
        if not rows:
            return
        async with self._db.transaction(user_id) as connection:
            await connection.executemany(
                """UPDATE messages SET words = $3
                   WHERE id = $1 AND user_id = $4 AND content = $2 AND words IS NULL""",
                [(*row, uuid.UUID(user_id)) for row in rows],
            )

    async def words(self, user_id: str, texts: Sequence[str]) -> list[list[bytes]]:
        """The blind tokens of each text's words under the user's key."""
        cipher = await self._keys.reading(user_id)
        if cipher is None:
            return [[] for _ in texts]
        return [cipher.words(text) for text in texts]


def _pending(
    cipher: Cipher, kind: str, table: str, column: str, row_id: uuid.UUID, sealed: bytes
) -> PendingText:
    return PendingText(
        kind=kind, id=row_id, sealed=sealed, text=cipher.open_text(table, column, row_id, sealed)
    )
