//! The console overview's reads: jobs by status and the oldest waiting job, both cheap
//! at any table size (a refresh every 2 s must not scan `report_queue`).

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

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

/// How many jobs each status has, counting at most `cap + 1` rows of each: the scan
/// walks `report_queue_status_created_idx` for one status and stops after `cap + 1`
/// entries, so a million completed rows cost what `cap` rows cost. A count above `cap`
/// means "more than `cap`".
pub(crate) async fn status_counts(
    conn: &mut AsyncPgConnection,
    cap: i64,
) -> diesel::QueryResult<Vec<(JobStatus, i64)>> {
    let mut counts = Vec::with_capacity(JobStatus::ALL.len());
    for status in JobStatus::ALL {
        let counted: Counted = diesel::sql_query(
            "SELECT count(*) AS n FROM \
             (SELECT 1 FROM report_queue WHERE status = $1 LIMIT $2) AS bounded",
        )
        .bind::<Text, _>(status.as_str())
        .bind::<BigInt, _>(cap + 1)
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
