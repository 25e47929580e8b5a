-- Courier as a platform for more than one bot (docs/BOTS.md): what used to read or write the
-- notes bot's tables from outside it now has platform tables of its own.

-- The broadcast audience: chats a bot added (`Effect::Subscribe`; the notes bot on /start).
-- Broadcasts page through it in chat_id order and leave out `blocked_chats`. Filled from the
-- notes bot's users, who were the audience until now.
CREATE TABLE audience (
    bot_id    BIGINT      NOT NULL,
    chat_id   BIGINT      NOT NULL,
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, chat_id)
);
INSERT INTO audience (bot_id, chat_id, joined_at)
SELECT bot_id, chat_id, min(registered_at) FROM users GROUP BY bot_id, chat_id;
-- Broadcasts no longer page through the users: their index has no reader left.
DROP INDEX IF EXISTS users_broadcast_idx;
-- (Blocks need no copy: whoever set `users.blocked_at` — the worker on `my_chat_member`, the
-- sender on a 403 — inserted the private chat into `blocked_chats` in the same transaction.
-- `users.chat_id` is where the user last sent /start, maybe a group: not the blocked chat.)
-- A broadcast's cursor is now the last chat_id enqueued (chat ids can be negative): a job not
-- started yet starts below every chat. A job half-way through keeps its cursor, which was a
-- user_id: its private chats (chat id = user id) carry on where it stopped, and the group
-- chats of its audience (negative ids) are not reached by it.
ALTER TABLE broadcasts ALTER COLUMN cursor SET DEFAULT -9223372036854775808;
UPDATE broadcasts SET cursor = -9223372036854775808 WHERE state = 'running' AND enqueued = 0;

-- Calls other than a plain sendMessage: the encoded `courier.v1.OutboundMessage` holding the
-- action (ids filled in at publish). NULL: a sendMessage of `text` with `parse_mode`.
ALTER TABLE outbox ADD COLUMN action BYTEA;

-- The bot's name for a message it sent (`SendMessage.key`), so that a later edit or delete
-- can find Telegram's message id: the latest row of the chat with that key.
-- (Its index: 20261203000002.)
ALTER TABLE sent_messages ADD COLUMN msg_key TEXT;
