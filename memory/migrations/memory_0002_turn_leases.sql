-- depends: memory_0001_schema
-- A user message is a turn: the id its answer is (to be) stored under, and until when the caller
-- answering it holds it (renewed while it answers). A repeated request finds the turn done, running, or
-- abandoned (lease over: it may be taken over); see ConversationService.StartTurn.
ALTER TABLE messages ADD COLUMN answer_id uuid;
ALTER TABLE messages ADD COLUMN lease_until timestamptz;
