//! Queries on `report_queue`. Writes are called by the StatusActor only (it batches them
//! into transactions); reads are called by the API directly.
//!
//! Every write after a claim is a compare-and-set on `(status, attempts)`, so a late or
//! duplicate worker can never overwrite a row another attempt owns or a terminal row.

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};

use super::models::{JobStatus, NewReport, ReportFile, ReportRecord};
use super::prepared::prepared;
use super::schema::report_queue::dsl as rq;

/// What a worker's claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The job is ours: this is attempt number `attempt` (1-based).
    Claimed {
        /// This attempt's number: the row's `attempts` after the claim's increment.
        attempt: i32,
        /// Failed attempts so far, counting a previous attempt whose worker was lost
        /// (this claim took over a row whose heartbeat had stopped).
        failures: i32,
        /// The report's stored request, `{"userId", "startDate", "endDate"}`, for the generator.
        payload: serde_json::Value,
        /// When the report was accepted (for the queue-wait metric).
        created_at: DateTime<Utc>,
        /// Seconds this attempt may run before it is aborted as a failure; None = no limit.
        max_runtime_s: Option<i32>,
        /// The report's user (the slot its end frees, under a per-user cap).
        user_id: Option<i64>,
    },
    /// The job already reached a terminal status: a duplicate delivery.
    AlreadyFinished(JobStatus),
    /// This claim ended the job `cancelled` instead of running it: a cancel was pending
    /// (asked for while it was handed back, or while its worker was lost), or it was
    /// never started by its `not_after` (reason `expired`).
    CancelledNow,
    /// Another worker claimed it moments ago and is still heart-beating.
    HeldElsewhere,
    /// No such row: a poison message.
    NotFound,
    /// Not claimed: its user already has `fairness.max_in_flight_per_user` jobs in
    /// progress. Nothing was written; the message goes back until about its turn.
    UserAtCap {
        /// The same user's `in-queue` jobs created before this one, counted among the
        /// [`AHEAD_SCAN_ROWS`] rows of that user just older than it: how far back in
        /// the user's line it stands, which sizes how long its message stays away.
        ahead: u32,
        /// The user at the cap.
        user_id: i64,
    },
}

/// Most of a user's rows a capped claim looks at to count the jobs ahead of one over
/// the cap. The count sizes a release delay that is clamped to at most
/// `fairness.max_release_delay_s` anyway, so beyond some depth a larger count changes
/// nothing; the bound keeps a user with a huge history or backlog from turning each
/// release into a long index scan.
pub(crate) const AHEAD_SCAN_ROWS: i64 = 1_000;

/// How an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    /// Success: the file is at `report_url`.
    Completed {
        /// Where clients fetch the file (stored as `report_url`); None when none was written.
        report_url: Option<String>,
        /// The file as the report store holds it (the `file_*` columns); None when none
        /// was written.
        file: Option<ReportFile>,
    },
    /// A failure with tries left: back to `in-queue`, one more failure counted.
    Requeued {
        /// Why the attempt failed; stored as `last_error`.
        error: String,
    },
    /// The final failure (permanent error, or the last try): `failed`, counted.
    Failed {
        /// Why the attempt failed; stored as `last_error`.
        error: String,
    },
    /// `failed` without counting another failure: the claim itself found the job out of
    /// tries (its earlier workers were lost).
    GaveUp {
        /// Why the job was given up; stored as `last_error`.
        error: String,
    },
    /// Interrupted, not failed (shutdown, host trouble): back to `in-queue`, nothing
    /// counted; `note` (if any) goes to `last_error` so a person sees why it waits.
    Released {
        /// Why the job was handed back, for `last_error`; None leaves `last_error` as it is.
        note: Option<String>,
    },
    /// Stopped on a cancel request seen in a heartbeat: `cancelled`, nothing counted
    /// (the attempt stays in `attempts` as history).
    Cancelled,
}

/// What a running attempt's heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heartbeat {
    /// The row is still this attempt's; go on.
    Alive,
    /// The row is still this attempt's, and someone asked to cancel the job: stop.
    CancelRequested,
    /// The row is no longer this attempt's (taken over, or terminal).
    Gone,
}

/// Inserts accepted reports in one statement. Rows whose idempotency key already exists
/// are skipped; returns the ids that were inserted.
pub async fn insert_many(
    conn: &mut AsyncPgConnection,
    rows: &[&NewReport],
) -> QueryResult<Vec<Uuid>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The key's unique index is partial (only rows with a key, migration 000010), so the
    // conflict target names its predicate.
    diesel::insert_into(rq::report_queue)
        .values(rows.to_vec())
        .on_conflict(rq::idempotency_key)
        .filter_target(rq::idempotency_key.is_not_null())
        .do_nothing()
        .returning(rq::id)
        .get_results(conn)
        .await
}

/// One report by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ReportRecord>> {
    rq::report_queue
        .find(id)
        .select(ReportRecord::as_select())
        .first(conn)
        .await
        .optional()
}

/// The reports with these ids that exist (any order).
pub(crate) async fn find_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<ReportRecord>> {
    rq::report_queue
        .filter(rq::id.eq_any(ids))
        .select(ReportRecord::as_select())
        .load(conn)
        .await
}

/// The time before which every write to `report_queue` is visible now: the start of the
/// oldest transaction still open in this database (a row's `created_at`, `updated_at`
/// and `finished_at` are its writer's transaction start), or the clock when none is.
/// Never more than `max_lag_s` behind the clock: a session idle in a transaction for
/// minutes must not make every look re-read minutes of rows.
pub(crate) async fn write_horizon(
    conn: &mut AsyncPgConnection,
    max_lag_s: i32,
) -> QueryResult<DateTime<Utc>> {
    #[derive(QueryableByName)]
    struct Horizon {
        #[diesel(sql_type = Timestamptz)]
        horizon: DateTime<Utc>,
    }
    let row: Horizon = diesel::sql_query(
        "SELECT greatest(coalesce(min(xact_start), clock_timestamp()), \
                clock_timestamp() - make_interval(secs => $1)) AS horizon \
         FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_type = 'client backend' \
           AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
    )
    .bind::<Integer, _>(max_lag_s)
    .get_result(conn)
    .await?;
    Ok(row.horizon)
}

/// Reports created at or after `since` (the created index), oldest first.
pub(crate) async fn created_since(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> QueryResult<Vec<ReportRecord>> {
    rq::report_queue
        .filter(rq::created_at.ge(since))
        .order(rq::created_at.asc())
        .select(ReportRecord::as_select())
        .load(conn)
        .await
}

/// Reports that finished at or after `since` (the partial finished index).
pub(crate) async fn finished_since(
    conn: &mut AsyncPgConnection,
    since: DateTime<Utc>,
) -> QueryResult<Vec<ReportRecord>> {
    rq::report_queue
        .filter(rq::finished_at.ge(since))
        .select(ReportRecord::as_select())
        .load(conn)
        .await
}

/// Every running report (the status index): as many as the fleet has worker slots.
pub(crate) async fn running(conn: &mut AsyncPgConnection) -> QueryResult<Vec<ReportRecord>> {
    rq::report_queue
        .filter(rq::status.eq(JobStatus::InProgress.as_str()))
        .select(ReportRecord::as_select())
        .load(conn)
        .await
}

/// The report created with an idempotency key, if any.
pub(crate) async fn find_by_idempotency_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<ReportRecord>> {
    rq::report_queue
        .filter(rq::idempotency_key.eq(key))
        .select(ReportRecord::as_select())
        .first(conn)
        .await
        .optional()
}

/// Claims jobs for a new attempt (`in-progress`, `attempts + 1`, `started_at`) in one
/// statement, with one outcome per id in `ids`, in order.
///
/// An `in-progress` row can be claimed again only when its holder has stopped
/// heart-beating for `stale_after_s` (it crashed and SQS redelivered the message);
/// otherwise the delivery is a duplicate of a job that is running right now. The same id
/// twice in one call (two copies received at once) is claimed once: the later copy is
/// told the job is held elsewhere.
pub async fn claim_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    stale_after_s: i64,
) -> QueryResult<Vec<ClaimOutcome>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // `enqueued_at`: the worker holds the message, so it did reach SQS whatever the
    // dispatcher managed to record; this keeps the dispatcher from sending it again.
    // Taking over a stale `in-progress` row means its worker was lost mid-attempt
    // (killed, or cut off from the database): that attempt counts as a failure, so a
    // job that kills its worker every time still ends after `max_attempts`.
    let claimed: Vec<ClaimedRow> = prepared(
        diesel::sql_query(
            "UPDATE report_queue SET status = 'in-progress', attempts = attempts + 1, \
           failures = failures + (status = 'in-progress')::int, \
           last_error = CASE WHEN status = 'in-progress' \
             THEN 'attempt ' || attempts || ': its worker stopped heart-beating (lost)' \
             ELSE last_error END, \
           started_at = now(), updated_at = now(), finished_at = NULL, \
           enqueued_at = COALESCE(enqueued_at, now()) \
         WHERE id = ANY($1) AND cancel_requested_at IS NULL AND (\
           (status = 'in-queue' AND (not_after IS NULL OR attempts > 0 OR not_after >= now())) OR \
           (status = 'in-progress' AND updated_at < now() - $2::float8 * interval '1 second')) \
         RETURNING id, attempts, failures, payload, created_at, max_runtime_s, user_id",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<BigInt, _>(stale_after_s),
    )
    .load(conn)
    .await?;
    let mut claimed: HashMap<Uuid, ClaimedRow> =
        claimed.into_iter().map(|row| (row.id, row)).collect();
    let unclaimed: Vec<Uuid> = ids
        .iter()
        .filter(|id| !claimed.contains_key(id))
        .copied()
        .collect();
    let cancelled_now = cancel_unclaimable(conn, &unclaimed, stale_after_s).await?;
    let statuses: HashMap<Uuid, String> = if unclaimed.is_empty() {
        HashMap::new()
    } else {
        rq::report_queue
            .filter(rq::id.eq_any(&unclaimed))
            .select((rq::id, rq::status))
            .load::<(Uuid, String)>(conn)
            .await?
            .into_iter()
            .collect()
    };
    let mut seen = HashSet::new();
    Ok(ids
        .iter()
        .map(|id| {
            let first = seen.insert(*id);
            if let Some(row) = claimed.remove(id) {
                return ClaimOutcome::Claimed {
                    attempt: row.attempts,
                    failures: row.failures,
                    payload: row.payload,
                    created_at: row.created_at,
                    max_runtime_s: row.max_runtime_s,
                    user_id: row.user_id,
                };
            }
            if first && cancelled_now.contains(id) {
                return ClaimOutcome::CancelledNow;
            }
            match statuses.get(id).and_then(|s| JobStatus::parse(s)) {
                Some(status) if status.is_terminal() => ClaimOutcome::AlreadyFinished(status),
                Some(_) => ClaimOutcome::HeldElsewhere,
                // A later copy of an id this call just claimed.
                None if !first => ClaimOutcome::HeldElsewhere,
                None => ClaimOutcome::NotFound,
            }
        })
        .collect())
}

/// [`claim_many`] under `fairness.max_in_flight_per_user` (`max_per_user`; 0 = off,
/// and then exactly `claim_many`, one statement). With a cap, inside the caller's
/// transaction: each candidate's user is locked and its running jobs counted
/// ([`lock_and_count_users`]); the lock is held until the caller commits its claims, so
/// across the fleet no two claims of one user race past the cap. Only when some id is
/// over the cap does a fourth statement count the jobs ahead of each ([`queued_ahead`]),
/// for [`ClaimOutcome::UserAtCap`].
pub async fn claim_many_fair(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    stale_after_s: i64,
    max_per_user: u32,
) -> QueryResult<Vec<ClaimOutcome>> {
    if max_per_user == 0 || ids.is_empty() {
        return claim_many(conn, ids, stale_after_s).await;
    }
    let candidates = lock_and_count_users(conn, ids, stale_after_s).await?;
    let over = over_cap(ids, &candidates, max_per_user);
    if over.is_empty() {
        return claim_many(conn, ids, stale_after_s).await;
    }
    let allowed: Vec<Uuid> = ids
        .iter()
        .filter(|id| !over.contains(id))
        .copied()
        .collect();
    let mut claimed = claim_many(conn, &allowed, stale_after_s).await?.into_iter();
    // Counted after the claim, so the jobs it just took are running, not ahead.
    let over_users: HashMap<Uuid, i64> = over
        .iter()
        .filter_map(|id| candidates.get(id).map(|(user, _)| (*id, *user)))
        .collect();
    let ahead = queued_ahead(conn, &over_users).await?;
    Ok(ids
        .iter()
        .map(|id| {
            if over.contains(id) {
                // A row deleted meanwhile has no count; it is settled when next received.
                let ahead = ahead.get(id).copied().unwrap_or(0);
                // Every id over the cap is a candidate, with its user.
                let user_id = over_users.get(id).copied().unwrap_or_default();
                ClaimOutcome::UserAtCap { ahead, user_id }
            } else {
                // `claim_many` answers once per allowed id, in order.
                claimed.next().unwrap_or(ClaimOutcome::HeldElsewhere)
            }
        })
        .collect())
}

/// The capped claim's first two statements: locks each candidate's user
/// (`pg_advisory_xact_lock`, in user order so two processes cannot deadlock on each
/// other's users), then counts the user's fresh `in-progress` rows
/// (`report_queue_in_progress_user_idx`) in a statement of its own, so it sees every
/// claim committed while it waited. Returns each `in-queue` candidate's user and count.
async fn lock_and_count_users(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    stale_after_s: i64,
) -> QueryResult<HashMap<Uuid, (i64, i64)>> {
    prepared(
        diesel::sql_query(
            "SELECT pg_advisory_xact_lock(hashtextextended('reportd fairness ' || u, 0)) \
         FROM (SELECT DISTINCT user_id AS u FROM report_queue \
               WHERE id = ANY($1) AND status = 'in-queue' AND user_id IS NOT NULL \
               ORDER BY 1) AS users",
        )
        .bind::<Array<SqlUuid>, _>(ids),
    )
    .execute(conn)
    .await?;
    let candidates: Vec<CapCandidate> = prepared(
        diesel::sql_query(
            "SELECT q.id, q.user_id, (SELECT count(*) FROM report_queue r \
             WHERE r.user_id = q.user_id AND r.status = 'in-progress' \
               AND r.updated_at >= now() - $2::float8 * interval '1 second') AS running \
         FROM report_queue q \
         WHERE q.id = ANY($1) AND q.status = 'in-queue' AND q.user_id IS NOT NULL \
           AND q.cancel_requested_at IS NULL",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<BigInt, _>(stale_after_s),
    )
    .load(conn)
    .await?;
    Ok(candidates
        .into_iter()
        .map(|c| (c.id, (c.user_id, c.running)))
        .collect())
}

/// The ids a capped claim must not take: walking `ids` in order, each candidate (an
/// `in-queue` row, with its user and that user's jobs running now) is taken while its
/// user stays under `cap`; the rest are over. A repeated id is judged once.
pub(crate) fn over_cap(
    ids: &[Uuid],
    candidates: &HashMap<Uuid, (i64, i64)>,
    cap: u32,
) -> HashSet<Uuid> {
    let mut running: HashMap<i64, i64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut over = HashSet::new();
    for id in ids {
        let Some((user, already)) = candidates.get(id) else {
            continue;
        };
        if !seen.insert(*id) {
            continue;
        }
        let count = running.entry(*user).or_insert(*already);
        if *count < i64::from(cap) {
            *count += 1;
        } else {
            over.insert(*id);
        }
    }
    over
}

/// For each job over its user's cap (`over`: job id → user), how many of the same
/// user's `in-queue` jobs were created before it, among the [`AHEAD_SCAN_ROWS`] rows of
/// that user just older than it. One statement for the whole batch, one `UNION ALL`
/// branch per user with the user as a parameter of its own: planned with the user as a
/// constant, a busy user's branch is an ordered walk down `report_queue_user_created_idx`
/// `(user_id, created_at DESC, id DESC)` that stops after the bound. (With the user taken
/// from the job's row instead, PostgreSQL estimates an average user's rows, picks a bitmap
/// scan plus a sort, and reads all of a busy user's older rows for every job.)
async fn queued_ahead(
    conn: &mut AsyncPgConnection,
    over: &HashMap<Uuid, i64>,
) -> QueryResult<HashMap<Uuid, u32>> {
    let mut by_user: BTreeMap<i64, Vec<Uuid>> = BTreeMap::new();
    for (id, user) in over {
        by_user.entry(*user).or_default().push(*id);
    }
    let branches: Vec<String> = (0..by_user.len())
        .map(|k| {
            let (ids, user) = (2 * k + 2, 2 * k + 3);
            format!(
                "SELECT q.id, (SELECT count(*) FILTER (WHERE o.status = 'in-queue') FROM (\
                   SELECT r.status FROM report_queue r \
                   WHERE r.user_id = ${user} AND (r.created_at, r.id) < (q.created_at, q.id) \
                   ORDER BY r.created_at DESC, r.id DESC LIMIT $1) o) AS ahead \
                 FROM report_queue q WHERE q.id = ANY(${ids}) AND q.user_id = ${user}"
            )
        })
        .collect();
    let mut query = diesel::sql_query(branches.join(" UNION ALL "))
        .into_boxed::<diesel::pg::Pg>()
        .bind::<BigInt, _>(AHEAD_SCAN_ROWS);
    for (user, ids) in by_user {
        query = query.bind::<Array<SqlUuid>, _>(ids).bind::<BigInt, _>(user);
    }
    let rows: Vec<AheadRow> = query.load(conn).await?;
    Ok(rows
        .into_iter()
        // At most AHEAD_SCAN_ROWS, so it always fits.
        .map(|row| (row.id, u32::try_from(row.ahead).unwrap_or(u32::MAX)))
        .collect())
}

#[derive(QueryableByName)]
struct AheadRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    ahead: i64,
}

#[derive(QueryableByName)]
struct CapCandidate {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    running: i64,
}

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Integer)]
    failures: i32,
    #[diesel(sql_type = Jsonb)]
    payload: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Integer>)]
    max_runtime_s: Option<i32>,
    #[diesel(sql_type = Nullable<BigInt>)]
    user_id: Option<i64>,
}

/// Of the `ids` a claim could not take, ends `cancelled` those that must never run: a
/// cancel is pending on an `in-queue` row (asked for while it was handed back) or on a
/// stale `in-progress` one (its worker was lost), or a never-started row is past its
/// `not_after` (reason `expired`). Returns the ids it cancelled. Runs only when a claim
/// left ids over (duplicates, held jobs), so it costs the common claim nothing.
async fn cancel_unclaimable(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    stale_after_s: i64,
) -> QueryResult<HashSet<Uuid>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(prepared(diesel::sql_query(
        "UPDATE report_queue SET status = 'cancelled', finished_at = now(), updated_at = now(), \
           cancel_reason = CASE WHEN cancel_requested_at IS NULL THEN 'expired' ELSE cancel_reason END, \
           cancel_requested_at = COALESCE(cancel_requested_at, now()) \
         WHERE id = ANY($1) AND (\
           (status = 'in-queue' AND cancel_requested_at IS NOT NULL) OR \
           (status = 'in-queue' AND attempts = 0 AND not_after < now()) OR \
           (status = 'in-progress' AND cancel_requested_at IS NOT NULL \
             AND updated_at < now() - $2::float8 * interval '1 second')) \
         RETURNING id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<BigInt, _>(stale_after_s))
    .load::<IdRow>(conn)
    .await?
    .into_iter()
    .map(|row| row.id)
    .collect())
}

/// What a cancel did to a job that was not terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting: it is `cancelled` now, and its message is deleted when next received.
    Cancelled,
    /// It is running: its worker stops it at its next heartbeat.
    Requested,
}

/// Cancels a job that is not terminal: an `in-queue` one at once, an `in-progress` one
/// by request (its worker sees the request in its next heartbeat's answer). The first
/// reason given is kept. None when the job is terminal already or does not exist.
pub async fn request_cancel(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: Option<&str>,
) -> QueryResult<Option<CancelOutcome>> {
    // A running row's `updated_at` is its heartbeat: left alone, or a lost worker's row
    // would look alive.
    let status: Option<StatusRow> = diesel::sql_query(
        "UPDATE report_queue SET \
           status = CASE WHEN status = 'in-queue' THEN 'cancelled' ELSE status END, \
           finished_at = CASE WHEN status = 'in-queue' THEN now() ELSE finished_at END, \
           updated_at = CASE WHEN status = 'in-queue' THEN now() ELSE updated_at END, \
           cancel_requested_at = COALESCE(cancel_requested_at, now()), \
           cancel_reason = COALESCE(cancel_reason, $2) \
         WHERE id = $1 AND status IN ('in-queue', 'in-progress') \
         RETURNING status",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<Text>, _>(reason)
    .get_result(conn)
    .await
    .optional()?;
    Ok(status.map(|row| {
        if row.status == JobStatus::Cancelled.as_str() {
            CancelOutcome::Cancelled
        } else {
            CancelOutcome::Requested
        }
    }))
}

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = Text)]
    status: String,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Of `ids`, the rows that exist but are locked by another session. After a batch hit
/// its lock timeout, this tells the StatusActor which writes met a row held elsewhere
/// (an operator's `SELECT … FOR UPDATE`, a long transaction), so only those wait. Run
/// outside a transaction: the `FOR UPDATE SKIP LOCKED` probe holds no lock afterwards.
pub(crate) async fn busy_rows(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<HashSet<Uuid>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let locked: HashSet<Uuid> = prepared(
        diesel::sql_query(
            "SELECT id FROM report_queue WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED",
        )
        .bind::<Array<SqlUuid>, _>(ids),
    )
    .load::<IdRow>(conn)
    .await?
    .into_iter()
    .map(|row| row.id)
    .collect();
    let missing: Vec<Uuid> = ids
        .iter()
        .filter(|id| !locked.contains(id))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(HashSet::new());
    }
    // A plain read never waits for row locks: it tells a busy row from a missing one.
    let busy: HashSet<Uuid> = rq::report_queue
        .filter(rq::id.eq_any(&missing))
        .select(rq::id)
        .load::<Uuid>(conn)
        .await?
        .into_iter()
        .collect();
    Ok(busy)
}

/// One row heartbeat: the report, its running attempt, and the progress to record
/// (None keeps the stored one).
pub type Touch = (Uuid, i32, Option<serde_json::Value>);

/// Records that these attempts are still alive (the row heartbeat), so that a
/// duplicate delivery is not mistaken for a crashed holder, writes the progress they
/// carry, and answers whether a cancel was asked for. One result per item.
pub async fn touch_many(
    conn: &mut AsyncPgConnection,
    items: &[Touch],
) -> QueryResult<Vec<Heartbeat>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = items.iter().map(|(id, _, _)| *id).collect();
    let attempts: Vec<i32> = items.iter().map(|(_, attempt, _)| *attempt).collect();
    let progress: Vec<Option<serde_json::Value>> = items
        .iter()
        .map(|(_, _, progress)| progress.clone())
        .collect();
    let touched: HashMap<Uuid, bool> = prepared(diesel::sql_query(
        "UPDATE report_queue r SET updated_at = now(), progress = COALESCE(v.progress, r.progress) \
         FROM unnest($1, $2, $3) AS v(id, attempt, progress) \
         WHERE r.id = v.id AND r.status = 'in-progress' AND r.attempts = v.attempt \
         RETURNING r.id, r.cancel_requested_at IS NOT NULL AS cancel",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Integer>, _>(&attempts)
    .bind::<Array<Nullable<Jsonb>>, _>(&progress))
    .load::<TouchedRow>(conn)
    .await?
    .into_iter()
    .map(|row| (row.id, row.cancel))
    .collect();
    Ok(ids
        .iter()
        .map(|id| match touched.get(id) {
            Some(false) => Heartbeat::Alive,
            Some(true) => Heartbeat::CancelRequested,
            None => Heartbeat::Gone,
        })
        .collect())
}

#[derive(QueryableByName)]
struct TouchedRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    cancel: bool,
}

/// A completion: report id, the attempt that completed it, the file's URL, the file.
pub(crate) type Completion = (Uuid, i32, Option<String>, Option<ReportFile>);

/// The `file_*` columns of several completions, one array per column (for `unnest`).
#[derive(Default)]
struct FileArrays {
    keys: Vec<Option<String>>,
    sizes: Vec<Option<i64>>,
    sha256s: Vec<Option<String>>,
    content_types: Vec<Option<String>>,
    rows: Vec<Option<i64>>,
    gzips: Vec<Option<bool>>,
}

impl FileArrays {
    fn of<'a>(files: impl Iterator<Item = Option<&'a ReportFile>>) -> Self {
        let mut arrays = Self::default();
        for file in files {
            arrays.keys.push(file.map(|f| f.key.clone()));
            arrays.sizes.push(file.map(|f| f.size_bytes));
            arrays.sha256s.push(file.map(|f| f.sha256.clone()));
            arrays
                .content_types
                .push(file.map(|f| f.content_type.clone()));
            arrays.rows.push(file.map(|f| f.rows));
            arrays.gzips.push(file.map(|f| f.gzip));
        }
        arrays
    }
}

/// Completes several attempts in one statement (compare-and-set on each claimed
/// attempt); one result per item: false when the row is no longer that attempt's.
pub async fn complete_many(
    conn: &mut AsyncPgConnection,
    items: &[Completion],
) -> QueryResult<Vec<bool>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = items.iter().map(|(id, ..)| *id).collect();
    let attempts: Vec<i32> = items.iter().map(|(_, attempt, ..)| *attempt).collect();
    let urls: Vec<Option<String>> = items.iter().map(|(_, _, url, _)| url.clone()).collect();
    let files = FileArrays::of(items.iter().map(|(.., file)| file.as_ref()));
    let completed: HashSet<(Uuid, i32)> = prepared(
        diesel::sql_query(
            "UPDATE report_queue r SET status = 'completed', report_url = v.url, \
           file_key = v.key, file_size_bytes = v.size, file_sha256 = v.sha256, \
           file_content_type = v.content_type, file_rows = v.rows, file_gzip = v.gzip, \
           finished_at = now(), updated_at = now(), \
           progress = jsonb_set(r.progress, '{percent}', '100') \
         FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9) \
           AS v(id, attempt, url, key, size, sha256, content_type, rows, gzip) \
         WHERE r.id = v.id AND r.status = 'in-progress' AND r.attempts = v.attempt \
         RETURNING r.id, r.attempts",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Integer>, _>(&attempts)
        .bind::<Array<Nullable<Text>>, _>(&urls)
        .bind::<Array<Nullable<Text>>, _>(&files.keys)
        .bind::<Array<Nullable<BigInt>>, _>(&files.sizes)
        .bind::<Array<Nullable<Text>>, _>(&files.sha256s)
        .bind::<Array<Nullable<Text>>, _>(&files.content_types)
        .bind::<Array<Nullable<BigInt>>, _>(&files.rows)
        .bind::<Array<Nullable<Bool>>, _>(&files.gzips),
    )
    .load::<CompletedRow>(conn)
    .await?
    .into_iter()
    .map(|row| (row.id, row.attempts))
    .collect();
    Ok(items
        .iter()
        .map(|(id, attempt, ..)| completed.contains(&(*id, *attempt)))
        .collect())
}

#[derive(QueryableByName)]
struct CompletedRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

/// Ends attempt `attempt`; returns the status it left the job in (a hand-back leaves
/// `cancelled` when a cancel was pending), or None when the row is no longer that
/// attempt's (another worker re-claimed it, or it is terminal) and nothing changed.
pub async fn end_attempt(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    attempt: i32,
    end: &AttemptEnd,
) -> QueryResult<Option<JobStatus>> {
    if let AttemptEnd::Completed { report_url, file } = end {
        // One owner of the completion's columns: the batched statement.
        let item = (id, attempt, report_url.clone(), file.clone());
        let done = complete_many(conn, &[item]).await?;
        let applied = done.contains(&true);
        return Ok(applied.then_some(JobStatus::Completed));
    }
    let write = end.write();
    let row: Option<StatusRow> = prepared(
        diesel::sql_query(
            "UPDATE report_queue SET \
           status = CASE WHEN $3 THEN \
             (CASE WHEN cancel_requested_at IS NULL THEN 'in-queue' ELSE 'cancelled' END) \
             ELSE $4 END, \
           finished_at = CASE WHEN $3 AND cancel_requested_at IS NULL THEN NULL ELSE now() END, \
           last_error = COALESCE($5, last_error), \
           failures = failures + $6, \
           report_url = CASE WHEN $4 = 'completed' THEN $7 ELSE report_url END, \
           updated_at = now() \
         WHERE id = $1 AND status = 'in-progress' AND attempts = $2 \
         RETURNING status",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Integer, _>(attempt)
        .bind::<diesel::sql_types::Bool, _>(write.status.is_none())
        .bind::<Text, _>(write.status.map_or("", JobStatus::as_str))
        .bind::<Nullable<Text>, _>(write.last_error)
        .bind::<Integer, _>(i32::from(write.counts_failure))
        .bind::<Nullable<Text>, _>(write.report_url),
    )
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.and_then(|row| JobStatus::parse(&row.status)))
}

/// What ending an attempt writes to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndWrite<'a> {
    /// The terminal status; None for a hand-back, which writes `in-queue` (or
    /// `cancelled` when a cancel was asked for while the attempt ran).
    status: Option<JobStatus>,
    /// The new `last_error`; None keeps the old one.
    last_error: Option<&'a str>,
    /// Whether the attempt counts as a failure.
    counts_failure: bool,
    /// `report_url`, written by a completion only.
    report_url: Option<&'a str>,
}

impl AttemptEnd {
    /// The pure rule of [`end_attempt`]: what each way of ending writes.
    fn write(&self) -> EndWrite<'_> {
        let (status, last_error, counts_failure, report_url) = match self {
            AttemptEnd::Completed { report_url, .. } => (
                Some(JobStatus::Completed),
                None,
                false,
                report_url.as_deref(),
            ),
            AttemptEnd::Requeued { error } => (None, Some(error.as_str()), true, None),
            AttemptEnd::Failed { error } => {
                (Some(JobStatus::Failed), Some(error.as_str()), true, None)
            }
            AttemptEnd::GaveUp { error } => {
                (Some(JobStatus::Failed), Some(error.as_str()), false, None)
            }
            AttemptEnd::Released { note } => (None, note.as_deref(), false, None),
            AttemptEnd::Cancelled => (Some(JobStatus::Cancelled), None, false, None),
        };
        EndWrite {
            status,
            last_error,
            counts_failure,
            report_url,
        }
    }
}

/// Records that SQS accepted the messages of these reports; returns the ids changed.
pub(crate) async fn mark_enqueued(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<Uuid>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::update(rq::report_queue.filter(rq::id.eq_any(ids)))
        .filter(rq::enqueued_at.is_null())
        .set(rq::enqueued_at.eq(now))
        .returning(rq::id)
        .get_results(conn)
        .await
}

/// Filters and the keyset position of a listing page.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only reports in this status; None for any status.
    pub status: Option<JobStatus>,
    /// Only this user's reports; None for every user.
    pub user_id: Option<i64>,
    /// Only reports created at or after this instant.
    pub created_from: Option<DateTime<Utc>>,
    /// Only reports created before this instant.
    pub created_to: Option<DateTime<Utc>>,
    /// Only `failed` reports whose `last_error` contains this text (any case); the API
    /// sets `status` to `failed` with it, so the scan walks the failed rows only.
    pub error_text: Option<String>,
    /// Rows strictly after this `(created_at, id)` in newest-first order.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Most rows to return (the page size).
    pub limit: i64,
}

/// `text` as an `ILIKE` pattern that matches it anywhere, its wildcards taken literally.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Newest first, keyset-paginated on `(created_at, id)`. Every filter keeps the order
/// of an index, so a page costs its `limit` rows plus those skipped on the way: the
/// created range bounds the walk of `report_queue_created_idx` (or of the status or user
/// index, both ordered by `created_at` within their key); the error text is checked on
/// the rows of `report_queue_status_created_idx` for `failed` only, newest first, until
/// the page is full.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &ListFilter,
) -> QueryResult<Vec<ReportRecord>> {
    filtered(filter)
        .select(ReportRecord::as_select())
        .load(conn)
        .await
}

/// [`list`]'s page as keys only, `(created_at, id)`: what a bulk action walks (the key
/// is also the next page's cursor).
pub(crate) async fn list_keys(
    conn: &mut AsyncPgConnection,
    filter: &ListFilter,
) -> QueryResult<Vec<(DateTime<Utc>, Uuid)>> {
    filtered(filter)
        .select((rq::created_at, rq::id))
        .load(conn)
        .await
}

/// The listing's rows for `filter`, newest first, one page.
fn filtered(
    filter: &ListFilter,
) -> crate::db::schema::report_queue::BoxedQuery<'static, diesel::pg::Pg> {
    let mut query = rq::report_queue
        .order((rq::created_at.desc(), rq::id.desc()))
        .limit(filter.limit)
        .into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(rq::status.eq(status.as_str()));
    }
    if let Some(user_id) = filter.user_id {
        query = query.filter(rq::user_id.eq(user_id));
    }
    if let Some(from) = filter.created_from {
        query = query.filter(rq::created_at.ge(from));
    }
    if let Some(to) = filter.created_to {
        query = query.filter(rq::created_at.lt(to));
    }
    if let Some(text) = &filter.error_text {
        query = query.filter(rq::last_error.ilike(contains_pattern(text)));
    }
    if let Some((created_at, id)) = filter.after {
        query = query.filter(
            rq::created_at
                .lt(created_at)
                .or(rq::created_at.eq(created_at).and(rq::id.lt(id))),
        );
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_text_matches_itself_anywhere_with_its_wildcards_taken_literally() {
        assert_eq!(contains_pattern("timeout"), "%timeout%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn only_failed_attempts_count_and_hand_backs_keep_the_job_alive() {
        let error = || "boom".to_string();
        let cases = [
            (
                AttemptEnd::Completed {
                    report_url: Some("u".into()),
                    file: None,
                },
                Some(JobStatus::Completed),
                false,
            ),
            (AttemptEnd::Requeued { error: error() }, None, true),
            (
                AttemptEnd::Failed { error: error() },
                Some(JobStatus::Failed),
                true,
            ),
            (
                AttemptEnd::GaveUp { error: error() },
                Some(JobStatus::Failed),
                false,
            ),
            (AttemptEnd::Released { note: None }, None, false),
            (AttemptEnd::Cancelled, Some(JobStatus::Cancelled), false),
        ];
        for (end, status, counts_failure) in cases {
            let write = end.write();
            assert_eq!(
                (write.status, write.counts_failure),
                (status, counts_failure),
                "{end:?}"
            );
            assert_eq!(
                write.report_url.is_some(),
                matches!(end, AttemptEnd::Completed { .. })
            );
        }
    }

    #[test]
    fn a_release_without_a_note_keeps_the_last_error() {
        assert_eq!(AttemptEnd::Released { note: None }.write().last_error, None);
        assert_eq!(AttemptEnd::Cancelled.write().last_error, None);
        let note = AttemptEnd::Released {
            note: Some("host trouble".into()),
        };
        assert_eq!(note.write().last_error, Some("host trouble"));
    }

    #[test]
    fn the_cap_takes_each_users_jobs_in_order_until_it_is_reached() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        // User 1 has one job running; user 2 none; ids[5] is not a candidate (finished).
        let candidates = HashMap::from([
            (ids[0], (1, 1)),
            (ids[1], (2, 0)),
            (ids[2], (1, 1)),
            (ids[3], (2, 0)),
            (ids[4], (2, 0)),
        ]);
        let over = over_cap(&ids, &candidates, 2);
        assert_eq!(over, HashSet::from([ids[2], ids[4]]));
        assert_eq!(over_cap(&ids, &candidates, 1).len(), 4);
    }

    #[test]
    fn a_repeated_id_counts_once_and_a_user_over_the_cap_already_gets_nothing() {
        let id = Uuid::new_v4();
        let candidates = HashMap::from([(id, (7, 0))]);
        assert!(over_cap(&[id, id], &candidates, 1).is_empty());
        let candidates = HashMap::from([(id, (7, 3))]);
        assert_eq!(over_cap(&[id], &candidates, 2), HashSet::from([id]));
    }
}
