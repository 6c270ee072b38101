-- The fleet: every reportd process sharing this database, registered by itself (issue 14,
-- the console's fleet view). A process inserts its row at start, refreshes heartbeat_at
-- every few seconds (a one-row write off the job's path), deletes it on a clean shutdown;
-- rows whose heartbeat stopped an hour ago (a killed process) are pruned by the others.
-- A handful of rows: no index beyond the key.
CREATE TABLE processes (
    id           uuid        PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    -- The process's roles, comma-separated in config order: `api,worker`.
    roles        text        NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
