-- no-transaction
-- The worker prunes processed updates older than the retention (COURIER_RETENTION), oldest
-- first, in small batches: this index finds them without scanning the table. Built
-- CONCURRENTLY, so an existing large table keeps taking inserts meanwhile (which is why this
-- migration runs outside a transaction, and holds one statement). If the build fails, drop the
-- INVALID index it leaves before starting again.
CREATE INDEX CONCURRENTLY processed_updates_processed_at_idx ON processed_updates (processed_at);
