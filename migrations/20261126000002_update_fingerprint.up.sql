-- The idempotency key of an update becomes (bot, update id, fingerprint of its bytes).
-- Telegram retries an update with the same bytes, but may hand out an update id again for a
-- different update after a week without updates (and a restarted sandbox does so at once):
-- keyed by the id alone, such an update would be dropped as a duplicate.
ALTER TABLE processed_updates ADD COLUMN update_fingerprint BIGINT NOT NULL DEFAULT 0;
ALTER TABLE processed_updates DROP CONSTRAINT processed_updates_pkey;
ALTER TABLE processed_updates ADD PRIMARY KEY (bot_id, update_id, update_fingerprint);
