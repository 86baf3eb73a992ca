-- depends: memory_0004_notifications
DROP TABLE memory_tombstones;
ALTER TABLE users DROP COLUMN learns_facts;
DELETE FROM vector_memory WHERE valid_to IS NOT NULL;
DROP INDEX vector_memory_message, vector_memory_supersedes, vector_memory_current_key;
ALTER TABLE vector_memory ADD CONSTRAINT vector_memory_key_token UNIQUE (user_id, agent_scope, key_token);
ALTER TABLE vector_memory DROP COLUMN source, DROP COLUMN valid_from, DROP COLUMN valid_to,
    DROP COLUMN supersedes, DROP COLUMN conversation_id, DROP COLUMN message_id, DROP COLUMN confidence;
