//! `webhook_deliveries` and `webhook_sweep`: the database as the webhook queue.
//!
//! The sweeper records deliveries for reports that finished since its cursor (the
//! partial `report_queue_finished_idx`), in one transaction that also moves the cursor,
//! so a report's deliveries are recorded exactly when its cursor passes it — never lost
//! by a crash, never written by the job's own hot path. Deliverers claim due rows with
//! `FOR UPDATE SKIP LOCKED` and a lease, so several processes share the work.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::ReportRecord;
use super::reports::write_horizon;
use super::schema::report_queue::dsl as rq;
use super::schema::webhook_deliveries::dsl as wd;

/// The advisory lock of a sweep: one sweeper per fleet at a time (another process's
/// sweep just skips its turn). A transaction lock, so it can never outlive the sweep.
const SWEEP_LOCK_KEY: i64 = 0x7265_706f_7274_7768;

/// The longest open transaction a sweep waits for (see [`write_horizon`]).
const HORIZON_MAX_LAG_S: i32 = 60;

/// A delivery to record: the sweeper renders it from a finished report.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::schema::webhook_deliveries)]
pub(crate) struct NewDelivery {
    /// The `webhook-id`, fixed for every retry.
    pub(crate) id: Uuid,
    /// The report the event is about.
    pub(crate) report_id: Uuid,
    /// Where it goes.
    pub(crate) endpoint: String,
    /// `report.completed`, `report.failed` or `report.cancelled`.
    pub(crate) event: String,
    /// The signed body, `{"type", "timestamp", "data"}`.
    pub(crate) payload: serde_json::Value,
    /// When retries stop.
    pub(crate) retry_until: DateTime<Utc>,
}

/// One delivery as `GET /reports/{id}/webhooks` shows it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub(crate) struct DeliveryRecord {
    /// The `webhook-id`.
    pub(crate) id: Uuid,
    /// Where it goes.
    pub(crate) endpoint: String,
    /// The event type.
    pub(crate) event: String,
    /// `pending`, `delivered`, `gave_up` or `stopped`.
    pub(crate) state: String,
    /// Tries so far (since the last redeliver).
    pub(crate) attempts: i32,
    /// The receiver's last HTTP status; None before an answer.
    pub(crate) last_status_code: Option<i32>,
    /// Why the last try failed; None after a success or before a try.
    pub(crate) last_error: Option<String>,
    /// When a pending delivery is tried next.
    pub(crate) next_attempt_at: DateTime<Utc>,
    /// When a receiver accepted it.
    pub(crate) delivered_at: Option<DateTime<Utc>>,
}

/// A claimed delivery: what a deliverer sends.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct DueDelivery {
    /// The `webhook-id`.
    #[diesel(sql_type = SqlUuid)]
    pub(crate) id: Uuid,
    /// The report it is about (for logs).
    #[diesel(sql_type = SqlUuid)]
    pub(crate) report_id: Uuid,
    /// Where it goes.
    #[diesel(sql_type = Text)]
    pub(crate) endpoint: String,
    /// The event type (for logs).
    #[diesel(sql_type = Text)]
    pub(crate) event: String,
    /// The body to sign and send.
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub(crate) payload: serde_json::Value,
    /// This try's number; the outcome is recorded only while it is still the row's.
    #[diesel(sql_type = Int4)]
    pub(crate) attempts: i32,
    /// When retries stop.
    #[diesel(sql_type = Timestamptz)]
    pub(crate) retry_until: DateTime<Utc>,
}

/// How a try ended, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeliveryUpdate {
    /// A 2xx: done.
    Delivered { status: i32 },
    /// A 410: the receiver wants no more.
    Stopped { status: i32 },
    /// Anything else: try again at `next`.
    Retry {
        status: Option<i32>,
        error: String,
        next: DateTime<Utc>,
    },
    /// Out of time: no more tries.
    GaveUp { status: Option<i32>, error: String },
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// One sweep: under the fleet's sweep lock, reads the reports that finished between the
/// cursor and the write horizon, records the deliveries `render` makes of them (a
/// delivery already recorded is kept as it is) and moves the cursor to the horizon, all
/// in one transaction. Returns how many deliveries it recorded, or None when another
/// process holds the lock.
pub(crate) async fn sweep<F>(conn: &mut AsyncPgConnection, render: F) -> QueryResult<Option<usize>>
where
    F: Fn(&ReportRecord, Option<&str>) -> Vec<NewDelivery> + Send + Sync,
{
    let render = &render;
    conn.transaction::<_, diesel::result::Error, _>(async move |tx| {
        let locked: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(SWEEP_LOCK_KEY)
            .get_result(tx)
            .await?;
        if !locked.locked {
            return Ok(None);
        }
        let since: DateTime<Utc> = super::schema::webhook_sweep::table
            .select(super::schema::webhook_sweep::swept_until)
            .for_update()
            .first(tx)
            .await?;
        let horizon = write_horizon(tx, HORIZON_MAX_LAG_S).await?;
        if horizon <= since {
            return Ok(Some(0));
        }
        let rows: Vec<(ReportRecord, Option<String>)> = rq::report_queue
            .filter(rq::finished_at.ge(since).and(rq::finished_at.lt(horizon)))
            .select((ReportRecord::as_select(), rq::callback_url))
            .load(tx)
            .await?;
        let deliveries: Vec<NewDelivery> = rows
            .iter()
            .flat_map(|(row, callback)| render(row, callback.as_deref()))
            .collect();
        let mut recorded = 0;
        for chunk in deliveries.chunks(1000) {
            recorded += diesel::insert_into(wd::webhook_deliveries)
                .values(chunk)
                .on_conflict((wd::report_id, wd::endpoint, wd::event))
                .do_nothing()
                .execute(tx)
                .await?;
        }
        diesel::update(super::schema::webhook_sweep::table)
            .set(super::schema::webhook_sweep::swept_until.eq(horizon))
            .execute(tx)
            .await?;
        Ok(Some(recorded))
    })
    .await
}

/// Claims up to `limit` due deliveries: counts the try and leases the row for `lease_s`
/// (a deliverer that dies mid-try leaves it due again after the lease).
pub(crate) async fn claim_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    lease_s: i64,
) -> QueryResult<Vec<DueDelivery>> {
    diesel::sql_query(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, \
           next_attempt_at = now() + make_interval(secs => $2) \
         WHERE id IN (SELECT id FROM webhook_deliveries \
           WHERE state = 'pending' AND next_attempt_at <= now() \
           ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, report_id, endpoint, event, payload, attempts, retry_until",
    )
    .bind::<BigInt, _>(limit)
    .bind::<diesel::sql_types::Double, _>(lease_s as f64)
    .load(conn)
    .await
}

/// Records a try's outcome, if the row is still this try's (a redeliver or a lease
/// taken over since makes it someone else's). Returns whether it was recorded.
pub(crate) async fn record_outcome(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    attempt: i32,
    update: &DeliveryUpdate,
) -> QueryResult<bool> {
    let (state, status, error, next) = match update {
        DeliveryUpdate::Delivered { status } => ("delivered", Some(*status), None, None),
        DeliveryUpdate::Stopped { status } => ("stopped", Some(*status), None, None),
        DeliveryUpdate::Retry {
            status,
            error,
            next,
        } => ("pending", *status, Some(error.as_str()), Some(*next)),
        DeliveryUpdate::GaveUp { status, error } => {
            ("gave_up", *status, Some(error.as_str()), None)
        }
    };
    let changed = diesel::sql_query(
        "UPDATE webhook_deliveries SET state = $3, last_status_code = $4, last_error = $5, \
           next_attempt_at = coalesce($6, next_attempt_at), \
           delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END \
         WHERE id = $1 AND attempts = $2 AND state = 'pending'",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Int4, _>(attempt)
    .bind::<Text, _>(state)
    .bind::<Nullable<Int4>, _>(status)
    .bind::<Nullable<Text>, _>(error)
    .bind::<Nullable<Timestamptz>, _>(next)
    .execute(conn)
    .await?;
    Ok(changed == 1)
}

/// A report's deliveries, oldest first.
pub(crate) async fn for_report(
    conn: &mut AsyncPgConnection,
    report_id: Uuid,
) -> QueryResult<Vec<DeliveryRecord>> {
    wd::webhook_deliveries
        .filter(wd::report_id.eq(report_id))
        .order((wd::created_at.asc(), wd::endpoint.asc()))
        .select(DeliveryRecord::as_select())
        .load(conn)
        .await
}

/// Makes every delivery of these reports pending and due now, with a fresh retry
/// window and try count; the ids (`webhook-id`) stay. Returns how many were reset.
pub(crate) async fn redeliver(
    conn: &mut AsyncPgConnection,
    report_ids: &[Uuid],
    retry_for_s: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now(), \
           retry_until = now() + make_interval(secs => $2), last_error = NULL \
         WHERE report_id = ANY($1)",
    )
    .bind::<Array<SqlUuid>, _>(report_ids)
    .bind::<diesel::sql_types::Double, _>(retry_for_s as f64)
    .execute(conn)
    .await
}

/// Pending deliveries (the backlog `/health` shows): the partial due index holds only
/// these, so counting them reads that index alone.
pub(crate) async fn backlog(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    wd::webhook_deliveries
        .filter(wd::state.eq("pending"))
        .count()
        .get_result(conn)
        .await
}
