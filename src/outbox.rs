//! The dispatcher: sends accepted reports to SQS after their row is committed, and the
//! reconciler that makes sure every non-terminal row keeps a live message.
//!
//! The fast path sends each report as soon as the API has committed it (batched with
//! concurrent ones) and records `enqueued_at`. Everything else is the reconciler's, a
//! pass every second in each api process:
//!
//! - **never sent**: rows with `enqueued_at = NULL`, untouched for [`UNSENT_AFTER`], that
//!   this process's fast path is not still sending (SQS was down, the process died
//!   between commit and send, or a retry/redrive reset the row and its send failed);
//! - **stranded in-progress**: a sent row whose holder stopped heart-beating for
//!   [`Timings::stranded_after`] gets a new send generation and `enqueued_at = NULL`, so
//!   the first rule sends it a new message (the claim accepts a stale in-progress row);
//! - **stranded in-queue**: the same for a sent `in-queue` row untouched for
//!   [`Timings::queued_stranded_after`], but only while the main queue has no visible or
//!   delayed message — with a backlog, an old in-queue row is simply waiting its turn;
//! - **dead-lettered**: every [`DLQ_CHECK_EVERY`], the DLQ watcher
//!   ([`super::dlq::watch`]) gives a new message to unfinished jobs whose message SQS's
//!   receive-count redrive moved to the DLQ.
//!
//! Of N api processes, one at a time runs a pass: it holds a PostgreSQL advisory lock
//! for the whole pass (on the one connection it uses), and marks what it sent before
//! releasing it; a process that does not get the lock skips that pass. So a row is sent
//! once, not N times.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::actors::status::{self, StatusActor};
use crate::config::Settings;
use crate::db::reconcile::{self, Seen};
use crate::db::{self, DbError, DbPool, PooledConnection};
use crate::dlq::{self, DlqError, WatchReport};
use crate::queue::{OutgoingMessage, SqsBatchers, SqsQueue};

/// Rows untouched for less than this are the fast path's (or a retry's) business.
pub(crate) const UNSENT_AFTER: Duration = Duration::from_secs(10);
/// Pause between passes while all is well.
const PASS_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between passes while SQS or the database fail.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often each process looks for stranded rows and into the DLQ: SQS's redrive is a
/// rare safety net, every look hides a few DLQ messages from listings for a moment, and
/// a row is stranded only after minutes.
pub(crate) const DLQ_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Rows one pass handles per rule, so that a pass stays short.
const PASS_LIMIT: i64 = 500;

/// How long rows may stay untouched before the reconciler (or a retry) treats them as
/// having lost their message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timings {
    /// An `in-progress` row heart-beats every third of a visibility timeout; one silent
    /// for three timeouts (and 30 s for a slow database) lost its worker.
    pub stranded_after: Duration,
    /// An `in-queue` row's message can be hidden for a visibility timeout plus the
    /// longest retry delay; a minute more for good measure.
    pub queued_stranded_after: Duration,
}

impl Timings {
    /// The timings for a visibility timeout and a longest retry delay (seconds).
    pub(crate) fn new(visibility_timeout_s: u32, backoff_max_s: u32) -> Self {
        let vt = u64::from(visibility_timeout_s);
        Self {
            stranded_after: Duration::from_secs(3 * vt + 30),
            queued_stranded_after: Duration::from_secs(vt + u64::from(backoff_max_s) + 60),
        }
    }

    /// The timings of these settings (`sqs.visibility_timeout_s`, `retry.backoff_max_s`).
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        Self::new(
            settings.sqs.visibility_timeout_s,
            settings.retry.backoff_max_s,
        )
    }
}

/// The main queue's backlog, as far as the stranded in-queue rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backlog {
    pub visible: u64,
    pub delayed: u64,
}

impl Backlog {
    /// Reads `ApproximateNumberOfMessages(Delayed)`; None when either is missing, which
    /// counts as "maybe a backlog".
    pub(crate) fn from_attributes(
        attributes: &std::collections::HashMap<String, String>,
    ) -> Option<Self> {
        let number = |key: &str| attributes.get(key)?.parse::<u64>().ok();
        Some(Self {
            visible: number("ApproximateNumberOfMessages")?,
            delayed: number("ApproximateNumberOfMessagesDelayed")?,
        })
    }
}

/// Whether old in-queue rows may be treated as stranded: only when no message waits in
/// the queue (visible or delayed); otherwise they may just be waiting behind a backlog.
/// Messages in flight do not count: a job's own message is in flight only while a
/// worker holds it, during its retry delay, or while it waits at its user's cap (in a
/// waiting room or sent back until about its turn), which `queued_stranded_after`
/// outlasts but for a capped job whose turn came later than estimated; its second
/// message is harmless (the claim runs the job once).
pub(crate) fn may_treat_queued_as_stranded(backlog: Option<Backlog>) -> bool {
    backlog.is_some_and(|b| b.visible == 0 && b.delayed == 0)
}

/// The pause before the next pass: [`PASS_EVERY`] after a pass that worked, doubling up
/// to [`MAX_BACKOFF`] while passes fail.
pub(crate) fn next_delay(previous: Duration, pass_failed: bool) -> Duration {
    if pass_failed {
        (previous * 2).clamp(PASS_EVERY, MAX_BACKOFF)
    } else {
        PASS_EVERY
    }
}

/// A reconciler failure (the pass is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("every send of the pass failed, the first with: {0}")]
    Sends(String),
}

impl From<diesel::result::Error> for ReconcileError {
    fn from(error: diesel::result::Error) -> Self {
        ReconcileError::Db(DbError::Query(error))
    }
}

/// What one reconciler pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PassReport {
    /// False when another process held the pass lock (nothing was done).
    pub ran: bool,
    /// Rows sent (never-sent or re-sent) and marked.
    pub sent: usize,
    /// Sends SQS did not take (the rows stay unsent for the next pass).
    pub send_failures: usize,
    /// Stranded in-progress rows given a new send generation.
    pub stranded_in_progress: usize,
    /// Stranded in-queue rows given a new send generation.
    pub stranded_in_queue: usize,
    /// What the DLQ watcher did, when it looked.
    pub dead_letters: WatchReport,
}

impl PassReport {
    fn is_quiet(&self) -> bool {
        self.sent == 0
            && self.send_failures == 0
            && self.stranded_in_progress == 0
            && self.stranded_in_queue == 0
            && self.dead_letters == WatchReport::default()
    }
}

/// Sends committed reports to SQS, and keeps every non-terminal row's message alive.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    batchers: SqsBatchers,
    status: Addr<StatusActor>,
    /// The queues, for the main queue's depth and the DLQ watcher.
    queue: SqsQueue,
    timings: Timings,
    /// Reports the fast path is still sending (queued behind a burst, say): the
    /// reconciler leaves them alone however old they are, so they are not sent twice.
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
}

impl Dispatcher {
    pub(crate) fn new(
        batchers: SqsBatchers,
        status: Addr<StatusActor>,
        queue: SqsQueue,
        timings: Timings,
    ) -> Self {
        Self {
            batchers,
            status,
            queue,
            timings,
            in_flight: Arc::default(),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends send number `generation` of a committed report in the background (the HTTP
    /// answer does not wait). The message is queued for sending before this returns, so
    /// reports of one user reach a FIFO queue in the order they were accepted.
    pub(crate) fn enqueue(&self, id: Uuid, user_id: Option<i64>, generation: i32) {
        let message = OutgoingMessage::for_report(id, user_id, generation);
        let Some(sent) = self.batchers.send.try_submit(message) else {
            tracing::warn!(report_id = %id, "send queue full; the reconciler will send it");
            return;
        };
        self.in_flight().insert(id);
        let writer = self.status.clone();
        let this = self.clone();
        actix::spawn(async move {
            let result = match sent.await {
                Ok(Ok(())) => status::mark_enqueued(&writer, vec![id])
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Ok(Err(failure)) => Err(failure.message),
                Err(_) => Err("the send batcher is gone".to_string()),
            };
            this.in_flight().remove(&id);
            if let Err(e) = result {
                tracing::warn!(report_id = %id, error = %e, "send to SQS failed; the reconciler will retry");
            }
        });
    }

    /// Runs the reconciler until the process stops: a pass every second while all is
    /// well, backing off to 30 s while SQS or the database fail; the stranded-row checks
    /// and the DLQ watcher at most every [`DLQ_CHECK_EVERY`].
    pub(crate) async fn sweep_forever(self, pool: DbPool) {
        let mut delay = PASS_EVERY;
        let mut next_slow_checks = Instant::now();
        loop {
            tokio::time::sleep(delay).await;
            let slow_checks = Instant::now() >= next_slow_checks;
            let result = self.sweep_once(&pool, slow_checks).await;
            delay = next_delay(delay, result.is_err());
            match result {
                Ok(report) => {
                    if report.ran && slow_checks {
                        next_slow_checks = Instant::now() + DLQ_CHECK_EVERY;
                    }
                    if !report.is_quiet() {
                        tracing::info!(?report, "reconciler pass");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "reconciler pass failed");
                }
            }
        }
    }

    /// One pass, if no other process is running one (see the module doc).
    pub(crate) async fn sweep_once(
        &self,
        pool: &DbPool,
        slow_checks: bool,
    ) -> Result<PassReport, ReconcileError> {
        let mut conn = db::connection(pool).await?;
        if !reconcile::try_lock_pass(&mut conn).await? {
            return Ok(PassReport::default());
        }
        let result = self.locked_pass(&mut conn, slow_checks).await;
        unlock(conn).await;
        result
    }

    async fn locked_pass(
        &self,
        conn: &mut AsyncPgConnection,
        slow_checks: bool,
    ) -> Result<PassReport, ReconcileError> {
        let mut report = PassReport {
            ran: true,
            ..PassReport::default()
        };
        if slow_checks {
            // Stranded rows are minutes old before they count, and their scans have no
            // index of their own (it would cost every claim): every 30 s is soon enough.
            report.stranded_in_progress = self.restrand_in_progress(conn).await?;
            report.stranded_in_queue = self.restrand_in_queue(conn).await?;
            report.dead_letters = self.watch_dlq(conn).await;
        }
        let (sent, failures) = self.send_unsent(conn).await?;
        report.sent = sent;
        report.send_failures = failures.len();
        match failures.into_iter().next() {
            Some(first) if sent == 0 => Err(ReconcileError::Sends(first)),
            _ => Ok(report),
        }
    }

    /// Rule (b): in-progress rows whose holder went silent get a new send generation.
    async fn restrand_in_progress(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> Result<usize, ReconcileError> {
        let stranded =
            reconcile::stranded_in_progress(conn, self.timings.stranded_after, PASS_LIMIT).await?;
        self.resend(conn, &stranded, "an in-progress job stopped heart-beating")
            .await
    }

    /// Rule (c): old in-queue rows get a new send generation, if the queue is empty.
    async fn restrand_in_queue(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> Result<usize, ReconcileError> {
        let stranded =
            reconcile::stranded_in_queue(conn, self.timings.queued_stranded_after, PASS_LIMIT)
                .await?;
        if stranded.is_empty() {
            return Ok(0);
        }
        // A depth that cannot be read skips this rule only: the sends of rule (a) must
        // not depend on GetQueueAttributes working (or being allowed).
        let backlog = match self.queue.depth(&self.queue.queue_url).await {
            Ok(attributes) => Backlog::from_attributes(&attributes),
            Err(e) => {
                tracing::warn!(error = %e, rows = stranded.len(), "cannot read the queue depth; old in-queue rows wait for the next pass");
                None
            }
        };
        if !may_treat_queued_as_stranded(backlog) {
            tracing::debug!(
                rows = stranded.len(),
                ?backlog,
                "old in-queue rows, but the queue has a backlog; leaving them"
            );
            return Ok(0);
        }
        self.resend(conn, &stranded, "an in-queue job has no message in SQS")
            .await
    }

    async fn resend(
        &self,
        conn: &mut AsyncPgConnection,
        stranded: &[Seen],
        why: &str,
    ) -> Result<usize, ReconcileError> {
        // The status stays: a stale in-progress row is claimed as it is, and a holder
        // that was only slow to heart-beat can still end its attempt (compare-and-set on
        // in-progress) instead of running into a reset row.
        let resent = reconcile::resend_many(conn, stranded, None).await?;
        for row in &resent {
            tracing::warn!(report_id = %row.id, generation = row.send_generation, "{why}; re-sending it");
        }
        Ok(resent.len())
    }

    /// Rule (d); a DLQ that cannot be read does not stop the rest of the pass.
    async fn watch_dlq(&self, conn: &mut AsyncPgConnection) -> WatchReport {
        match dlq::watch(&self.queue, conn, self.timings.stranded_after).await {
            Ok(report) => report,
            Err(DlqError::Queue(e)) => {
                tracing::warn!(error = %e, "the DLQ watcher could not read the DLQ");
                WatchReport::default()
            }
            Err(DlqError::Db(e)) => {
                tracing::warn!(error = %e, "the DLQ watcher could not read or write reports");
                WatchReport::default()
            }
        }
    }

    /// Rule (a): sends rows that have no message yet, then marks them (on the pass's
    /// connection, before the lock is released). Returns the count sent and the errors.
    async fn send_unsent(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> Result<(usize, Vec<String>), ReconcileError> {
        // Taken before the query: a send that finishes after this point has committed
        // its `enqueued_at` before leaving the set, so the query no longer returns it.
        let in_flight = self.in_flight().clone();
        let mut rows = reconcile::unsent(conn, UNSENT_AFTER, PASS_LIMIT).await?;
        rows.retain(|row| !in_flight.contains(&row.id));
        let results = futures_util::future::join_all(rows.iter().map(|row| {
            self.batchers.send(OutgoingMessage::for_report(
                row.id,
                row.user_id,
                row.send_generation,
            ))
        }))
        .await;
        let mut sent = Vec::new();
        let mut failures = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => sent.push((row.id, row.send_generation)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        reconcile::mark_sent(conn, &sent).await?;
        Ok((sent.len(), failures))
    }
}

/// Releases the pass lock. A connection that may still hold it must not go back to the
/// pool (no pass would ever run again, in any process): it is closed instead, which
/// releases the lock.
async fn unlock(mut conn: PooledConnection) {
    match reconcile::unlock_pass(&mut conn).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("the reconciler's pass lock was not held at the end of the pass")
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not release the reconciler's pass lock; closing its connection");
            drop(PooledConnection::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_thresholds_follow_the_visibility_timeout_and_the_retry_delay() {
        let timings = Timings::new(30, 300);
        assert_eq!(timings.stranded_after, Duration::from_secs(120));
        assert_eq!(timings.queued_stranded_after, Duration::from_secs(390));
    }

    #[test]
    fn a_stranded_job_is_silent_far_longer_than_four_missed_heartbeats() {
        for vt in [6, 30, 300, 43_200] {
            let four_beats = Duration::from_secs(u64::from(vt)) * 4 / 3;
            assert!(Timings::new(vt, 1).stranded_after > four_beats, "vt = {vt}");
        }
    }

    fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn old_in_queue_rows_are_stranded_only_when_nothing_waits_in_the_queue() {
        let backlog = |visible, delayed| Some(Backlog { visible, delayed });
        assert!(may_treat_queued_as_stranded(backlog(0, 0)));
        assert!(!may_treat_queued_as_stranded(backlog(1, 0)));
        assert!(!may_treat_queued_as_stranded(backlog(0, 1)));
        assert!(
            !may_treat_queued_as_stranded(None),
            "an unknown depth may hide a backlog"
        );
    }

    #[test]
    fn a_depth_reading_without_the_delayed_count_is_unknown() {
        let full = attributes(&[
            ("ApproximateNumberOfMessages", "0"),
            ("ApproximateNumberOfMessagesDelayed", "3"),
            ("ApproximateNumberOfMessagesNotVisible", "7"),
        ]);
        assert_eq!(
            Backlog::from_attributes(&full),
            Some(Backlog {
                visible: 0,
                delayed: 3
            })
        );
        let partial = attributes(&[("ApproximateNumberOfMessages", "0")]);
        assert_eq!(Backlog::from_attributes(&partial), None);
    }

    #[test]
    fn passes_back_off_while_they_fail_and_resume_at_once_when_one_works() {
        let mut delay = PASS_EVERY;
        let mut seen = Vec::new();
        for _ in 0..7 {
            delay = next_delay(delay, true);
            seen.push(delay.as_secs());
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(next_delay(delay, false), PASS_EVERY);
    }
}
