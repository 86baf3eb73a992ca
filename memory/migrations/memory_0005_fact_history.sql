-- depends: memory_0004_notifications
-- Facts with history (issue 17): every memory records where it came from and when it held. A newer
-- version of a fact closes the old one (`valid_to`) and links to it (`supersedes`) instead of overwriting
-- it; only current versions (valid_to IS NULL) are unique per key. Inferred facts (extracted after a turn)
-- name the user message that stated them. `memory_tombstones` remembers, by blind key token only, that the
-- person forgot a keyed fact, so that the same old message does not infer it again.

ALTER TABLE vector_memory
    ADD COLUMN source          text NOT NULL DEFAULT 'explicit' CHECK (source IN ('explicit', 'inferred')),
    ADD COLUMN valid_from      timestamptz,
    ADD COLUMN valid_to        timestamptz,
    ADD COLUMN supersedes      uuid REFERENCES vector_memory (id) ON DELETE SET NULL,
    ADD COLUMN conversation_id uuid,
    ADD COLUMN message_id      uuid,
    ADD COLUMN confidence      real NOT NULL DEFAULT 1.0 CHECK (confidence >= 0 AND confidence <= 1);
-- Existing memories held since they were stored. Row-level security is lifted for this transaction's
-- backfill (the migration runs as the table owner) and forced again before it commits.
ALTER TABLE vector_memory NO FORCE ROW LEVEL SECURITY;
UPDATE vector_memory SET valid_from = created_at;
ALTER TABLE vector_memory FORCE ROW LEVEL SECURITY;
ALTER TABLE vector_memory ALTER COLUMN valid_from SET NOT NULL,
    ALTER COLUMN valid_from SET DEFAULT clock_timestamp();
ALTER TABLE vector_memory DROP CONSTRAINT vector_memory_key_token;
CREATE UNIQUE INDEX vector_memory_current_key ON vector_memory (user_id, agent_scope, key_token)
    WHERE valid_to IS NULL;
CREATE INDEX vector_memory_supersedes ON vector_memory (supersedes) WHERE supersedes IS NOT NULL;
CREATE INDEX vector_memory_message ON vector_memory (user_id, message_id) WHERE message_id IS NOT NULL;

-- A person may turn fact learning off (AccountService.SetMemorySettings); on by default.
ALTER TABLE users ADD COLUMN learns_facts boolean NOT NULL DEFAULT true;

CREATE TABLE memory_tombstones (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_scope  text NOT NULL,
    key_token    bytea NOT NULL,
    forgotten_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, agent_scope, key_token)
);
ALTER TABLE memory_tombstones ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_tombstones FORCE ROW LEVEL SECURITY;
CREATE POLICY memory_tombstones_isolation ON memory_tombstones
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);
