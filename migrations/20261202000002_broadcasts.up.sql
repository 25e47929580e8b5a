-- Broadcasts: one text to every user who started the bot and has not blocked it. The workers
-- run each as a job: page by page (users in user_id order, `cursor` the last one enqueued),
-- each page's outbox rows inserted and the cursor moved in one transaction, so a crash
-- anywhere enqueues no user twice and the next page starts where the last commit left off.
CREATE TABLE broadcasts (
    id          BIGSERIAL   PRIMARY KEY,
    bot_id      BIGINT      NOT NULL,
    text        TEXT        NOT NULL,
    parse_mode  TEXT        NOT NULL DEFAULT '',
    -- running: enqueuing; enqueued: every recipient has a row; cancelled: stopped.
    state       TEXT        NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'enqueued', 'cancelled')),
    cursor      BIGINT      NOT NULL DEFAULT 0,
    recipients  BIGINT      NOT NULL,
    enqueued    BIGINT      NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
-- The job runner's question: the oldest running broadcast of a bot.
CREATE INDEX broadcasts_running_idx ON broadcasts (bot_id, id) WHERE state = 'running';

-- A broadcast's messages, for its progress; and the parse mode a row is sent with.
ALTER TABLE outbox
    ADD COLUMN broadcast_id BIGINT,
    ADD COLUMN parse_mode TEXT NOT NULL DEFAULT '';
CREATE INDEX outbox_broadcast_idx ON outbox (broadcast_id, id) WHERE broadcast_id IS NOT NULL;
-- The next page: users in user_id order.
CREATE INDEX users_broadcast_idx ON users (bot_id, user_id) WHERE blocked_at IS NULL;
