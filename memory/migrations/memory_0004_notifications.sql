-- depends: memory_0003_encryption
-- Notifications (issue 16): what agents leave for a person, their notification settings, and their
-- devices' Web Push subscriptions. Everything a person could be recognised by is sealed with their data
-- key (mesh.envelope, bound to table, column and row id); what must be found again is a blind token
-- (an HMAC under a key derived from the same data key): a rule's dedupe key, a subscription's endpoint.
-- Like every user-data table: user_id cascading from users (erasure is one DELETE) and row-level
-- security, enabled and forced.

CREATE TABLE notifications (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id        text NOT NULL,
    dedupe_token    bytea NOT NULL,
    title           bytea NOT NULL,
    body            bytea NOT NULL,
    kind            bytea NOT NULL,
    link            bytea NOT NULL,
    conversation_id bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    read_at         timestamptz,
    UNIQUE (user_id, dedupe_token)
);
CREATE INDEX notifications_user_recent ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_user_unread ON notifications (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL;

CREATE TABLE notification_settings (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    settings   bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE push_subscriptions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint_token bytea NOT NULL,
    endpoint       bytea NOT NULL,
    keys           bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (user_id, endpoint_token)
);

ALTER TABLE notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY notifications_isolation ON notifications
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);

ALTER TABLE notification_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY notification_settings_isolation ON notification_settings
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);

ALTER TABLE push_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE push_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY push_subscriptions_isolation ON push_subscriptions
    USING (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid)
    WITH CHECK (user_id = NULLIF(current_setting('athena.user_id', true), '')::uuid);
