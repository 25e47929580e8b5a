ALTER TABLE dialogue_states DROP COLUMN stream_epoch;
