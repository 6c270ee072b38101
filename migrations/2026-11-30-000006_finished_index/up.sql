-- Finished rows by when they finished: `GET /events` reads the reports that reached a
-- terminal status since its last look (and retention will prune by it). Partial, so a
-- row enters it once, when it finishes — a write that changes the status anyway (the
-- status index already makes it a non-HOT update); heartbeats and claims never touch it.
CREATE INDEX report_queue_finished_idx ON report_queue (finished_at) WHERE finished_at IS NOT NULL;
