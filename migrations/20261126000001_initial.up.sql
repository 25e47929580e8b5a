-- Courier's initial schema: the notes bot's data, the dialogue state, exactly-once bookkeeping
-- and the transactional outbox. Every query the services run has an index (see ARCHITECTURE.md).

-- Users who sent /start.
CREATE TABLE users (
    bot_id        BIGINT      NOT NULL,
    user_id       BIGINT      NOT NULL,
    chat_id       BIGINT      NOT NULL,
    first_name    TEXT        NOT NULL,
    last_name     TEXT,
    username      TEXT,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    blocked_at    TIMESTAMPTZ,
    PRIMARY KEY (bot_id, user_id)
);

-- The notes, stored verbatim.
CREATE TABLE messages (
    id         BIGSERIAL   PRIMARY KEY,
    bot_id     BIGINT      NOT NULL,
    chat_id    BIGINT      NOT NULL,
    user_id    BIGINT      NOT NULL,
    update_id  BIGINT      NOT NULL,
    text       TEXT        NOT NULL,
    sent_at    TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- /history: the last notes of a user in a chat, newest first.
CREATE INDEX messages_history_idx ON messages (bot_id, chat_id, user_id, id DESC);

-- The FSM state of each chat, and the stream sequence of the last update applied to it.
CREATE TABLE dialogue_states (
    bot_id         BIGINT      NOT NULL,
    chat_id        BIGINT      NOT NULL,
    state          JSONB       NOT NULL,
    last_update_id BIGINT      NOT NULL,
    last_seq       BIGINT      NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id)
);

-- Every update applied (or dead-lettered): the idempotency key of the worker.
CREATE TABLE processed_updates (
    bot_id       BIGINT      NOT NULL,
    update_id    BIGINT      NOT NULL,
    chat_id      BIGINT      NOT NULL,
    stream_seq   BIGINT      NOT NULL,
    outcome      TEXT        NOT NULL DEFAULT 'applied'
                 CHECK (outcome IN ('applied', 'dead_lettered')),
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, update_id)
);

-- The transactional outbox: messages to send, written in the update's transaction.
CREATE TABLE outbox (
    id               BIGSERIAL   PRIMARY KEY,
    bot_id           BIGINT      NOT NULL,
    chat_id          BIGINT      NOT NULL,
    origin_update_id BIGINT      NOT NULL,
    text             TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at     TIMESTAMPTZ
);
-- The relay's sweep: rows a crash left unpublished.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
