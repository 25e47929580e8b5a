-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS outbox_published_at_idx;
