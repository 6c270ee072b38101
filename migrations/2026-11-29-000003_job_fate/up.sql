-- A job's fate is decided by its own counts, not by SQS's receive counter.
-- failures: attempts that ended in a (retryable or lost) failure; `[jobs] max_attempts`
--   of them end the job `failed`. Interruptions (shutdown release, a duplicate delivery,
--   an unreachable database) are not failures.
-- send_generation: bumped on every re-send (retry, redrive, reconciler); FIFO sends use
--   `<id>-<generation>` as MessageDeduplicationId, so a re-send is never dropped as a
--   duplicate of the first send while a repeat of the same send still is.
ALTER TABLE report_queue
    ADD COLUMN failures        integer NOT NULL DEFAULT 0,
    ADD COLUMN send_generation integer NOT NULL DEFAULT 0;

-- The reconciler's scan for rows not sent yet, by when they were last reset. (Its rarer
-- scans for stranded rows use the status index: an index on `updated_at` over all live
-- rows would cost every claim an index insert — measured: +20 % PostgreSQL CPU in the
-- drain benchmark.)
DROP INDEX report_queue_unenqueued_idx;
CREATE INDEX report_queue_unsent_idx ON report_queue (updated_at) WHERE enqueued_at IS NULL;

