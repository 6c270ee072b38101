-- The finished report file as the report store holds it, written by the completion:
-- its key (a file name in report.output_dir, or the S3 object key), the stored bytes'
-- size and SHA-256 (after gzip when gzip is on), content type, CSV data rows, and
-- whether it is gzip-compressed. All NULL for a row without a file (not completed, a
-- zero-work job, or completed before this migration).
ALTER TABLE report_queue
    ADD COLUMN file_key text NULL,
    ADD COLUMN file_size_bytes bigint NULL,
    ADD COLUMN file_sha256 text NULL,
    ADD COLUMN file_content_type text NULL,
    ADD COLUMN file_rows bigint NULL,
    ADD COLUMN file_gzip boolean NULL;
