//! The console overview's reads: jobs by status and the oldest waiting job, both cheap
//! at any table size (a refresh every 2 s must not scan `report_queue`).

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::models::JobStatus;

/// One status's bounded count.
#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The oldest waiting job's creation time.
#[derive(QueryableByName)]
struct Oldest {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

/// How many jobs each status has, counting at most `cap + 1` rows of each, so that a
/// count above `cap` means "more than `cap`".
pub(crate) async fn status_counts(
    conn: &mut AsyncPgConnection,
    cap: i64,
) -> diesel::QueryResult<Vec<(JobStatus, i64)>> {
    bounded_status_counts(conn, cap + 1).await
}

/// How many jobs each status has, counting at most `limit` rows of each: the scan walks
/// `report_queue_status_created_idx` for one status and stops after `limit` entries, so
/// a million completed rows cost what `limit` rows cost. The console and the upkeep
/// figures both count this way.
pub(crate) async fn bounded_status_counts(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> diesel::QueryResult<Vec<(JobStatus, i64)>> {
    let mut counts = Vec::with_capacity(JobStatus::ALL.len());
    for status in JobStatus::ALL {
        let counted: Counted = diesel::sql_query(
            "SELECT count(*) AS n FROM \
             (SELECT 1 FROM report_queue WHERE status = $1 LIMIT $2) AS bounded",
        )
        .bind::<Text, _>(status.as_str())
        .bind::<BigInt, _>(limit)
        .get_result(conn)
        .await?;
        counts.push((status, counted.n));
    }
    Ok(counts)
}

/// When the oldest `in-queue` job was created: one index probe (the status index is
/// ordered by `created_at` within a status).
pub(crate) async fn oldest_waiting(
    conn: &mut AsyncPgConnection,
) -> diesel::QueryResult<Option<DateTime<Utc>>> {
    let oldest: Oldest = diesel::sql_query(
        "SELECT min(created_at) AS at FROM report_queue WHERE status = 'in-queue'",
    )
    .get_result(conn)
    .await?;
    Ok(oldest.at)
}

/// One minute of the last hour: jobs that finished in it, and a sample of their waits
/// and run times.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct Minute {
    /// The minute's start.
    #[diesel(sql_type = Timestamptz)]
    pub(crate) minute: DateTime<Utc>,
    /// Jobs that finished `completed` in this minute.
    #[diesel(sql_type = BigInt)]
    pub(crate) completed: i64,
    /// Jobs that finished `failed` in this minute.
    #[diesel(sql_type = BigInt)]
    pub(crate) failed: i64,
    /// Queue wait (created → started) percentiles of the minute's sample, in seconds.
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) wait_p50: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) wait_p95: Option<f64>,
    /// Run time (started → finished) percentiles of the minute's sample, in seconds.
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) run_p50: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) run_p95: Option<f64>,
}

/// The last 60 minutes, oldest first, one row per minute (zero counts and no
/// percentiles where nothing finished).
///
/// Both halves walk `report_queue_finished_idx` (partial, on `finished_at`) by range, one
/// minute at a time, so the work follows the last hour's finished rows, never the table's
/// size: the counts read every row that finished in the hour (status needs the heap
/// row), the percentiles read at most `sample_per_minute` of each minute's rows. Nothing
/// here writes.
///
/// JIT is off for this read: the planner cannot estimate a minute's range from the
/// lateral parameter, guesses thousands of rows per minute, crosses `jit_above_cost`, and
/// compiling then took 180 ms of a 265 ms read (80 ms without it) at 1,000,000 rows.
pub(crate) async fn last_hour(
    conn: &mut AsyncPgConnection,
    sample_per_minute: i64,
) -> diesel::QueryResult<Vec<Minute>> {
    conn.transaction::<_, diesel::result::Error, _>(async move |tx| {
        diesel::sql_query("SET LOCAL jit = off").execute(tx).await?;
        minutes(tx, sample_per_minute).await
    })
    .await
}

/// [`last_hour`]'s query.
async fn minutes(
    conn: &mut AsyncPgConnection,
    sample_per_minute: i64,
) -> diesel::QueryResult<Vec<Minute>> {
    diesel::sql_query(
        "WITH minutes AS ( \
           SELECT m AS minute FROM generate_series( \
             date_trunc('minute', now()) - interval '59 minutes', \
             date_trunc('minute', now()), interval '1 minute') AS m) \
         SELECT minutes.minute, c.completed, c.failed, \
           s.wait_p50, s.wait_p95, s.run_p50, s.run_p95 \
         FROM minutes \
         CROSS JOIN LATERAL ( \
           SELECT count(*) FILTER (WHERE status = 'completed') AS completed, \
                  count(*) FILTER (WHERE status = 'failed') AS failed \
           FROM report_queue \
           WHERE finished_at >= minutes.minute \
             AND finished_at < minutes.minute + interval '1 minute') AS c \
         CROSS JOIN LATERAL ( \
           SELECT \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS wait_p50, \
             percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) AS wait_p95, \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY run) AS run_p50, \
             percentile_cont(0.95) WITHIN GROUP (ORDER BY run) AS run_p95 \
           FROM ( \
             SELECT extract(epoch FROM started_at - created_at)::float8 AS wait, \
                    extract(epoch FROM finished_at - started_at)::float8 AS run \
             FROM report_queue \
             WHERE finished_at >= minutes.minute \
               AND finished_at < minutes.minute + interval '1 minute' \
               AND started_at IS NOT NULL \
             LIMIT $1) AS sample) AS s \
         ORDER BY minutes.minute",
    )
    .bind::<BigInt, _>(sample_per_minute)
    .load(conn)
    .await
}
