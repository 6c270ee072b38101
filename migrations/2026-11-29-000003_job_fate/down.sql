DROP INDEX report_queue_unsent_idx;
CREATE INDEX report_queue_unenqueued_idx ON report_queue (created_at) WHERE enqueued_at IS NULL;
ALTER TABLE report_queue DROP COLUMN send_generation, DROP COLUMN failures;
