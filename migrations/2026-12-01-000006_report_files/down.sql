ALTER TABLE report_queue
    DROP COLUMN file_key,
    DROP COLUMN file_size_bytes,
    DROP COLUMN file_sha256,
    DROP COLUMN file_content_type,
    DROP COLUMN file_rows,
    DROP COLUMN file_gzip;
