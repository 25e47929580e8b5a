ALTER TABLE sent_messages DROP COLUMN msg_key;
ALTER TABLE outbox DROP COLUMN action;
ALTER TABLE broadcasts ALTER COLUMN cursor SET DEFAULT 0;
CREATE INDEX IF NOT EXISTS users_broadcast_idx ON users (bot_id, user_id) WHERE blocked_at IS NULL;
DROP TABLE audience;
