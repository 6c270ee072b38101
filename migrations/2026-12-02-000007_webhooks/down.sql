DROP TABLE webhook_sweep;
DROP TABLE webhook_deliveries;
ALTER TABLE report_queue DROP COLUMN callback_url;
