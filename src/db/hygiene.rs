//! PostgreSQL upkeep figures of `report_queue` for `/metrics` and `/health` (issue 15):
//! the oldest waiting job, rows by status, dead tuples and the last vacuum.
//!
//! They are read by one background task every [`REFRESH`] (like the SQS queue depths),
//! never on a request: a scrape or a health check costs the database nothing. Each read
//! is cheap by construction:
//!
//! - the oldest waiting job is `min(created_at) WHERE status = 'in-queue'`, which
//!   PostgreSQL answers from one end of `report_queue_status_created_idx`;
//! - rows by status are *bounded counts*: each status counted up to [`ROW_COUNT_CAP`]
//!   rows, so a status showing the cap has at least that many. The listing order makes
//!   a common status an ordered index scan that stops at the cap (checked with EXPLAIN
//!   on 250k rows), instead of a sequential scan that may read the whole table looking
//!   for a rare one; a rare status is read from the status index (all of its entries,
//!   which are few).
//!   No `count(*)` over the whole table, and no estimate from `pg_stats`, which is only
//!   as fresh as the last `ANALYZE` (never, on a server with autovacuum off);
//! - dead tuples and the last (auto)vacuum come from `pg_stat_user_tables`, the
//!   statistics system's counters (no table access at all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};

use super::models::JobStatus;
use super::DbPool;
use crate::metrics::Metrics;

/// How often the figures are read.
pub(crate) const REFRESH: Duration = Duration::from_secs(15);

/// Most rows counted per status: bounds each count's index scan.
pub(crate) const ROW_COUNT_CAP: i64 = 10_000;

/// `pg_stat_user_tables`' row for `report_queue`.
#[derive(Debug, Clone, QueryableByName)]
struct TableStats {
    #[diesel(sql_type = BigInt)]
    live: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_vacuum: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_autovacuum: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Seconds {
    #[diesel(sql_type = Nullable<Double>)]
    seconds: Option<f64>,
}

/// One reading of the figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hygiene {
    /// Seconds the oldest `in-queue` row has waited; None when none waits.
    pub(crate) oldest_waiting_s: Option<f64>,
    /// Rows per status, each at most [`ROW_COUNT_CAP`].
    pub(crate) rows: Vec<(JobStatus, i64)>,
    /// Live and dead tuples as the statistics system counts them.
    pub(crate) live_tuples: i64,
    /// Dead tuples (updated or deleted row versions not yet vacuumed).
    pub(crate) dead_tuples: i64,
    /// The later of the last manual and the last automatic vacuum.
    pub(crate) last_vacuum: Option<DateTime<Utc>>,
}

impl Hygiene {
    /// Dead tuples as a share of all tuples (0 for an empty table).
    pub(crate) fn dead_ratio(&self) -> f64 {
        dead_ratio(self.live_tuples, self.dead_tuples)
    }

    /// The `/health` entry.
    fn to_json(&self) -> Value {
        let rows: serde_json::Map<String, Value> = self
            .rows
            .iter()
            .map(|(status, n)| (status.as_str().to_string(), json!(n)))
            .collect();
        json!({
            "oldestWaitingS": self.oldest_waiting_s,
            "rowsByStatus": rows,
            "rowsCountedUpTo": ROW_COUNT_CAP,
            "deadTuples": self.dead_tuples,
            "liveTuples": self.live_tuples,
            "deadTupleRatio": self.dead_ratio(),
            "lastVacuum": self.last_vacuum,
        })
    }
}

/// `dead / (live + dead)`, 0 when both are 0.
pub(crate) fn dead_ratio(live: i64, dead: i64) -> f64 {
    let all = live.saturating_add(dead);
    if all <= 0 {
        0.0
    } else {
        dead as f64 / all as f64
    }
}

/// Reads every figure (a handful of small statements).
pub(crate) async fn read(conn: &mut AsyncPgConnection) -> QueryResult<Hygiene> {
    let oldest: Seconds = diesel::sql_query(
        "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS seconds \
         FROM report_queue WHERE status = 'in-queue'",
    )
    .get_result(conn)
    .await?;
    let rows = super::console::bounded_status_counts(conn, ROW_COUNT_CAP).await?;
    let stats: Option<TableStats> = diesel::sql_query(
        "SELECT n_live_tup AS live, n_dead_tup AS dead, last_vacuum, last_autovacuum \
         FROM pg_stat_user_tables WHERE relid = 'report_queue'::regclass",
    )
    .get_result(conn)
    .await
    .optional()?;
    let stats = stats.unwrap_or(TableStats {
        live: 0,
        dead: 0,
        last_vacuum: None,
        last_autovacuum: None,
    });
    Ok(Hygiene {
        oldest_waiting_s: oldest.seconds.map(|s| s.max(0.0)),
        rows,
        live_tuples: stats.live,
        dead_tuples: stats.dead,
        last_vacuum: stats.last_vacuum.max(stats.last_autovacuum),
    })
}

/// The latest reading, shared by the refresh task and `/health`.
#[derive(Clone, Default)]
pub(crate) struct HygieneWatch {
    inner: Arc<Mutex<Option<Value>>>,
}

impl HygieneWatch {
    /// The latest reading as `/health` shows it (null before the first refresh, or the
    /// error of the last one).
    pub(crate) fn latest(&self) -> Value {
        self.inner
            .lock()
            .map(|v| v.clone().unwrap_or(Value::Null))
            .unwrap_or(Value::Null)
    }

    /// Reads the figures every [`REFRESH`] for as long as the process lives, setting the
    /// gauges and the `/health` entry.
    pub(crate) async fn refresh_forever(self, pool: DbPool, metrics: Arc<Metrics>) {
        loop {
            let reading = async {
                let mut conn = super::connection(&pool).await?;
                Ok::<_, super::DbError>(read(&mut conn).await?)
            };
            let entry = match tokio::time::timeout(Duration::from_secs(5), reading).await {
                Ok(Ok(hygiene)) => {
                    set_gauges(&metrics, &hygiene);
                    hygiene.to_json()
                }
                Ok(Err(e)) => json!({"error": e.to_string()}),
                Err(_) => json!({"error": "no answer within 5 s"}),
            };
            if let Ok(mut slot) = self.inner.lock() {
                *slot = Some(entry);
            }
            tokio::time::sleep(REFRESH).await;
        }
    }
}

/// Sets the `reportd_db_*` gauges from a reading.
fn set_gauges(metrics: &Metrics, hygiene: &Hygiene) {
    metrics
        .upkeep
        .oldest_waiting
        .set(hygiene.oldest_waiting_s.unwrap_or(0.0));
    for (status, n) in &hygiene.rows {
        metrics
            .upkeep
            .rows
            .with_label_values(&[status.as_str()])
            .set(*n);
    }
    metrics.upkeep.dead_tuples.set(hygiene.dead_tuples);
    metrics.upkeep.dead_tuple_ratio.set(hygiene.dead_ratio());
    metrics
        .upkeep
        .last_vacuum
        .set(hygiene.last_vacuum.map_or(0.0, |t| t.timestamp() as f64));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_ratio_is_dead_over_all_and_zero_for_an_empty_table() {
        assert_eq!(dead_ratio(0, 0), 0.0);
        assert_eq!(dead_ratio(75, 25), 0.25);
        assert_eq!(dead_ratio(0, 10), 1.0);
    }
}
