-- Job control: cancel from anywhere, and deadlines.
-- `cancelled` is a third terminal status: cancelled by a person, or `expired` (not
--   started by `not_after`). A cancelled job never runs again.
-- cancel_requested_at: set by a cancel; a running job's worker sees it in its next
--   heartbeat's answer, aborts the attempt and records `cancelled`.
-- cancel_reason: the reason given with the cancel (or `expired`).
-- max_runtime_s: an attempt running longer is aborted and counts as a failure; NULL = none.
-- not_after: a job not started by then ends `cancelled` (reason `expired`); NULL = never.
ALTER TABLE report_queue DROP CONSTRAINT report_queue_status_check;
ALTER TABLE report_queue ADD CONSTRAINT report_queue_status_check
    CHECK (status IN ('in-queue', 'in-progress', 'completed', 'failed', 'cancelled'));
ALTER TABLE report_queue
    ADD COLUMN cancel_requested_at timestamptz NULL,
    ADD COLUMN cancel_reason       text        NULL,
    ADD COLUMN max_runtime_s       integer     NULL,
    ADD COLUMN not_after           timestamptz NULL;
