-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS processed_updates_processed_at_idx;
