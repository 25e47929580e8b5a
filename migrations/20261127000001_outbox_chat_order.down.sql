DROP INDEX IF EXISTS outbox_unpublished_chat_idx;
