"""Versioned embeddings (issue 17): every vector records the model that made it, and messages get vectors.

- `embedding_models`: one row per (model name, dimension) vectors were ever made with; a vector is only
  compared with vectors of the same row (memory.embedding_models).
- `vector_memory.embedding` becomes an untyped `vector` with `embedding_model` beside it; the HNSW index
  becomes one partial expression index per model, `(embedding::vector(N)) WHERE embedding_model = id`
  (pgvector indexes need a fixed dimension; the service creates a model's indexes when it makes it
  current at start-up, memory.vectors). Existing vectors are recorded as made by the model configured now if
  their dimension matches it, else by an unknown model (re-embedded in the background, memory.reembed).
- `messages.embedding`, `messages.embedding_model` and `messages.words` (the blind tokens of its words,
  as for memories): conversation recall. Existing messages have none yet; the background job fills them.
- `embedding_jobs`: per model, the re-embedding cursor (users in id order), its lease and its progress.
"""

from __future__ import annotations

from typing import Any

from yoyo import step

from memory.migrate import migration_dimension, migration_model

__depends__ = {"memory_0005_fact_history"}

UNKNOWN_MODEL = "unknown (before memory_0006)"
"""The model recorded for vectors of a dimension other than the configured one."""

_TABLES = """
CREATE TABLE embedding_models (
    id         smallint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    name       text NOT NULL,
    dimension  integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, dimension)
);
CREATE TABLE embedding_jobs (
    model_id    smallint PRIMARY KEY REFERENCES embedding_models (id) ON DELETE CASCADE,
    after_user  text,
    users_done  integer NOT NULL DEFAULT 0,
    embedded    bigint NOT NULL DEFAULT 0,
    leased_by   text,
    lease_until timestamptz,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
"""


def apply(connection: Any) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(_TABLES)
        cursor.execute(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'vector_memory'::regclass AND attname = 'embedding'"
        )
        row = cursor.fetchone()
        existing = int(row[0]) if row is not None else migration_dimension()
        name = migration_model() if existing == migration_dimension() else UNKNOWN_MODEL
        cursor.execute(
            "INSERT INTO embedding_models (name, dimension) VALUES (%s, %s) RETURNING id", (name, existing)
        )
        (model_id,) = cursor.fetchone()
        model_id = int(model_id)
        # A constant default fills the existing rows without rewriting them (and without row-level
        # security in the way); it is dropped again: new rows name their model.
        cursor.execute(
            f"""DROP INDEX vector_memory_embedding;
            ALTER TABLE vector_memory ALTER COLUMN embedding TYPE vector,
                ALTER COLUMN embedding DROP NOT NULL,
                ADD COLUMN embedding_model smallint DEFAULT {model_id} REFERENCES embedding_models (id);
            ALTER TABLE vector_memory ALTER COLUMN embedding_model DROP DEFAULT;
            CREATE INDEX vector_memory_user_model ON vector_memory (user_id, embedding_model);
            ALTER TABLE messages ADD COLUMN embedding vector,
                ADD COLUMN embedding_model smallint REFERENCES embedding_models (id),
                ADD COLUMN words bytea[];
            CREATE INDEX messages_user_model ON messages (user_id, embedding_model);
            CREATE INDEX messages_words ON messages USING gin (words);"""
        )
    finally:
        cursor.close()


steps = [step(apply)]
