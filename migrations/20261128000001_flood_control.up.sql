-- Inbound flood control (COURIER_WORKER_FLOOD_LIMIT updates per COURIER_WORKER_FLOOD_WINDOW):
-- each sender's updates in their current window. Counted in the update's transaction, so the
-- budget holds whichever worker applies the update; one small row per sender.
-- `sender_id` is the user's id, or the chat's for updates without a user of their own.
CREATE TABLE flood_counters (
    bot_id       BIGINT      NOT NULL,
    sender_id    BIGINT      NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    updates      BIGINT      NOT NULL,
    PRIMARY KEY (bot_id, sender_id)
);

-- Updates over the budget are recorded as handled (not redelivered), without their effects.
ALTER TABLE processed_updates DROP CONSTRAINT processed_updates_outcome_check;
ALTER TABLE processed_updates ADD CONSTRAINT processed_updates_outcome_check
    CHECK (outcome IN ('applied', 'dead_lettered', 'throttled'));
