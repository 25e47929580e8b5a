-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sent_messages_key_idx;
