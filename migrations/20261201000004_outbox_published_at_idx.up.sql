-- no-transaction
-- The worker prunes published outbox rows older than the retention, oldest first, in small
-- batches; unpublished rows are never pruned, and not in this index (see 20261201000002 for
-- why CONCURRENTLY and outside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
