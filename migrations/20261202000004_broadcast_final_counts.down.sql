DROP INDEX IF EXISTS broadcasts_unfrozen_idx;
ALTER TABLE broadcasts DROP COLUMN final_sent, DROP COLUMN final_failed;
