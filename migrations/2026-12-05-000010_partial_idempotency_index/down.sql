DROP INDEX report_queue_idempotency_key_key;
ALTER TABLE report_queue ADD CONSTRAINT report_queue_idempotency_key_key UNIQUE (idempotency_key);
