-- Throttled updates stay handled: they count as applied (without effects) in the old schema.
UPDATE processed_updates SET outcome = 'applied' WHERE outcome = 'throttled';
ALTER TABLE processed_updates DROP CONSTRAINT processed_updates_outcome_check;
ALTER TABLE processed_updates ADD CONSTRAINT processed_updates_outcome_check
    CHECK (outcome IN ('applied', 'dead_lettered'));
DROP TABLE IF EXISTS flood_counters;
