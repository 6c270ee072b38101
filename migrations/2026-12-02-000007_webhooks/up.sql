-- Webhooks (issue 13). A submission's own endpoint, beside the fleet-wide
-- `[webhooks] endpoints`; NULL for almost every row, so it costs nothing on the rest.
ALTER TABLE report_queue ADD COLUMN callback_url TEXT;

-- The database is the delivery queue: one row per (report, endpoint, event), written
-- before the first try, so a crash after a report finished never loses its webhook.
-- `id` is the Standard Webhooks `webhook-id`, the same on every retry.
CREATE TABLE webhook_deliveries (
    id UUID PRIMARY KEY,
    report_id UUID NOT NULL REFERENCES report_queue (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    event TEXT NOT NULL,
    -- The signed body, fixed when the delivery is recorded: every retry sends the same
    -- bytes (only the signature's timestamp changes).
    payload JSONB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'gave_up', 'stopped')),
    attempts INT NOT NULL DEFAULT 0,
    last_status_code INT,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Retries stop after this (`[webhooks] retry_for_s` after the delivery was recorded,
    -- or after a redeliver).
    retry_until TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at TIMESTAMPTZ,
    UNIQUE (report_id, endpoint, event)
);

-- What the deliverers claim: only pending rows, by when they are due.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';

-- The sweeper's cursor: every report that finished before `swept_until` has its
-- deliveries recorded. One row; it starts now, so reports finished before webhooks
-- existed get none.
CREATE TABLE webhook_sweep (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    swept_until TIMESTAMPTZ NOT NULL
);
INSERT INTO webhook_sweep (swept_until) VALUES (now());
