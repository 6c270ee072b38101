//! Queries of the reconciler and of the re-send paths (retry, redrive): every
//! non-terminal row must have a live message in SQS, and every re-send bumps
//! `send_generation` first, so that a FIFO queue never drops it as a duplicate of an
//! earlier send (the deduplication id is `<id>-<generation>`).
//!
//! Every write here is a compare-and-set: on `status = 'failed'` for a reset, or on the
//! `(status, updated_at)` the caller read for a stranded row, so a worker that touched
//! the row meanwhile (a heartbeat, a claim, an end) always wins. Ages are measured with
//! the database's clock (`now()`), never the caller's, so that several hosts agree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Double, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::JobStatus;

/// The advisory lock one reconciler pass holds, so that of N api processes one at a
/// time sends never-sent rows (each row once, not N times). Public so that tests can
/// hold it to keep the reconciler out of their way.
pub const PASS_LOCK_KEY: i64 = 0x7265_706f_7274_6401;

/// A row that needs a message, as the reconciler sends it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Unsent {
    /// The report to send a message for (the message body's `id`).
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The FIFO message group.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub user_id: Option<i64>,
    /// The generation the message must carry.
    #[diesel(sql_type = Integer)]
    pub send_generation: i32,
}

/// A row as it was read, for a later compare-and-set on exactly this state.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Seen {
    /// The report whose row was read.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The stored status as read; the write applies only while it is unchanged.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// `updated_at` as read; a heartbeat, claim or end since then makes the write a no-op.
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// What a re-send needs after the row was reset: the message to send.
pub(crate) type Resent = Unsent;

/// A row with what the re-send rules look at.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct RowFate {
    /// The report's id (the row's primary key, the `id` in its message body).
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The stored status spelling (`in-queue`, `in-progress`, `completed`, `failed`).
    #[diesel(sql_type = Text)]
    pub status: String,
    /// The report's user: a re-send's FIFO message group (None: group `default`).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub user_id: Option<i64>,
    /// When the row last changed, heartbeats included; [`RowFate::seen`] keeps it for the
    /// compare-and-set.
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    /// Re-sends so far: the current message's FIFO deduplication id is `<id>-<generation>`.
    #[diesel(sql_type = Integer)]
    pub send_generation: i32,
    /// When SQS accepted its current message; None while the reconciler or a fast path
    /// still has to send it.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Seconds since `updated_at` by the database's clock: for a running job, the age of
    /// its last heartbeat.
    #[diesel(sql_type = Double)]
    pub age_s: f64,
}

impl RowFate {
    /// The stored status (None for a value the CHECK constraint would not allow).
    pub(crate) fn job_status(&self) -> Option<JobStatus> {
        JobStatus::parse(&self.status)
    }

    /// Time since the row was last touched.
    pub(crate) fn age(&self) -> Duration {
        Duration::try_from_secs_f64(self.age_s).unwrap_or_default()
    }

    /// The state a compare-and-set must find unchanged.
    pub fn seen(&self) -> Seen {
        Seen {
            id: self.id,
            status: self.status.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// What `POST /reports/{id}/retry` may do with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryVerdict {
    /// `failed`: back to `in-queue` with its failures forgotten, and a new message.
    ResetFailed,
    /// Non-terminal but untouched for longer than a live job ever is: a new message.
    ResendStranded,
    /// A live or completed job: nothing to retry.
    Refuse,
}

/// The retry rule: failed rows, and non-terminal rows that nothing has touched for
/// `stranded_after` (a running job heart-beats far more often; an in-queue row that old
/// lost its message); never a live job, never a completed one.
pub(crate) fn retry_verdict(
    status: JobStatus,
    age: Duration,
    stranded_after: Duration,
) -> RetryVerdict {
    match status {
        JobStatus::Failed => RetryVerdict::ResetFailed,
        // A cancelled job never runs again: submit it anew instead.
        JobStatus::Completed | JobStatus::Cancelled => RetryVerdict::Refuse,
        JobStatus::InQueue | JobStatus::InProgress if age >= stranded_after => {
            RetryVerdict::ResendStranded
        }
        JobStatus::InQueue | JobStatus::InProgress => RetryVerdict::Refuse,
    }
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes the pass lock on this connection if no other session holds it.
pub(crate) async fn try_lock_pass(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(PASS_LOCK_KEY)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// Releases the pass lock; false when this session did not hold it.
pub(crate) async fn unlock_pass(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Locked = diesel::sql_query("SELECT pg_advisory_unlock($1) AS locked")
        .bind::<BigInt, _>(PASS_LOCK_KEY)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// Non-terminal rows without a message that nothing touched for `older_than`, oldest
/// first. `updated_at`, not `created_at`: a row reset by a retry or redrive is due
/// `older_than` after its reset, which leaves the resetting path time to send it.
pub async fn unsent(
    conn: &mut AsyncPgConnection,
    older_than: Duration,
    limit: i64,
) -> QueryResult<Vec<Unsent>> {
    diesel::sql_query(
        "SELECT id, user_id, send_generation FROM report_queue \
         WHERE enqueued_at IS NULL AND status IN ('in-queue', 'in-progress') \
           AND updated_at < now() - $1 * interval '1 second' \
         ORDER BY updated_at LIMIT $2",
    )
    .bind::<Double, _>(older_than.as_secs_f64())
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Records that SQS accepted these `(id, generation)` messages. A row reset again
/// meanwhile (a newer generation) is left for its own send. Returns the ids marked.
pub(crate) async fn mark_sent(
    conn: &mut AsyncPgConnection,
    sent: &[(Uuid, i32)],
) -> QueryResult<Vec<Uuid>> {
    if sent.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, generations): (Vec<Uuid>, Vec<i32>) = sent.iter().copied().unzip();
    let rows: Vec<IdRow> = diesel::sql_query(
        "UPDATE report_queue r SET enqueued_at = now() \
         FROM unnest($1, $2) AS v(id, generation) \
         WHERE r.id = v.id AND r.send_generation = v.generation AND r.enqueued_at IS NULL \
           AND r.id IN (SELECT id FROM report_queue WHERE id = ANY($1) FOR UPDATE SKIP LOCKED) \
         RETURNING r.id",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Integer>, _>(&generations)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// `in-progress` rows whose message was sent and whose holder stopped heart-beating
/// `older_than` ago, oldest first.
pub(crate) async fn stranded_in_progress(
    conn: &mut AsyncPgConnection,
    older_than: Duration,
    limit: i64,
) -> QueryResult<Vec<Seen>> {
    stranded(conn, JobStatus::InProgress, older_than, limit).await
}

/// `in-queue` rows with a sent message that nothing touched for `older_than`, oldest
/// first. Only stranded if the queue holds no message for them: the caller checks.
pub(crate) async fn stranded_in_queue(
    conn: &mut AsyncPgConnection,
    older_than: Duration,
    limit: i64,
) -> QueryResult<Vec<Seen>> {
    stranded(conn, JobStatus::InQueue, older_than, limit).await
}

async fn stranded(
    conn: &mut AsyncPgConnection,
    status: JobStatus,
    older_than: Duration,
    limit: i64,
) -> QueryResult<Vec<Seen>> {
    // `enqueued_at IS NOT NULL`: a row still waiting for its send is not stranded, it is
    // `unsent`'s. `enqueued_at` old as well: a re-send keeps `updated_at` (so the new
    // message's claim can take over a lost attempt at once) and restarts this clock.
    diesel::sql_query(
        "SELECT id, status, updated_at FROM report_queue \
         WHERE status = $1 AND enqueued_at < now() - $2 * interval '1 second' \
           AND updated_at < now() - $2 * interval '1 second' \
         ORDER BY updated_at LIMIT $3",
    )
    .bind::<Text, _>(status.as_str())
    .bind::<Double, _>(older_than.as_secs_f64())
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Gives rows that lost their message a new one: `send_generation + 1`,
/// `enqueued_at = NULL`, and `status = new_status` (None keeps it), each only if its
/// `(status, updated_at)` is still as seen. A row moved to a new status is stamped
/// (`updated_at = now()`); one that keeps its status keeps its heartbeat's age, so the new
/// message's claim can take over an `in-progress` row whose worker was lost at once (and
/// count that loss). Rows locked by another session are skipped, never waited for.
/// Returns what to send for the rows that changed.
pub(crate) async fn resend_many(
    conn: &mut AsyncPgConnection,
    seen: &[Seen],
    new_status: Option<JobStatus>,
) -> QueryResult<Vec<Resent>> {
    if seen.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = seen.iter().map(|s| s.id).collect();
    let statuses: Vec<String> = seen.iter().map(|s| s.status.clone()).collect();
    let updated: Vec<DateTime<Utc>> = seen.iter().map(|s| s.updated_at).collect();
    diesel::sql_query(
        "UPDATE report_queue r SET status = COALESCE($4, r.status), \
           send_generation = r.send_generation + 1, enqueued_at = NULL, \
           updated_at = CASE WHEN $4 IS NULL THEN r.updated_at ELSE now() END \
         FROM unnest($1, $2, $3) AS v(id, status, updated_at) \
         WHERE r.id = v.id AND r.status = v.status AND r.updated_at = v.updated_at \
           AND r.status IN ('in-queue', 'in-progress') \
           AND r.id IN (SELECT id FROM report_queue WHERE id = ANY($1) FOR UPDATE SKIP LOCKED) \
         RETURNING r.id, r.user_id, r.send_generation",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Timestamptz>, _>(&updated)
    .bind::<Nullable<Text>, _>(new_status.map(JobStatus::as_str))
    .load(conn)
    .await
}

/// Puts a `failed` report back in the queue for a new message (retry, redrive):
/// `in-queue`, failures forgotten (`failures = 0`; `attempts` is kept as history),
/// `send_generation + 1`, `enqueued_at` and `finished_at` cleared. A cancel that came
/// too late to stop its last attempt and the submission's `notAfter` are cleared too: a
/// person asking to run it again overrides both, or the next claim would cancel it at
/// once. If the send that follows never happens, the reconciler sends it. None when the
/// report is not `failed`.
pub(crate) async fn reset_failed(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<Resent>> {
    let mut rows: Vec<Resent> = diesel::sql_query(
        "UPDATE report_queue SET status = 'in-queue', failures = 0, \
           send_generation = send_generation + 1, enqueued_at = NULL, finished_at = NULL, \
           cancel_requested_at = NULL, cancel_reason = NULL, not_after = NULL, \
           updated_at = now() \
         WHERE id = $1 AND status = 'failed' \
         RETURNING id, user_id, send_generation",
    )
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    Ok(rows.pop())
}

/// Ends a job whose message SQS dead-lettered too often: `failed` with `error`, only if
/// the row is still as seen. Its DLQ message stays for a person to look at.
pub(crate) async fn fail_dead_lettered(
    conn: &mut AsyncPgConnection,
    seen: &Seen,
    error: &str,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE report_queue SET status = 'failed', last_error = $4, finished_at = now(), \
           updated_at = now() \
         WHERE id = $1 AND status = $2 AND updated_at = $3 \
           AND status IN ('in-queue', 'in-progress')",
    )
    .bind::<SqlUuid, _>(seen.id)
    .bind::<Text, _>(&seen.status)
    .bind::<Timestamptz, _>(seen.updated_at)
    .bind::<Text, _>(error)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// The rows of these ids (missing ids are left out), with their age.
pub(crate) async fn fates(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<RowFate>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT id, status, user_id, updated_at, send_generation, \
           enqueued_at, EXTRACT(EPOCH FROM now() - updated_at)::float8 AS age_s \
         FROM report_queue WHERE id = ANY($1)",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await
}

/// One row with its age, if it exists.
pub async fn fate(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<RowFate>> {
    Ok(fates(conn, &[id]).await?.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRANDED: Duration = Duration::from_secs(120);

    #[test]
    fn a_failed_report_is_reset_whatever_its_age() {
        for age in [Duration::ZERO, STRANDED * 10] {
            assert_eq!(
                retry_verdict(JobStatus::Failed, age, STRANDED),
                RetryVerdict::ResetFailed
            );
        }
    }

    #[test]
    fn a_completed_report_is_never_retried() {
        assert_eq!(
            retry_verdict(JobStatus::Completed, STRANDED * 10, STRANDED),
            RetryVerdict::Refuse
        );
    }

    #[test]
    fn a_live_job_is_refused_and_a_stranded_one_is_resent() {
        for status in [JobStatus::InQueue, JobStatus::InProgress] {
            assert_eq!(
                retry_verdict(status, STRANDED - Duration::from_secs(1), STRANDED),
                RetryVerdict::Refuse,
                "{status:?} touched recently"
            );
            assert_eq!(
                retry_verdict(status, STRANDED, STRANDED),
                RetryVerdict::ResendStranded,
                "{status:?} untouched for stranded_after"
            );
        }
    }

    #[test]
    fn a_negative_age_from_clock_noise_counts_as_fresh() {
        let row = RowFate {
            id: Uuid::nil(),
            status: "in-progress".into(),
            user_id: None,
            updated_at: Utc::now(),
            send_generation: 0,
            enqueued_at: None,
            age_s: -0.5,
        };
        assert_eq!(row.age(), Duration::ZERO);
        assert_eq!(row.job_status(), Some(JobStatus::InProgress));
    }
}
