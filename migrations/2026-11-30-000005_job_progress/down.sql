ALTER TABLE report_queue DROP COLUMN progress;
