"""Agents, users, conversations, messages and vector memories, with row-level security.

The SQL lives in memory/schema.sql; the embedding column is created with the dimension configured when
the migration runs (the migration variable read by memory.migrate.render_schema).
"""

from yoyo import step

from memory.migrate import migration_dimension, render_schema

__depends__: set[str] = set()


def apply(connection: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    try:
        cursor.execute(render_schema(migration_dimension()))
    finally:
        cursor.close()


def rollback(connection: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    try:
        cursor.execute(
            "DROP TABLE IF EXISTS vector_memory, messages, conversations, user_agents, users, agents CASCADE"
        )
    finally:
        cursor.close()


steps = [step(apply, rollback)]
