-- depends: integrations_0003_subscriptions
-- The documents a person's conversations referred to (read through `file_read`), so that the business
-- assistant can say when one of them changes (integrations.proactive.document_changed). One row per person
-- and file, the latest conversation to read it: the file is found by the blind token of
-- "<provider>:<file id>" (mesh.envelope), its name sealed with the person's data key; the conversation id is
-- an opaque id. Rows older than the retention are deleted by the maintenance round.
CREATE TABLE integrations.file_references (
    user_id         uuid NOT NULL,
    provider        text NOT NULL CHECK (provider IN ('google', 'microsoft')),
    file_token      bytea NOT NULL,
    name_sealed     bytea NOT NULL,
    conversation_id text NOT NULL,
    read_at         timestamptz NOT NULL,
    PRIMARY KEY (user_id, provider, file_token)
);
CREATE INDEX file_references_age ON integrations.file_references (read_at);
