-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS sent_messages_sent_at_idx;
