DROP INDEX IF EXISTS users_broadcast_idx;
DROP INDEX IF EXISTS outbox_broadcast_idx;
ALTER TABLE outbox DROP COLUMN broadcast_id, DROP COLUMN parse_mode;
DROP TABLE broadcasts;
