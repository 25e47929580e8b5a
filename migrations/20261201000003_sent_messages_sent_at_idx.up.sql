-- no-transaction
-- The worker prunes the sender's ledger rows older than the retention, oldest first, in small
-- batches (see 20261201000002 for why CONCURRENTLY and outside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sent_messages_sent_at_idx ON sent_messages (sent_at);
