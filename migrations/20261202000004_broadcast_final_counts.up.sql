-- A finished broadcast's counts, written once by the workers: its outbox rows and the sender's
-- ledger rows, which they are counted from, are pruned after COURIER_RETENTION.
ALTER TABLE broadcasts
    ADD COLUMN final_sent BIGINT,
    ADD COLUMN final_failed BIGINT;
-- The workers' question: finished jobs whose counts are not written yet.
CREATE INDEX broadcasts_unfrozen_idx ON broadcasts (bot_id) WHERE final_sent IS NULL AND state <> 'running';
