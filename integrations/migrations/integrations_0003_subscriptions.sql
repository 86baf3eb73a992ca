-- depends: integrations_0002_uploads_health
-- The providers' change-notification subscriptions (integrations.subscriptions): a Graph subscription or a
-- Google push channel per person, provider and capability (two for a moment while a Google channel is
-- replaced). `id` is the provider's (Graph subscription id, Google channel id); `resource` what it watches
-- (a Graph resource path, Google's opaque resourceId, which channels.stop needs). The secret the provider
-- echoes with each notification (Graph clientState, Google channel token) is sealed with the person's data
-- key; the expiry is plain, to find what needs renewing. `missed_at`: notifications may have been lost since.
-- `cursor`: where a Google files channel (Drive's changes) has been read up to, a Drive page token (opaque,
-- not the person's data); empty for the others.
CREATE TABLE integrations.subscriptions (
    provider      text NOT NULL CHECK (provider IN ('google', 'microsoft')),
    id            text NOT NULL,
    user_id       uuid NOT NULL,
    capability    text NOT NULL CHECK (capability IN ('calendar', 'files', 'health')),
    resource      text NOT NULL,
    secret_sealed bytea NOT NULL,
    expires_at    timestamptz NOT NULL,
    missed_at     timestamptz,
    cursor        text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, id)
);
CREATE INDEX subscriptions_by_user ON integrations.subscriptions (user_id);
CREATE INDEX subscriptions_expiry ON integrations.subscriptions (expires_at);
