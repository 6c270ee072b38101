//! The `processes` table: every reportd process sharing the database, as it registered
//! itself (see `crate::fleet` for the heartbeat that keeps a row fresh).

use chrono::{DateTime, Utc};
use diesel::sql_types::{Integer, Text, Timestamptz, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// One process as it registers itself (its heartbeat is the database's `now()`).
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct ProcessRow {
    /// Drawn at random when the process starts: host and pid repeat across restarts and
    /// containers, this never does.
    #[diesel(sql_type = SqlUuid)]
    pub(crate) id: Uuid,
    #[diesel(sql_type = Text)]
    pub(crate) host: String,
    #[diesel(sql_type = Integer)]
    pub(crate) pid: i32,
    /// `api`, `worker` or `api,worker`.
    #[diesel(sql_type = Text)]
    pub(crate) roles: String,
    #[diesel(sql_type = Text)]
    pub(crate) version: String,
    #[diesel(sql_type = Timestamptz)]
    pub(crate) started_at: DateTime<Utc>,
}

/// Registers `row` or refreshes its heartbeat (the database's `now()`, so every process
/// ages rows by one clock).
pub(crate) async fn upsert(
    conn: &mut AsyncPgConnection,
    row: &ProcessRow,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO processes (id, host, pid, roles, version, started_at, heartbeat_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now()) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind::<SqlUuid, _>(row.id)
    .bind::<Text, _>(&row.host)
    .bind::<Integer, _>(row.pid)
    .bind::<Text, _>(&row.roles)
    .bind::<Text, _>(&row.version)
    .bind::<Timestamptz, _>(row.started_at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Deletes the row of process `id` (its clean shutdown).
pub(crate) async fn remove(conn: &mut AsyncPgConnection, id: Uuid) -> diesel::QueryResult<()> {
    diesel::sql_query("DELETE FROM processes WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Deletes rows whose heartbeat is older than `older_than_s` seconds (killed processes);
/// returns how many.
pub(crate) async fn prune(
    conn: &mut AsyncPgConnection,
    older_than_s: i32,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM processes WHERE heartbeat_at < now() - make_interval(secs => $1)",
    )
    .bind::<Integer, _>(older_than_s)
    .execute(conn)
    .await
}

/// One listed process and how long ago its heartbeat was, by the database's clock (hosts'
/// clocks may differ; the database's is the one every process writes with).
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Listed {
    #[diesel(embed)]
    pub(crate) process: ProcessRow,
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub(crate) heartbeat_age_s: f64,
}

/// Every registered process, oldest first (at most `limit`).
pub(crate) async fn list(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> diesel::QueryResult<Vec<Listed>> {
    diesel::sql_query(
        "SELECT id, host, pid, roles, version, started_at, \
         extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s \
         FROM processes ORDER BY started_at, id LIMIT $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await
}
