-- A broadcast's request id: the key a client (courierctl) sends with `Broadcast`, so that a
-- call retried after a lost answer (courier-admin killed after the commit) finds the job it
-- created instead of creating a second one, which would reach every user twice.
ALTER TABLE broadcasts ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX broadcasts_request_id_idx ON broadcasts (bot_id, request_id)
    WHERE request_id IS NOT NULL;
