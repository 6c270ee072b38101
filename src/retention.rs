//! The retention pruner (issue 15): deletes finished reports past their status's limit
//! (`[retention]`), rows and files, so the job table and the report store stop growing
//! for ever.
//!
//! One pruner per fleet runs at a time: every batch is one short transaction that first
//! takes a transaction-level advisory lock ([`PRUNE_LOCK_KEY`]); a process that finds it
//! taken skips its turn. Worker-role processes run it (a fleet has workers wherever it
//! has finished reports), on a pool of one connection of its own so it never takes a
//! connection the API or the generators need.
//!
//! Within a batch the rows are deleted first (`DELETE … RETURNING`) and their files
//! removed from the store before the commit: if a file cannot be removed the batch
//! rolls back and the rows stay for the next pass, and if the commit fails after the
//! files went, the rows point at files that are gone (a missing file is no error the
//! next time). So a file is never left behind without a row that names it.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncConnection;
use futures_util::{StreamExt, TryStreamExt};

use crate::config::{RetentionSettings, Settings};
use crate::db::models::JobStatus;
use crate::db::retention as queries;
pub use crate::db::retention::PRUNE_LOCK_KEY;
use crate::db::{self, DbError, DbPool};
use crate::metrics::Metrics;
use crate::storage::{ReportStore, StoreError};

/// File deletions one batch runs at once (S3 `DeleteObject` calls, or local unlinks).
const DELETE_CONCURRENCY: usize = 16;

/// The pause between two full batches, so a large backlog is worked off at a steady
/// pace instead of one burst of deletes (and WAL) competing with the job traffic.
const BATCH_PAUSE: Duration = Duration::from_millis(100);

/// Why a pass stopped early; the rows not yet deleted wait for the next one.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A statement or the connection failed.
    #[error("retention: {0}")]
    Db(#[from] DbError),
    /// A report file could not be removed (the batch was rolled back).
    #[error("retention: cannot delete a report file: {0}")]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for PruneError {
    fn from(error: diesel::result::Error) -> Self {
        PruneError::Db(DbError::Query(error))
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassOutcome {
    /// Another process held the prune lock: this pass deleted nothing.
    Skipped,
    /// The pass ran; rows deleted per terminal status (a status without a limit is absent).
    Pruned(Vec<(JobStatus, u64)>),
}

impl PassOutcome {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        match self {
            PassOutcome::Skipped => 0,
            PassOutcome::Pruned(counts) => counts.iter().map(|(_, n)| n).sum(),
        }
    }
}

/// Deletes expired finished reports (see the module documentation).
pub struct Pruner {
    /// The limits and the pace.
    settings: RetentionSettings,
    /// One connection of its own.
    pool: DbPool,
    /// Where the reports' files are.
    store: Arc<ReportStore>,
    /// `reportd_rows_pruned_total`.
    metrics: Arc<Metrics>,
}

impl Pruner {
    /// A pruner for `settings.retention` over `settings.database.url` and `store`.
    /// Opens no connection yet.
    pub fn new(
        settings: &Settings,
        store: Arc<ReportStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DbError> {
        Ok(Self {
            settings: settings.retention.clone(),
            pool: db::build_pool(&settings.database.url, 1)?,
            store,
            metrics,
        })
    }

    /// The statuses with a limit, and their limits in days.
    fn limits(&self) -> Vec<(JobStatus, u32)> {
        [
            (JobStatus::Completed, self.settings.completed_days),
            (JobStatus::Failed, self.settings.failed_days),
            (JobStatus::Cancelled, self.settings.cancelled_days),
        ]
        .into_iter()
        .filter(|(_, days)| *days > 0)
        .collect()
    }

    /// Runs a pass every `interval_s` for as long as the process lives. A pass cut off by
    /// the process stopping loses nothing: its open batch rolls back with the connection.
    pub(crate) async fn run_forever(self) {
        let every = Duration::from_secs(self.settings.interval_s);
        loop {
            match self.prune_once().await {
                Ok(PassOutcome::Skipped) => {
                    tracing::debug!("retention: another process is pruning; skipped")
                }
                Ok(outcome) if outcome.total() > 0 => {
                    tracing::info!(
                        deleted = outcome.total(),
                        ?outcome,
                        "retention: pruned finished reports"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pass stopped; the rest waits for the next")
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One pass: for each status with a limit, batches until a batch comes back short.
    /// Stops (returning what it did so far) when another process takes the lock between
    /// batches; [`PassOutcome::Skipped`] only when it could not delete anything.
    pub async fn prune_once(&self) -> Result<PassOutcome, PruneError> {
        let mut counts = Vec::new();
        for (status, days) in self.limits() {
            let mut deleted = 0u64;
            loop {
                let Some(rows) = self.prune_batch(status, days).await? else {
                    if counts.is_empty() && deleted == 0 {
                        return Ok(PassOutcome::Skipped);
                    }
                    counts.push((status, deleted));
                    return Ok(PassOutcome::Pruned(counts));
                };
                deleted += rows;
                self.metrics
                    .upkeep
                    .rows_pruned
                    .with_label_values(&[status.as_str()])
                    .inc_by(rows);
                if rows < u64::from(self.settings.batch) {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            counts.push((status, deleted));
        }
        Ok(PassOutcome::Pruned(counts))
    }

    /// One batch in one transaction under the fleet's lock: the rows deleted, or None
    /// when another process holds the lock.
    async fn prune_batch(&self, status: JobStatus, days: u32) -> Result<Option<u64>, PruneError> {
        let mut conn = db::connection(&self.pool).await?;
        let store = &self.store;
        let batch = self.settings.batch;
        conn.transaction::<_, PruneError, _>(async move |tx| {
            if !queries::try_lock(tx).await? {
                return Ok(None);
            }
            let rows = queries::delete_expired(tx, status.as_str(), days, batch).await?;
            let keys: Vec<String> = rows.iter().filter_map(|r| r.file_key.clone()).collect();
            futures_util::stream::iter(keys)
                .map(|key| async move { store.delete(&key).await })
                .buffer_unordered(DELETE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(Some(rows.len() as u64))
        })
        .await
    }
}
