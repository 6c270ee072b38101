-- The job table: one row per report request. The SQS message carries only the id.
CREATE TABLE report_queue (
    id              uuid PRIMARY KEY,
    payload         jsonb       NOT NULL,
    status          varchar     NOT NULL DEFAULT 'in-queue'
                    CONSTRAINT report_queue_status_check
                    CHECK (status IN ('in-queue', 'in-progress', 'completed', 'failed')),
    report_url      varchar     NULL,
    -- Real attempts (claims by a worker), not SQS receives.
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text        NULL,
    -- A client's Idempotency-Key; NULLs never collide, so "unique when present".
    idempotency_key varchar     NULL CONSTRAINT report_queue_idempotency_key_key UNIQUE,
    -- SHA-256 of the request body that came with the idempotency key (409 on mismatch).
    request_hash    varchar     NULL,
    -- Copied out of the payload so that listing by user can use an index.
    user_id         bigint      NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz NULL,
    finished_at     timestamptz NULL,
    -- When SQS accepted the message; NULL rows are (re)sent by the dispatcher.
    enqueued_at     timestamptz NULL
);

-- Listing newest first, keyset-paginated on (created_at, id), overall / by status / by user.
CREATE INDEX report_queue_created_idx ON report_queue (created_at DESC, id DESC);
CREATE INDEX report_queue_status_created_idx ON report_queue (status, created_at DESC, id DESC);
CREATE INDEX report_queue_user_created_idx ON report_queue (user_id, created_at DESC, id DESC);
-- The dispatcher's scan for rows that never reached SQS stays small.
CREATE INDEX report_queue_unenqueued_idx ON report_queue (created_at) WHERE enqueued_at IS NULL;
