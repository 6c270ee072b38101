//! Retention queries (issue 15): finished rows past their status's limit, deleted in
//! bounded batches through the partial `report_queue_finished_idx` on `finished_at`.
//!
//! `webhook_deliveries` references `report_queue` with `ON DELETE CASCADE` (migration
//! `2026-12-02-000007_webhooks`), so a report's deliveries go with its row, through the
//! `(report_id, endpoint, event)` unique index; nothing here deletes them by hand.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The advisory lock of one pruning batch: one pruner per fleet at a time. A
/// transaction lock, so it can never outlive the batch (nor a crashed process).
/// Public so that tests can hold it.
pub const PRUNE_LOCK_KEY: i64 = 0x7265_706f_7274_7072;

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// A deleted row: what the pruner still has to remove from the report store.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub(crate) struct Pruned {
    /// The deleted report.
    #[diesel(sql_type = SqlUuid)]
    pub(crate) id: Uuid,
    /// Its stored file's key, if it had one.
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) file_key: Option<String>,
}

/// Takes the fleet's prune lock for the current transaction; false when another
/// session holds it (that pruner is running: this one skips its turn).
pub(crate) async fn try_lock(tx: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<BigInt, _>(PRUNE_LOCK_KEY)
        .get_result(tx)
        .await?;
    Ok(row.locked)
}

/// Deletes up to `batch` rows of `status` that finished more than `days` days ago (by
/// the database's clock), oldest first, and returns them. The inner scan walks the
/// partial finished index in order (`finished_at < …` implies `IS NOT NULL`), and
/// skips rows locked elsewhere (a retry resetting a failed row) instead of waiting.
pub(crate) async fn delete_expired(
    tx: &mut AsyncPgConnection,
    status: &str,
    days: u32,
    batch: u32,
) -> QueryResult<Vec<Pruned>> {
    diesel::sql_query(
        "DELETE FROM report_queue WHERE id IN ( \
           SELECT id FROM report_queue \
           WHERE finished_at < now() - make_interval(days => $2) AND status = $1 \
           ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, file_key",
    )
    .bind::<Text, _>(status)
    .bind::<Integer, _>(i32::try_from(days).unwrap_or(i32::MAX))
    .bind::<BigInt, _>(i64::from(batch))
    .load(tx)
    .await
}
