//! `ReportWorker`: runs one job (or one FIFO group's jobs, in order) at a time.
//!
//! Per message: parse → claim (StatusActor) → generate while heart-beating the message's
//! visibility → record the end (compare-and-set on the claimed attempt) → and only then
//! delete, retry later, or hand over to the DLQ.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::messages::{Ping, RunJobs, WorkerIdle, WriteOp, WriteOutcome};
use super::registry::ActorSlot;
use super::status::{write, StatusActor};
use crate::config::RetrySettings;
use crate::db::reports::{AttemptEnd, ClaimOutcome};
use crate::db::DbGate;
use crate::metrics::Metrics;
use crate::queue::{ReceivedMessage, SqsBatchers, SqsQueue};
use crate::report::{JobContext, ReportGenerator};

/// SQS refuses to keep a message invisible for more than 12 h after its receipt.
const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);

/// What every worker of a process shares.
pub struct WorkerDeps {
    pub status: Addr<StatusActor>,
    pub queue: SqsQueue,
    pub batchers: SqsBatchers,
    pub generator: Arc<dyn ReportGenerator>,
    /// The queue's visibility timeout, in seconds; heartbeats extend by this much.
    pub visibility_timeout_s: u32,
    /// Receives SQS allows before its redrive moves a message to the DLQ.
    pub max_receive_count: u32,
    pub retry: RetrySettings,
    /// Becomes true when the shutdown grace period is over: running jobs are released.
    pub abort: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// Tripped when a write fails because the database is away.
    pub db_gate: DbGate,
}

/// One slot of the worker pool.
pub struct ReportWorker {
    /// Position in the pool; the poller's name for this worker.
    index: usize,
    deps: Arc<WorkerDeps>,
    /// Told when this worker is free again.
    poller: Recipient<WorkerIdle>,
    /// When the current job started.
    busy_since: Option<Instant>,
    /// This worker's entry in the health registry (job in hand, restarts).
    slot: ActorSlot,
    /// Why the worker stopped itself, for the restart log.
    stop_cause: Option<String>,
}

impl ReportWorker {
    pub fn new(
        index: usize,
        deps: Arc<WorkerDeps>,
        poller: Recipient<WorkerIdle>,
        slot: ActorSlot,
    ) -> Self {
        Self {
            index,
            deps,
            poller,
            busy_since: None,
            slot,
            stop_cause: None,
        }
    }
}

impl Actor for ReportWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |worker, _| worker.slot.heartbeat());
    }
}

impl Supervised for ReportWorker {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        let cause = self
            .stop_cause
            .take()
            .unwrap_or_else(|| "the worker stopped".into());
        self.slot.restarted(&cause);
        if self.busy_since.take().is_some() {
            // The job it held comes back through SQS after its visibility timeout.
            self.poller.do_send(WorkerIdle { worker: self.index });
        }
    }
}

impl Handler<Ping> for ReportWorker {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

impl Handler<RunJobs> for ReportWorker {
    type Result = ();

    fn handle(&mut self, msg: RunJobs, ctx: &mut Self::Context) {
        self.busy_since = Some(Instant::now());
        let deps = self.deps.clone();
        let slot = self.slot.clone();
        ctx.spawn(
            async move { run_in_order(&deps, &slot, msg.messages).await }
                .into_actor(self)
                .map(|crash, worker, ctx| {
                    worker.busy_since = None;
                    worker.slot.set_job(None);
                    worker.poller.do_send(WorkerIdle {
                        worker: worker.index,
                    });
                    if let Some(cause) = crash {
                        // Treat a panic in the job like a crashed worker: the supervisor
                        // restarts it with fresh state, and the restart is counted.
                        worker.stop_cause = Some(cause);
                        ctx.stop();
                    }
                }),
        );
    }
}

/// How one message ended, as far as the rest of its FIFO group is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// Done with it (completed, duplicate, poison handled).
    Done,
    /// It will run again later; later messages of its group must wait.
    NotDone,
    /// Like `NotDone`, and the generator panicked: the worker restarts.
    Crashed,
}

/// Runs messages one after another; when one is not done, the rest are released at once
/// so that they are not run out of order. Returns the cause when the generator panicked.
pub async fn run_in_order(
    deps: &WorkerDeps,
    slot: &ActorSlot,
    messages: Vec<ReceivedMessage>,
) -> Option<String> {
    let mut crash = None;
    let mut iter = messages.into_iter();
    while let Some(message) = iter.next() {
        let processed = process_message(deps, slot, &message).await;
        if processed == Processed::Crashed {
            crash = Some("the report generator panicked".to_string());
        }
        if processed != Processed::Done {
            for rest in iter.by_ref() {
                if let Err(e) = deps.batchers.set_visibility(&rest.receipt_handle, 0).await {
                    tracing::warn!(message_id = %rest.message_id, error = %e, "could not release a message of a failed group");
                }
            }
        }
    }
    crash
}

#[derive(serde::Deserialize)]
struct Body {
    id: Uuid,
}

/// Processes one message from start to end. Never panics; every failure is logged and
/// left where a person can see it (the row's `last_error`, the DLQ).
pub async fn process_message(
    deps: &WorkerDeps,
    slot: &ActorSlot,
    message: &ReceivedMessage,
) -> Processed {
    let span = tracing::info_span!(
        "job",
        report_id = tracing::field::Empty,
        message_id = %message.message_id,
        receive = message.receive_count,
        attempt = tracing::field::Empty,
    );
    async move {
        let id = match serde_json::from_str::<Body>(&message.body) {
            Ok(body) => body.id,
            Err(e) => {
                return poison(
                    deps,
                    message,
                    &format!("body is not {{\"id\": \"<uuid>\"}}: {e}"),
                )
                .await;
            }
        };
        tracing::Span::current().record("report_id", tracing::field::display(id));
        let stale_after_s = i64::from(deps.visibility_timeout_s / 2).max(1);
        let claim = match write(&deps.status, WriteOp::Claim { id, stale_after_s }).await {
            Ok(WriteOutcome::Claim(claim)) => claim,
            Ok(other) => {
                tracing::error!(?other, "unexpected answer to a claim");
                return retry_later(deps, message, 5).await;
            }
            Err(e) => {
                if e.is_retryable() {
                    deps.db_gate.trip();
                }
                tracing::warn!(error = %e, "cannot claim the job; the message will come back");
                return retry_later(deps, message, 5).await;
            }
        };
        match claim {
            ClaimOutcome::NotFound => {
                poison(deps, message, &format!("no report with id {id}")).await
            }
            ClaimOutcome::AlreadyFinished(status) => {
                tracing::info!(
                    status = status.as_str(),
                    "duplicate delivery of a finished job; deleting it"
                );
                delete(deps, message).await;
                Processed::Done
            }
            ClaimOutcome::HeldElsewhere => {
                // Another worker runs it right now. Hide this copy for a while rather
                // than delete it: if that worker dies, this copy still carries the job.
                tracing::info!("job is running elsewhere; hiding this duplicate delivery");
                retry_later(deps, message, deps.visibility_timeout_s.max(1) as i32).await;
                Processed::Done
            }
            ClaimOutcome::Claimed {
                attempt,
                payload,
                created_at,
            } => {
                tracing::Span::current().record("attempt", attempt);
                tracing::debug!("job claimed");
                if attempt == 1 {
                    let waited = (chrono::Utc::now() - created_at)
                        .num_microseconds()
                        .unwrap_or(0);
                    deps.metrics.queue_wait.observe(waited.max(0) as f64 / 1e6);
                }
                slot.set_job(Some(id));
                deps.metrics.jobs_in_flight.inc();
                let job = JobContext {
                    report_id: id,
                    attempt,
                    payload,
                };
                let processed = run_attempt(deps, message, job).await;
                deps.metrics.jobs_in_flight.dec();
                slot.set_job(None);
                processed
            }
        }
    }
    .instrument(span)
    .await
}

async fn run_attempt(deps: &WorkerDeps, message: &ReceivedMessage, job: JobContext) -> Processed {
    let id = job.report_id;
    let attempt = job.attempt;
    let started = Instant::now();
    // A task of its own: a panic in user code becomes a JoinError, not a dead worker.
    let mut generation = tokio::spawn(deps.generator.generate(job));
    let vt = deps.visibility_timeout_s;
    let beat_every = Duration::from_secs(u64::from(vt / 3).max(1));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
    let mut abort = deps.abort.clone();
    let result = loop {
        tokio::select! {
            result = &mut generation => break result,
            _ = heartbeat.tick(), if vt > 0 => {
                if started.elapsed() + Duration::from_secs(u64::from(vt)) < MAX_INVISIBLE {
                    if let Err(e) = deps.batchers.set_visibility(&message.receipt_handle, vt as i32).await {
                        tracing::warn!(error = %e, "visibility heartbeat failed");
                    }
                }
                let _ = write(&deps.status, WriteOp::Touch { id, attempt }).await;
            }
            changed = abort.changed() => {
                if changed.is_err() || *abort.borrow() {
                    generation.abort();
                    tracing::warn!("shutdown grace period over; releasing the running job");
                    end(deps, id, attempt, AttemptEnd::Released).await;
                    if let Err(e) = deps.batchers.set_visibility(&message.receipt_handle, 0).await {
                        tracing::warn!(error = %e, "could not release the message; it returns after its visibility timeout");
                    }
                    return Processed::NotDone;
                }
            }
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let mut crashed = false;
    let error = match result {
        Ok(Ok(report)) => {
            if end(
                deps,
                id,
                attempt,
                AttemptEnd::Completed {
                    report_url: report.report_url,
                },
            )
            .await
            {
                tracing::info!(elapsed_ms, "job completed");
                deps.metrics.jobs_completed.inc();
                deps.metrics.job_duration.observe(elapsed_ms as f64 / 1e3);
                delete(deps, message).await;
                return Processed::Done;
            }
            // Not ours any more (another attempt claimed it) or the database is away:
            // leave the message alone; its redelivery settles it.
            return Processed::NotDone;
        }
        Ok(Err(e)) => e,
        Err(join) => {
            crashed = join.is_panic();
            let what = if join.is_panic() {
                "the generator panicked"
            } else {
                "the generator was cancelled"
            };
            crate::report::GeneratorError::Retryable(what.to_string())
        }
    };
    let text = error.to_string();
    if !error.is_retryable() {
        tracing::warn!(error = %text, elapsed_ms, "job failed permanently; moving it to the dead-letter queue");
        if end(
            deps,
            id,
            attempt,
            AttemptEnd::Failed {
                error: text.clone(),
            },
        )
        .await
        {
            deps.metrics.jobs_failed.inc();
            deps.metrics.jobs_dead_lettered.inc();
            // If the copy fails the row still says `failed` with its error, where a
            // person sees it (and can retry it); the message is dropped on redelivery.
            to_dlq(deps, message, &format!("permanent error: {text}")).await;
        }
        return Processed::NotDone;
    }
    let not_done = if crashed {
        Processed::Crashed
    } else {
        Processed::NotDone
    };
    if message.receive_count >= deps.max_receive_count {
        tracing::warn!(error = %text, elapsed_ms, "job failed on its last allowed receive; SQS moves it to the dead-letter queue");
        if end(deps, id, attempt, AttemptEnd::Failed { error: text }).await {
            deps.metrics.jobs_failed.inc();
            deps.metrics.jobs_dead_lettered.inc();
        }
        retry_later(deps, message, 0).await;
        return not_done;
    }
    let delay = backoff_s(&deps.retry, attempt);
    tracing::warn!(error = %text, elapsed_ms, retry_in_s = delay, "job failed; it will be retried");
    if end(deps, id, attempt, AttemptEnd::Requeued { error: text }).await {
        deps.metrics.jobs_retried.inc();
    }
    retry_later(deps, message, delay as i32).await;
    not_done
}

/// `base × 2^(attempt−1)`, capped.
pub fn backoff_s(retry: &RetrySettings, attempt: i32) -> u32 {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    retry
        .backoff_base_s
        .saturating_mul(1u32 << exponent)
        .min(retry.backoff_max_s)
}

async fn end(deps: &WorkerDeps, id: Uuid, attempt: i32, end: AttemptEnd) -> bool {
    match write(&deps.status, WriteOp::EndAttempt { id, attempt, end }).await {
        Ok(WriteOutcome::Applied(true)) => true,
        Ok(_) => {
            tracing::warn!(
                "the job is no longer this attempt's (claimed again or finished); result dropped"
            );
            false
        }
        Err(e) => {
            if e.is_retryable() {
                deps.db_gate.trip();
            }
            tracing::error!(error = %e, "cannot record the attempt's end; the message will come back");
            false
        }
    }
}

/// Deletes the message in the background: the job's outcome is already committed, so
/// the worker need not wait for SQS before taking its next job. A delete that never
/// happens (crash, SQS error) only means a duplicate delivery, which the claim drops.
async fn delete(deps: &WorkerDeps, message: &ReceivedMessage) {
    let batchers = deps.batchers.clone();
    let handle = message.receipt_handle.clone();
    let message_id = message.message_id.clone();
    actix::spawn(async move {
        match batchers.delete(&handle).await {
            Ok(()) => {}
            Err(e) if e.is_stale_receipt() => {
                tracing::info!(%message_id, error = %e, "message already gone when deleting (benign)");
            }
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "delete failed; the duplicate delivery will be dropped")
            }
        }
    });
}

/// Makes the message visible again after `seconds`; the attempt is not done.
async fn retry_later(deps: &WorkerDeps, message: &ReceivedMessage, seconds: i32) -> Processed {
    if let Err(e) = deps
        .batchers
        .set_visibility(&message.receipt_handle, seconds)
        .await
    {
        tracing::warn!(error = %e, "could not change visibility; the message returns after its visibility timeout");
    }
    Processed::NotDone
}

/// A message no attempt can fix: copy it to the DLQ with the reason, then delete it.
async fn poison(deps: &WorkerDeps, message: &ReceivedMessage, reason: &str) -> Processed {
    tracing::warn!(reason, body = %truncate(&message.body, 200), "poison message; moving it to the dead-letter queue");
    deps.metrics.jobs_dead_lettered.inc();
    to_dlq(deps, message, reason).await;
    Processed::Done
}

async fn to_dlq(deps: &WorkerDeps, message: &ReceivedMessage, reason: &str) {
    match deps.queue.send_poison_to_dlq(message, reason).await {
        Ok(()) => delete(deps, message).await,
        Err(e) => {
            // Not deleted: SQS's redrive takes it to the DLQ after its last receive.
            tracing::error!(error = %e, "could not copy the message to the dead-letter queue");
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}
