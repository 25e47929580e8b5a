-- Keeps the newest row per (bot, update id), so the narrower key can be restored.
DELETE FROM processed_updates p USING processed_updates q
 WHERE p.bot_id = q.bot_id AND p.update_id = q.update_id
   AND p.processed_at < q.processed_at;
ALTER TABLE processed_updates DROP CONSTRAINT processed_updates_pkey;
ALTER TABLE processed_updates DROP COLUMN update_fingerprint;
ALTER TABLE processed_updates ADD PRIMARY KEY (bot_id, update_id);
