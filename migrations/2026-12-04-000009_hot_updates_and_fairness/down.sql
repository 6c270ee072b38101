ALTER TABLE report_queue RESET (fillfactor);
DROP INDEX report_queue_in_progress_user_idx;
DROP INDEX report_queue_unsent_idx;
CREATE INDEX report_queue_unsent_idx ON report_queue (updated_at) WHERE enqueued_at IS NULL;
