DROP TABLE IF EXISTS chat_migrations;
DROP TABLE IF EXISTS blocked_chats;
DROP TABLE IF EXISTS sent_messages;
