-- The auth schema: accounts, their identities at providers, session families with their refresh tokens
-- (hashes only) and logins in progress. Every user row cascades, so deleting a user erases them in auth.

CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.users (
    id           uuid PRIMARY KEY,
    email        text NOT NULL UNIQUE CHECK (email = lower(email)),
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE TABLE auth.identities (
    provider   text NOT NULL,
    subject    text NOT NULL,
    user_id    uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identities_user_id ON auth.identities (user_id);

-- One row per login: the family of refresh tokens it descends into. Revoking the family ends the session.
CREATE TABLE auth.sessions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user_id ON auth.sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE auth.refresh_tokens (
    id         uuid PRIMARY KEY,
    family_id  uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    parent_id  uuid REFERENCES auth.refresh_tokens (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_family_id ON auth.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_at ON auth.refresh_tokens (expires_at);

-- Between BeginLogin and CompleteLogin; keyed by the SHA-256 of the state, deleted when consumed.
CREATE TABLE auth.login_states (
    state_hash    bytea PRIMARY KEY CHECK (octet_length(state_hash) = 32),
    provider      text NOT NULL,
    redirect_uri  text NOT NULL,
    nonce         text NOT NULL,
    code_verifier text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX login_states_expires_at ON auth.login_states (expires_at);
