-- no-transaction
-- The sender resolves `MessageRef.key` to Telegram's message id: the chat's latest row with
-- that key (see 20261201000002 for why CONCURRENTLY and outside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sent_messages_key_idx
    ON sent_messages (bot_id, chat_id, msg_key, outbox_id DESC) WHERE msg_key IS NOT NULL;
