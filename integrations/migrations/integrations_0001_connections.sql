-- The integrations service's tables, in a schema of their own.
--
-- - `data_keys`: each person's AES-256 data key, wrapped by the KMS (mesh.keystore).
-- - `connections`: one per person and provider. `grant_sealed` holds the provider's tokens and the
--   account's address as JSON, sealed with the person's data key (bound to table, column and row id); only
--   the access token's expiry is plain, to find what needs refreshing.
-- - `pending_connections`: connections begun and not completed, keyed by the SHA-256 of their OAuth `state`
--   (never the state itself); the PKCE verifier sealed. Expired rows are purged.
CREATE SCHEMA IF NOT EXISTS integrations;

CREATE TABLE integrations.data_keys (
    owner      text PRIMARY KEY,
    kek_id     text NOT NULL,
    wrapped    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
);

CREATE TABLE integrations.connections (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    provider          text NOT NULL CHECK (provider IN ('google', 'microsoft')),
    capabilities      text[] NOT NULL,
    status            text NOT NULL CHECK (status IN ('connected', 'needs_reconnect', 'error')),
    status_message    text NOT NULL DEFAULT '',
    grant_sealed      bytea NOT NULL,
    access_expires_at timestamptz NOT NULL,
    connected_at      timestamptz NOT NULL,
    last_used_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, provider)
);

CREATE TABLE integrations.pending_connections (
    state_hash    bytea PRIMARY KEY,
    user_id       uuid NOT NULL,
    provider      text NOT NULL CHECK (provider IN ('google', 'microsoft')),
    capabilities  text[] NOT NULL,
    redirect_uri  text NOT NULL,
    code_verifier bytea NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX pending_connections_expiry ON integrations.pending_connections (expires_at);
