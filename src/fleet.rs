//! Fleet registration: every process keeps a row in `processes` (`db::processes`) so the
//! console can list the whole fleet sharing the database, not only the process it asks.
//!
//! One task per process: it registers at start, refreshes the row every
//! [`HEARTBEAT_INTERVAL`] (a one-row upsert on a pool connection, never on the job's
//! path, never through the StatusActor), prunes rows whose heartbeat stopped
//! [`PRUNE_AFTER_S`] ago (killed processes), and deletes its own row when told to stop.
//! A failed write is logged and retried at the next tick: the fleet view is a convenience,
//! never a reason to stop serving.

use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{Role, Settings};
use crate::db::processes::{self, ProcessRow};
use crate::db::{self, DbPool};

/// How often a process refreshes its row.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A row whose heartbeat is older than this (three missed refreshes) is shown as stale.
pub(crate) const STALE_AFTER_S: f64 = 15.0;

/// A row whose heartbeat is this old (a killed process) is deleted by any other process.
pub(crate) const PRUNE_AFTER_S: i32 = 3600;

/// This process as it registers itself.
pub(crate) fn identity(settings: &Settings) -> ProcessRow {
    let roles: Vec<&str> = settings
        .server
        .roles
        .iter()
        .map(|r| match r {
            Role::Api => "api",
            Role::Worker => "worker",
        })
        .collect();
    ProcessRow {
        id: Uuid::new_v4(),
        host: hostname(),
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        roles: roles.join(","),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: chrono::Utc::now(),
    }
}

/// The kernel's host name (Linux), else `$HOSTNAME`, else `unknown`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Keeps `me`'s row fresh until `stop` turns true, then deletes it.
pub(crate) async fn heartbeat(pool: DbPool, me: ProcessRow, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => beat(&pool, &me).await,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    let removed = async {
        let mut conn = db::connection(&pool).await?;
        processes::remove(&mut conn, me.id).await?;
        Ok::<_, db::DbError>(())
    };
    if let Err(e) = removed.await {
        tracing::warn!(error = %e, "could not remove this process from `processes`");
    }
}

/// One refresh, and the prune of killed processes' rows.
async fn beat(pool: &DbPool, me: &ProcessRow) {
    let result = async {
        let mut conn = db::connection(pool).await?;
        processes::upsert(&mut conn, me).await?;
        let pruned = processes::prune(&mut conn, PRUNE_AFTER_S).await?;
        Ok::<_, db::DbError>(pruned)
    };
    match tokio::time::timeout(Duration::from_secs(2), result).await {
        Ok(Ok(0)) => {}
        Ok(Ok(pruned)) => tracing::info!(pruned, "pruned processes whose heartbeat stopped"),
        Ok(Err(e)) => tracing::warn!(error = %e, "process heartbeat failed"),
        Err(_) => tracing::warn!("process heartbeat got no answer within 2 s"),
    }
}
