"""Per-user envelope encryption in auth (issue 14): e-mail addresses, display names and provider subjects
become ciphertext, in place, found again through blind indexes (`auth.privacy`).

- `auth.data_keys`: each user's AES-256 data key, and the service-wide index key, wrapped by the KMS
  (mesh.keystore).
- `auth.users`: `email` and `display_name` sealed (bytea); `email_index`, the address's blind token, is
  unique instead of the address.
- `auth.identities`: `subject` sealed; `(provider, subject_index)` is the key instead of the subject.

Existing rows are encrypted here, user by user, with a data key made for each user through the KMS the
migration is run with (the index key too, when there is a user to index). The plaintext columns are
dropped; their old row versions stay in the table files until PostgreSQL reuses the space (`VACUUM FULL
auth.users, auth.identities` rewrites them at once).
"""

from __future__ import annotations

from typing import Any

from yoyo import step

from auth.migrate import SERVICE, migration_kms
from auth.privacy import (
    DATA_KEYS_TABLE,
    IDENTITIES,
    INDEX_OWNER,
    USERS,
    email_token,
    identity_row,
    identity_token,
)
from mesh.envelope import Cipher
from mesh.keystore import DATA_KEYS_DDL, add_key_in_migration

__depends__ = {"auth_0001_schema"}

_BEFORE = f"""
{DATA_KEYS_DDL.format(table=DATA_KEYS_TABLE)};
ALTER TABLE auth.users RENAME COLUMN email TO email_plain;
ALTER TABLE auth.users RENAME COLUMN display_name TO display_name_plain;
ALTER TABLE auth.users ADD COLUMN email bytea, ADD COLUMN email_index bytea, ADD COLUMN display_name bytea;
ALTER TABLE auth.identities RENAME COLUMN subject TO subject_plain;
ALTER TABLE auth.identities ADD COLUMN subject bytea, ADD COLUMN subject_index bytea;
"""

_AFTER = """
ALTER TABLE auth.users DROP COLUMN email_plain, DROP COLUMN display_name_plain,
    ALTER COLUMN email SET NOT NULL, ALTER COLUMN display_name SET NOT NULL,
    ALTER COLUMN email_index SET NOT NULL,
    ADD CONSTRAINT users_email_index_key UNIQUE (email_index),
    ADD CONSTRAINT users_email_index_check CHECK (octet_length(email_index) = 16);
ALTER TABLE auth.identities DROP CONSTRAINT identities_pkey, DROP COLUMN subject_plain,
    ALTER COLUMN subject SET NOT NULL, ALTER COLUMN subject_index SET NOT NULL,
    ADD PRIMARY KEY (provider, subject_index),
    ADD CONSTRAINT identities_subject_index_check CHECK (octet_length(subject_index) = 16);
"""


def _new_key(cursor: Any, owner: str) -> Cipher:
    return add_key_in_migration(cursor, DATA_KEYS_TABLE, migration_kms(), SERVICE, owner)


def _encrypt_user(cursor: Any, index: Cipher, user_id: str, email: str, display_name: str) -> None:
    cipher = _new_key(cursor, user_id)
    cursor.execute(
        "UPDATE auth.users SET email = %s, email_index = %s, display_name = %s WHERE id = %s",
        (
            cipher.seal(USERS, "email", user_id, email),
            email_token(index, email),
            cipher.seal(USERS, "display_name", user_id, display_name),
            user_id,
        ),
    )
    cursor.execute("SELECT provider, subject_plain FROM auth.identities WHERE user_id = %s", (user_id,))
    for provider, subject in cursor.fetchall():
        subject_index = identity_token(index, provider, subject)
        cursor.execute(
            "UPDATE auth.identities SET subject = %s, subject_index = %s "
            "WHERE provider = %s AND subject_plain = %s",
            (
                cipher.seal(IDENTITIES, "subject", identity_row(provider, subject_index), subject),
                subject_index,
                provider,
                subject,
            ),
        )


def apply(connection: Any) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(_BEFORE)
        cursor.execute("SELECT id::text, email_plain, display_name_plain FROM auth.users ORDER BY id")
        users = cursor.fetchall()
        if users:
            index = _new_key(cursor, INDEX_OWNER)
            for user_id, email, display_name in users:
                _encrypt_user(cursor, index, user_id, email, display_name)
        cursor.execute(_AFTER)
    finally:
        cursor.close()


steps = [step(apply)]
