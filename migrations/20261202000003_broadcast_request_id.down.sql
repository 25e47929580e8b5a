DROP INDEX IF EXISTS broadcasts_request_id_idx;
ALTER TABLE broadcasts DROP COLUMN request_id;
