//! The dispatcher: sends accepted reports to SQS after their row is committed.
//!
//! The fast path sends each report as soon as the API has committed it (batched with
//! concurrent ones) and records `enqueued_at`. If SQS is down, throttled, or the process
//! dies in between, the row keeps `enqueued_at = NULL`; the sweeper finds such rows and
//! sends them with backoff until SQS accepts them, also after a restart. The sweeper only
//! looks at rows older than [`SWEEP_AFTER`] that the fast path is not still sending, so
//! on the happy path nothing is sent twice, even behind a burst.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use chrono::Utc;
use uuid::Uuid;

use super::{OutgoingMessage, SqsBatchers};
use crate::actors::messages::WriteOp;
use crate::actors::status::{write, StatusActor};
use crate::db::{self, reports, DbPool};

/// Rows younger than this are the fast path's business.
pub const SWEEP_AFTER: Duration = Duration::from_secs(10);

/// Sends committed reports to SQS.
#[derive(Clone)]
pub struct Dispatcher {
    batchers: SqsBatchers,
    status: Addr<StatusActor>,
    /// Reports the fast path is still sending (queued behind a burst, say): the sweeper
    /// leaves them alone however old they are, so they are not sent twice.
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
}

impl Dispatcher {
    pub fn new(batchers: SqsBatchers, status: Addr<StatusActor>) -> Self {
        Self {
            batchers,
            status,
            in_flight: Arc::default(),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one committed report in the background (the HTTP answer does not wait).
    /// The message is queued for sending before this returns, so reports of one user
    /// reach a FIFO queue in the order they were accepted.
    pub fn enqueue(&self, id: Uuid, user_id: Option<i64>) {
        let message = OutgoingMessage::for_report(id, user_id, 0);
        let Some(sent) = self.batchers.send.try_submit(message) else {
            tracing::warn!(report_id = %id, "send queue full; the sweeper will send it");
            return;
        };
        self.in_flight().insert(id);
        let status = self.status.clone();
        let this = self.clone();
        actix::spawn(async move {
            let result = match sent.await {
                Ok(Ok(())) => write(&status, WriteOp::MarkEnqueued(vec![id]))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("the send batcher is gone".to_string()),
            };
            this.in_flight().remove(&id);
            if let Err(e) = result {
                tracing::warn!(report_id = %id, error = %e, "send to SQS failed; the sweeper will retry");
            }
        });
    }

    async fn send_and_mark(&self, id: Uuid, user_id: Option<i64>) -> Result<(), String> {
        let message = OutgoingMessage::for_report(id, user_id, 0);
        self.batchers
            .send(message)
            .await
            .map_err(|e| e.to_string())?;
        write(&self.status, WriteOp::MarkEnqueued(vec![id]))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs the sweeper until the process stops: every second while all is well, backing
    /// off to 30 s while SQS or the database fail.
    pub async fn sweep_forever(self, pool: DbPool) {
        let mut delay = Duration::from_secs(1);
        loop {
            tokio::time::sleep(delay).await;
            match self.sweep_once(&pool).await {
                Ok(sent) => {
                    if sent > 0 {
                        tracing::info!(sent, "sweeper sent reports that had not reached SQS");
                    }
                    delay = Duration::from_secs(1);
                }
                Err(e) => {
                    delay = (delay * 2).min(Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "sweeper could not send pending reports");
                }
            }
        }
    }

    /// One pass: sends up to 500 rows that never reached SQS; returns how many were sent.
    pub async fn sweep_once(&self, pool: &DbPool) -> Result<usize, String> {
        let cutoff = Utc::now() - chrono::Duration::from_std(SWEEP_AFTER).unwrap_or_default();
        // Taken before the query: a send that finishes after this point has committed
        // its `enqueued_at` before leaving the set, so the query no longer returns it.
        let in_flight = self.in_flight().clone();
        let mut rows = {
            let mut conn = db::connection(pool).await.map_err(|e| e.to_string())?;
            reports::unenqueued(&mut conn, cutoff, 500)
                .await
                .map_err(|e| e.to_string())?
        };
        rows.retain(|row| !in_flight.contains(&row.id));
        let mut sent = 0;
        let mut first_error = None;
        let results = futures_util::future::join_all(
            rows.iter()
                .map(|row| self.send_and_mark(row.id, row.user_id)),
        )
        .await;
        for result in results {
            match result {
                Ok(()) => sent += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}
