-- depends: memory_0001_schema
ALTER TABLE messages DROP COLUMN lease_until;
ALTER TABLE messages DROP COLUMN answer_id;
