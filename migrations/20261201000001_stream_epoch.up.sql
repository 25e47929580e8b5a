-- Each chat's order guard (`last_seq`) is a sequence of the updates stream, and means nothing
-- in another incarnation of it (a recreated stream starts again at 1). `stream_epoch` records
-- which one: the stream's creation time in nanoseconds since the Unix epoch, as JetStream
-- reports it. 0 marks rows written before this column existed; they are taken to belong to
-- the stream that exists at the upgrade. See ARCHITECTURE.md (the order guard).
ALTER TABLE dialogue_states ADD COLUMN stream_epoch BIGINT NOT NULL DEFAULT 0;
