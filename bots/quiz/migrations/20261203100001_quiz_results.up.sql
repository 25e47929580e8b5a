-- The quiz bot's own table (bots/quiz): one row per finished quiz, written by
-- `courier_quiz::QuizBot::write` in the update's transaction, read by `/score`.
CREATE TABLE quiz_results (
    id          BIGSERIAL   PRIMARY KEY,
    bot_id      BIGINT      NOT NULL,
    chat_id     BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    -- The update (the last answer) that finished it — its id and the fingerprint of its bytes,
    -- since Telegram may reuse an update id after a week without updates: a step writes at
    -- most one result, so a write repeated for the same update adds nothing.
    update_id   BIGINT      NOT NULL,
    update_fingerprint BIGINT NOT NULL,
    score       INT         NOT NULL CHECK (score >= 0),
    total       INT         NOT NULL CHECK (total > 0 AND score <= total),
    finished_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (bot_id, update_id, update_fingerprint)
);

-- `/score`: a user's results, latest first.
CREATE INDEX quiz_results_user_idx ON quiz_results (bot_id, user_id, finished_at DESC);
