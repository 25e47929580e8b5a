ALTER TABLE outbox
    DROP COLUMN traceparent,
    DROP COLUMN origin_received_at;
