-- A chat's unpublished outbox rows, in id order: an update that replies publishes them before
-- its own (a chat's replies leave in commit order), and the relay sweeps them chat by chat.
CREATE INDEX outbox_unpublished_chat_idx ON outbox (bot_id, chat_id, id) WHERE published_at IS NULL;
