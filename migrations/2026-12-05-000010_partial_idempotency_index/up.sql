-- Issue 15. A claim and an end change `status`, which is indexed, so each is a non-HOT
-- update: the row's new version gets an entry in every index whose predicate it meets.
-- The idempotency key's unique constraint indexed every row, NULL keys included, though
-- most submits send no key: as a partial unique index it holds only rows with a key, and
-- a claim or an end of a keyless job no longer writes to it. Same name, same uniqueness.
ALTER TABLE report_queue DROP CONSTRAINT report_queue_idempotency_key_key;
CREATE UNIQUE INDEX report_queue_idempotency_key_key ON report_queue (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
