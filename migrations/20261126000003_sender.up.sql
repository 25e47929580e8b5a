-- The sender's bookkeeping: the sent ledger, chats the bot may no longer write to, and group
-- to supergroup migrations. See docs/SENDER.md.

-- One row per part of an outbox message the sender is done with. Checked before a call and
-- written right after Telegram accepted it: a crash between the two duplicates that part.
CREATE TABLE sent_messages (
    bot_id              BIGINT      NOT NULL,
    outbox_id           BIGINT      NOT NULL,
    part                INT         NOT NULL,
    chat_id             BIGINT      NOT NULL,
    outcome             TEXT        NOT NULL DEFAULT 'sent'
                        CHECK (outcome IN ('sent', 'dead_lettered', 'skipped_blocked')),
    telegram_message_id BIGINT,
    sent_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, outbox_id, part)
);

-- Chats whose user blocked the bot (403 "bot was blocked by the user"): replies are skipped.
-- `users.blocked_at` is set as well when the user is known.
CREATE TABLE blocked_chats (
    bot_id     BIGINT      NOT NULL,
    chat_id    BIGINT      NOT NULL,
    reason     TEXT        NOT NULL,
    blocked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id)
);

-- A group became a supergroup (`migrate_to_chat_id`): messages to the old id go to the new one.
CREATE TABLE chat_migrations (
    bot_id       BIGINT      NOT NULL,
    from_chat_id BIGINT      NOT NULL,
    to_chat_id   BIGINT      NOT NULL,
    migrated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, from_chat_id)
);
