-- A cancelled job becomes `failed` with its reason (the old schema has no `cancelled`).
UPDATE report_queue
   SET status = 'failed', last_error = 'cancelled: ' || COALESCE(cancel_reason, 'no reason given')
 WHERE status = 'cancelled';
ALTER TABLE report_queue DROP CONSTRAINT report_queue_status_check;
ALTER TABLE report_queue ADD CONSTRAINT report_queue_status_check
    CHECK (status IN ('in-queue', 'in-progress', 'completed', 'failed'));
ALTER TABLE report_queue
    DROP COLUMN not_after,
    DROP COLUMN max_runtime_s,
    DROP COLUMN cancel_reason,
    DROP COLUMN cancel_requested_at;
