"""Per-user envelope encryption (issue 14): what a person said and what AthenaOS remembers becomes
ciphertext, in place.

- `data_keys`: each user's AES-256 data key, wrapped by the KMS (mesh.keystore); `erased_users`: the ids of
  erased accounts, so that no write recreates one.
- Sealed (bytea, mesh.envelope): `conversations.title`, `messages.content` and `messages.tool_call` (its
  JSON), `vector_memory.text` and `vector_memory.key`.
- Keyword search: `vector_memory.tsv` (the words spelled out) gives way to `words`, the blind tokens of the
  text (GIN-indexed); `text_token` and `key_token` (blind tokens of the whole text and key) find the same
  memory again; `payload` (never written) goes.

Existing rows are encrypted here, user by user, with a data key made for each user through the KMS the
migration is run with. Row-level security is lifted for the migration's own transaction (it is the table
owner) and forced again before it commits.
"""

from __future__ import annotations

import json
from typing import Any

from yoyo import step

from memory.migrate import SERVICE, migration_kms
from mesh.keystore import add_key_in_migration

__depends__ = {"memory_0002_turn_leases"}

_TABLES = ("users", "user_agents", "conversations", "messages", "vector_memory")

_BEFORE = """
CREATE TABLE data_keys (
    owner      text PRIMARY KEY,
    kek_id     text NOT NULL,
    wrapped    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
);
CREATE TABLE erased_users (
    id        uuid PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE conversations RENAME COLUMN title TO title_plain;
ALTER TABLE conversations ADD COLUMN title bytea;
ALTER TABLE messages RENAME COLUMN content TO content_plain;
ALTER TABLE messages RENAME COLUMN tool_call TO tool_call_plain;
ALTER TABLE messages ADD COLUMN content bytea, ADD COLUMN tool_call bytea;
ALTER TABLE vector_memory DROP CONSTRAINT vector_memory_user_id_agent_scope_key_key;
ALTER TABLE vector_memory RENAME COLUMN text TO text_plain;
ALTER TABLE vector_memory RENAME COLUMN key TO key_plain;
ALTER TABLE vector_memory ADD COLUMN text bytea, ADD COLUMN key bytea, ADD COLUMN key_token bytea,
    ADD COLUMN text_token bytea, ADD COLUMN words bytea[] NOT NULL DEFAULT '{}';
"""

_AFTER = """
ALTER TABLE conversations DROP COLUMN title_plain, ALTER COLUMN title SET NOT NULL;
ALTER TABLE messages DROP COLUMN content_plain, DROP COLUMN tool_call_plain,
    ALTER COLUMN content SET NOT NULL, ALTER COLUMN tool_call SET NOT NULL;
ALTER TABLE vector_memory DROP COLUMN tsv;
ALTER TABLE vector_memory DROP COLUMN text_plain, DROP COLUMN key_plain, DROP COLUMN payload,
    ALTER COLUMN text SET NOT NULL, ALTER COLUMN text_token SET NOT NULL;
ALTER TABLE vector_memory ADD CONSTRAINT vector_memory_key_token UNIQUE (user_id, agent_scope, key_token);
CREATE INDEX vector_memory_text_token ON vector_memory (user_id, agent_scope, text_token);
CREATE INDEX vector_memory_words ON vector_memory USING gin (words);
"""


def _encrypt_user(cursor: Any, user_id: str) -> None:
    cipher = add_key_in_migration(cursor, "data_keys", migration_kms(), SERVICE, user_id)
    cursor.execute("SELECT id, title_plain FROM conversations WHERE user_id = %s", (user_id,))
    for row_id, title in cursor.fetchall():
        cursor.execute(
            "UPDATE conversations SET title = %s WHERE id = %s",
            (cipher.seal("conversations", "title", row_id, title), row_id),
        )
    cursor.execute("SELECT id, content_plain, tool_call_plain FROM messages WHERE user_id = %s", (user_id,))
    for row_id, content, tool_call in cursor.fetchall():
        cursor.execute(
            "UPDATE messages SET content = %s, tool_call = %s WHERE id = %s",
            (
                cipher.seal("messages", "content", row_id, content),
                cipher.seal("messages", "tool_call", row_id, json.dumps(tool_call)),
                row_id,
            ),
        )
    cursor.execute("SELECT id, text_plain, key_plain FROM vector_memory WHERE user_id = %s", (user_id,))
    for row_id, text, key in cursor.fetchall():
        cursor.execute(
            """UPDATE vector_memory SET text = %s, text_token = %s, words = %s, key = %s, key_token = %s
               WHERE id = %s""",
            (
                cipher.seal("vector_memory", "text", row_id, text),
                cipher.text_token(text),
                cipher.words(text),
                cipher.seal("vector_memory", "key", row_id, key) if key else None,
                cipher.key_token(key) if key else None,
                row_id,
            ),
        )


def apply(connection: Any) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(_BEFORE)
        for table in _TABLES:  # the owner's own transaction sees every user's rows
            cursor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        cursor.execute("SELECT id::text FROM users ORDER BY id")
        for (user_id,) in cursor.fetchall():
            _encrypt_user(cursor, user_id)
        cursor.execute(_AFTER)
        for table in _TABLES:
            cursor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    finally:
        cursor.close()


steps = [step(apply)]
