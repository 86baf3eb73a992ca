-- depends: integrations_0001_connections
-- Uploads and the health data read from them.
--
-- - `uploads`: one per file a person uploads. The bytes are in object storage, chunk by chunk, each sealed
--   with the person's data key (integrations.uploads); here only where the upload stands. `chunk_ends` and
--   `chunk_digests` are each chunk's end offset and SHA-256 (the object key names the digest); the file's
--   name and SHA-256 are sealed. `claimed_until` is the lease of the replica importing it.
-- - `health_days`: one value per person, metric, civil day and source. The metric is a blind token
--   (mesh.envelope) and the value sealed: a dump shows that someone has data on a day, never what.
CREATE TABLE integrations.uploads (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('apple_health_export')),
    name_sealed      bytea NOT NULL,
    sha256_sealed    bytea NOT NULL,
    size_bytes       bigint NOT NULL CHECK (size_bytes > 0),
    received_bytes   bigint NOT NULL DEFAULT 0,
    chunk_ends       bigint[] NOT NULL DEFAULT '{}',
    chunk_digests    bytea[] NOT NULL DEFAULT '{}',
    state            text NOT NULL CHECK (state IN ('receiving', 'importing', 'imported', 'failed')),
    status_message   text NOT NULL DEFAULT '',
    progress         double precision NOT NULL DEFAULT 0,
    records_imported bigint NOT NULL DEFAULT 0,
    days_imported    integer NOT NULL DEFAULT 0,
    claimed_until    timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX uploads_by_user ON integrations.uploads (user_id, created_at DESC);
CREATE INDEX uploads_importing ON integrations.uploads (claimed_until) WHERE state = 'importing';

CREATE TABLE integrations.health_days (
    user_id      uuid NOT NULL,
    metric_token bytea NOT NULL,
    day          date NOT NULL,
    source       text NOT NULL CHECK (source IN ('apple_health')),
    value_sealed bytea NOT NULL,
    PRIMARY KEY (user_id, metric_token, source, day)
);
