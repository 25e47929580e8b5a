ALTER TABLE sent_messages DROP COLUMN msg_key;
ALTER TABLE outbox DROP COLUMN action;
ALTER TABLE broadcasts ALTER COLUMN cursor SET DEFAULT 0;
DROP TABLE audience;
