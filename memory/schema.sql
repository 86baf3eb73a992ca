-- Schema of the memory service, rendered by memory/migrations/memory_0001_schema.py with the configured
-- embedding dimension in place of {dimension}.
--
-- Every user-data table carries user_id with ON DELETE CASCADE to users (purging a user is one DELETE)
-- and row-level security, enabled and FORCED (the application role owns the tables; without FORCE the
-- owner would bypass its own policies). The policy reads the user id each transaction sets with
-- set_config('athena.user_id', ..., true); unset or empty means no rows at all. `agents` is global.

CREATE TABLE agents (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    system_prompt text NOT NULL DEFAULT '',
    user_prompt   text NOT NULL DEFAULT '',
    model         text NOT NULL DEFAULT '',
    accent_token  text NOT NULL DEFAULT '',
    enabled       boolean NOT NULL DEFAULT true,
    position      integer NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id         uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_agents (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id   text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    enabled    boolean NOT NULL,
    enabled_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, agent_id)
);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id   text NOT NULL,
    title      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX conversations_user_recent ON conversations (user_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    seq               bigint GENERATED ALWAYS AS IDENTITY,
    conv_id           uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role              text NOT NULL CHECK (role IN ('user', 'assistant')),
    agent_id          text NOT NULL,
    content           text NOT NULL,
    tool_call         jsonb NOT NULL DEFAULT '[]'::jsonb,
    status            text NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'failed')),
    error             text NOT NULL DEFAULT '',
    client_request_id text,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (user_id, client_request_id)
);
CREATE INDEX messages_conversation ON messages (conv_id, seq);
CREATE INDEX messages_user ON messages (user_id);

CREATE TABLE vector_memory (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_scope text NOT NULL,
    agent_id    text NOT NULL,
    key         text,
    text        text NOT NULL,
    embedding   vector({dimension}) NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (user_id, agent_scope, key)
);
CREATE INDEX vector_memory_embedding ON vector_memory USING hnsw (embedding vector_cosine_ops);
CREATE INDEX vector_memory_tsv ON vector_memory USING gin (tsv);
CREATE INDEX vector_memory_user_recent ON vector_memory (user_id, created_at DESC, id DESC);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_isolation ON users
    USING (id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (id = NULLIF(current_setting('athena.user_id', true), '')::uuid);

ALTER TABLE user_agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_agents FORCE ROW LEVEL SECURITY;
CREATE POLICY user_agents_isolation ON user_agents
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);

ALTER TABLE conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversations FORCE ROW LEVEL SECURITY;
CREATE POLICY conversations_isolation ON conversations
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);

ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;
CREATE POLICY messages_isolation ON messages
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);

ALTER TABLE vector_memory ENABLE ROW LEVEL SECURITY;
ALTER TABLE vector_memory FORCE ROW LEVEL SECURITY;
CREATE POLICY vector_memory_isolation ON vector_memory
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);
