-- The latest progress a job's generator reported: {percent, stage, done, total, updatedAt}.
-- Written by the row heartbeat the worker sends anyway (no write of its own), kept across
-- a retry until the new attempt reports, set to 100 % by the completion.
ALTER TABLE report_queue ADD COLUMN progress jsonb NULL;
