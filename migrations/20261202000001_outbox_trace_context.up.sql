-- What a reply needs to be traced end to end: the W3C trace context of the update that caused
-- it (the worker's `update` span), continued by every publish of the row, also the relay's
-- after a crash; and when ingress accepted that update, for the sender's end-to-end age.
-- Both NULL for rows written before this migration (or without tracing).
ALTER TABLE outbox
    ADD COLUMN traceparent TEXT,
    ADD COLUMN origin_received_at TIMESTAMPTZ;
