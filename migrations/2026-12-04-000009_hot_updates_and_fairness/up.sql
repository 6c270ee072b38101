-- Issue 15. Heartbeats (`updated_at`, `progress`) become HOT updates: no index may hold a
-- column they change. `report_queue_unsent_idx` was on `updated_at`; the reconciler's
-- unsent scan needs only the partial index's rows (those without a message: few, and
-- short-lived) and sorts them itself, so the key becomes `created_at`, which never changes.
DROP INDEX report_queue_unsent_idx;
CREATE INDEX report_queue_unsent_idx ON report_queue (created_at) WHERE enqueued_at IS NULL;

-- `fairness.max_in_flight_per_user`: a claim counts the user's jobs in progress; only
-- running rows are in this index, so the count reads a handful of entries. Its key and
-- predicate change only with a claim or an end (already non-HOT: `status` is indexed).
CREATE INDEX report_queue_in_progress_user_idx ON report_queue (user_id)
    WHERE status = 'in-progress';

-- Room on each page for a row's new version, so a heartbeat's update stays on its page
-- (a HOT update needs the space on the same page). Applies to pages written from now on.
ALTER TABLE report_queue SET (fillfactor = 80);
