-- no-transaction
-- The worker prunes processed updates older than the retention (COURIER_RETENTION), oldest
-- first, in small batches: this index finds them without scanning the table. Built
-- CONCURRENTLY, so an existing large table keeps taking inserts meanwhile (which is why this
-- migration runs outside a transaction, and holds one statement). IF NOT EXISTS: the index may
-- have been built by hand before the upgrade (large tables, see docs/DEPLOYMENT.md); an
-- interrupted build leaves an INVALID index that this skips, which the worker reports at
-- start-up (`retention::invalid_indexes`).
CREATE INDEX CONCURRENTLY IF NOT EXISTS processed_updates_processed_at_idx ON processed_updates (processed_at);
