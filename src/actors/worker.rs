//! `ReportWorker`: runs one job (or one FIFO group's jobs, in order) at a time.
//!
//! Per message: parse → claim (StatusActor) → generate → record the end (compare-and-set
//! on the claimed attempt) → and only then delete, hand back, renew, or dead-letter the
//! message, as [`super::fate`] decides. From receipt until every message is settled, a
//! keepalive keeps all the messages the worker holds invisible and the running attempt's
//! row fresh, each on its own task, so a slow SQS never delays the row's heartbeat.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::fate::{self, AttemptResult, ClaimDecision, ClaimSeen, Decision, Group, MessageAction};
use super::registry::ActorSlot;
use super::run_estimate::RunEstimate;
use super::status::{self, StatusActor};
use super::waiting_room::CappedJob;
use crate::db::models::JobStatus;
use crate::db::reports::{AttemptEnd, ClaimOutcome, Heartbeat};
use crate::db::{DbError, DbGate};
use crate::metrics::Metrics;
use crate::queue::{limits, JobMessage, OutgoingMessage, ReceivedMessage, SqsBatchers, SqsQueue};
use crate::report::{GeneratorError, JobContext, ProgressReporter, ReportGenerator};

// A worker's messages: the poller hands it work (`RunJobs`), health pings it, and it
// tells the poller when it is free (`WorkerIdle`, handled by the poller).

/// Hands a worker the messages it must run, in order (several only for one FIFO group).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct RunJobs {
    pub messages: Vec<ReceivedMessage>,
}

/// A worker tells the poller it has finished its messages and is free.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct WorkerIdle {
    pub worker: usize,
    /// Jobs over their user's cap whose turn is near: the poller's waiting room holds
    /// their messages from here on.
    pub capped: Vec<CappedJob>,
    /// Users whose job ended here (its end recorded or not): a slot each, for the room.
    pub freed_users: Vec<i64>,
}

impl WorkerIdle {
    /// Free, with nothing for the waiting room.
    fn plain(worker: usize) -> Self {
        Self {
            worker,
            capped: Vec::new(),
            freed_users: Vec::new(),
        }
    }
}

/// Asks a worker whether its mailbox moves (health); answered with nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Ping;

/// What every worker of a process shares.
pub(crate) struct WorkerDeps {
    pub status: Addr<StatusActor>,
    pub queue: SqsQueue,
    pub batchers: SqsBatchers,
    pub generator: Arc<dyn ReportGenerator>,
    /// The fate rules' limits (attempts, receives, visibility timeout, FIFO, backoff).
    pub limits: fate::Limits,
    /// Becomes true when the shutdown grace period is over: running jobs are released.
    pub abort: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// Tripped when a write fails because the database is away.
    pub db_gate: DbGate,
    /// How long an attempt runs lately: sizes how long a job released at its user's
    /// cap stays away. Every worker's finished attempts feed it.
    pub run_estimate: Arc<RunEstimate>,
}

/// One slot of the worker pool.
pub(crate) struct ReportWorker {
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
    pub(crate) fn new(
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
            self.poller.do_send(WorkerIdle::plain(self.index));
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
                .map(|ran, worker, ctx| {
                    worker.busy_since = None;
                    worker.slot.set_job(None);
                    worker.poller.do_send(WorkerIdle {
                        worker: worker.index,
                        capped: ran.capped,
                        freed_users: ran.freed_users,
                    });
                    if let Some(cause) = ran.crash {
                        // Treat a panic in the job like a crashed worker: the supervisor
                        // restarts it with fresh state, and the restart is counted.
                        worker.stop_cause = Some(cause);
                        ctx.stop();
                    }
                }),
        );
    }
}

/// What a worker's run of a receive's messages leaves for the poller.
#[derive(Default)]
pub(crate) struct Ran {
    /// Why the generator panicked, if it did (the worker then restarts).
    pub crash: Option<String>,
    /// Jobs to wait in the poller's waiting room.
    pub capped: Vec<CappedJob>,
    /// Users whose jobs ended here.
    pub freed_users: Vec<i64>,
}

/// Runs a receive's messages one after another (several only for one FIFO group). When
/// one stops the group, the rest are handed back behind it, so none runs out of order.
pub(crate) async fn run_in_order(
    deps: &WorkerDeps,
    slot: &ActorSlot,
    messages: Vec<ReceivedMessage>,
) -> Ran {
    let keepalive = Arc::new(Keepalive::start(deps, &messages));
    let mut ran = Ran::default();
    for (index, message) in messages.iter().enumerate() {
        let outcome = process_message(deps, slot, &keepalive, message).await;
        if outcome.panicked {
            ran.crash = Some("the report generator panicked".to_string());
        }
        ran.freed_users.extend(outcome.freed_user);
        ran.capped.extend(outcome.capped);
        if outcome.group == Group::Stop {
            let delay_s = outcome.rest_delay_s;
            for rest in &messages[index + 1..] {
                let action = fate::hand_back(delay_s, rest.receive_count, &deps.limits);
                carry_out(deps, &keepalive, rest, None, action).await;
            }
            break;
        }
    }
    ran
}

/// What became of one message, for the rest of its group.
struct Outcome {
    group: Group,
    /// When the group stops: the delay the rest wait, behind this message.
    rest_delay_s: u32,
    /// FIFO: run the job again here after this delay (the message stays held).
    run_again_after_s: Option<u32>,
    panicked: bool,
    /// Over its user's cap, to wait in the poller's waiting room.
    capped: Option<CappedJob>,
    /// The user whose job ended here (its slot is free again).
    freed_user: Option<i64>,
}

impl Outcome {
    fn of(decision: &Decision) -> Self {
        let rest_delay_s = match decision.message {
            MessageAction::Hide { delay_s }
            | MessageAction::Renew { delay_s }
            | MessageAction::RunAgainAfter { delay_s } => delay_s,
            MessageAction::Delete
            | MessageAction::DeadLetter { .. }
            | MessageAction::WaitForSlot => 0,
        };
        let run_again_after_s = match decision.message {
            MessageAction::RunAgainAfter { delay_s } => Some(delay_s),
            _ => None,
        };
        Self {
            group: decision.group,
            rest_delay_s,
            run_again_after_s,
            panicked: false,
            capped: None,
            freed_user: None,
        }
    }

    /// Settled with no delay for the rest of the group.
    fn moving_on(group: Group, panicked: bool) -> Self {
        Self {
            group,
            rest_delay_s: 0,
            run_again_after_s: None,
            panicked,
            capped: None,
            freed_user: None,
        }
    }

    /// The message was left to come back by itself (end not recorded): the group waits
    /// for it.
    fn left_alone(limits: &fate::Limits) -> Self {
        Self {
            group: Group::Stop,
            rest_delay_s: limits.visibility_timeout_s,
            run_again_after_s: None,
            panicked: false,
            capped: None,
            freed_user: None,
        }
    }
}

/// Processes one message from start to end. Never panics; every failure is logged and
/// left where a person can see it (the row's `last_error`, the DLQ).
async fn process_message(
    deps: &WorkerDeps,
    slot: &ActorSlot,
    keepalive: &Arc<Keepalive>,
    message: &ReceivedMessage,
) -> Outcome {
    let span = tracing::info_span!(
        "job",
        report_id = tracing::field::Empty,
        message_id = %message.message_id,
        receive = message.receive_count,
        attempt = tracing::field::Empty,
    );
    async move {
        let id = match JobMessage::parse(&message.body) {
            Ok(job) => job.id,
            Err(reason) => {
                let action = MessageAction::DeadLetter { reason };
                carry_out(deps, keepalive, message, None, action).await;
                return Outcome::moving_on(Group::Continue, false);
            }
        };
        tracing::Span::current().record("report_id", tracing::field::display(id));
        let mut panicked = false;
        loop {
            match claim_and_run(deps, slot, keepalive, message, id).await {
                Step::Again {
                    delay_s,
                    panicked: this_time,
                } => {
                    panicked |= this_time;
                    if !wait_or_abort(deps, delay_s).await {
                        // Shutdown while waiting to run again: the row is `in-queue`.
                        let action = fate::hand_back(0, message.receive_count, &deps.limits);
                        carry_out(deps, keepalive, message, Some(id), action).await;
                        return Outcome::moving_on(Group::Stop, panicked);
                    }
                }
                Step::Done(mut outcome) => {
                    outcome.panicked |= panicked;
                    return outcome;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// After one claim (and run): done with the message, or (FIFO) run it again later.
enum Step {
    Done(Outcome),
    /// FIFO: the failure was recorded; run the job again here after `delay_s`.
    Again {
        delay_s: u32,
        panicked: bool,
    },
}

async fn claim_and_run(
    deps: &WorkerDeps,
    slot: &ActorSlot,
    keepalive: &Arc<Keepalive>,
    message: &ReceivedMessage,
    id: Uuid,
) -> Step {
    let claimed = match claim_or_settle(deps, keepalive, message, id).await {
        Ok(claimed) => claimed,
        Err(outcome) => return Step::Done(outcome),
    };
    let attempt = claimed.attempt;
    tracing::Span::current().record("attempt", attempt);
    tracing::debug!("job claimed");
    if attempt == 1 {
        let waited = (chrono::Utc::now() - claimed.created_at)
            .num_microseconds()
            .unwrap_or(0);
        deps.metrics.queue_wait.observe(waited.max(0) as f64 / 1e6);
    }
    let progress = ProgressReporter::default();
    slot.set_job(Some(id));
    keepalive.set_job(Some(RunningAttempt {
        id,
        attempt,
        progress: progress.clone(),
    }));
    deps.metrics.jobs_in_flight.inc();
    let started = Instant::now();
    let job = JobContext {
        report_id: id,
        attempt,
        payload: claimed.payload,
        progress,
    };
    let (result, panicked) =
        run_attempt(deps, job, keepalive.cancel_signal(), claimed.max_runtime).await;
    deps.metrics.jobs_in_flight.dec();
    note_run_time(deps, &result, started.elapsed());
    let decision = fate::after_attempt(
        &result,
        claimed.failures,
        message.receive_count,
        &deps.limits,
    );
    // The row's heartbeat goes on until the end is recorded.
    let (mut outcome, recorded) =
        settle(deps, keepalive, message, id, Some(attempt), decision).await;
    keepalive.set_job(None);
    slot.set_job(None);
    outcome.freed_user = claimed.user_id;
    match outcome.run_again_after_s {
        Some(delay_s) if recorded => Step::Again { delay_s, panicked },
        _ => {
            outcome.panicked = panicked;
            Step::Done(outcome)
        }
    }
}

/// A job claimed for an attempt, with what running it needs.
struct Claimed {
    attempt: i32,
    /// Failures counted before this attempt.
    failures: i32,
    payload: serde_json::Value,
    created_at: chrono::DateTime<chrono::Utc>,
    /// Longest run of this attempt (`maxRuntimeS`), if any.
    max_runtime: Option<Duration>,
    /// The report's user.
    user_id: Option<i64>,
}

/// Claims the job; when the fate rules say not to run it (finished, held elsewhere, out
/// of tries, the database away), settles the message and returns the outcome instead.
async fn claim_or_settle(
    deps: &WorkerDeps,
    keepalive: &Arc<Keepalive>,
    message: &ReceivedMessage,
    id: Uuid,
) -> Result<Claimed, Outcome> {
    let stale_after_s = fate::stale_after_s(deps.limits.visibility_timeout_s);
    let cap = deps.limits.max_in_flight_per_user;
    let claim = match status::claim(&deps.status, id, stale_after_s, cap).await {
        Ok(claim) => Some(claim),
        Err(e) => {
            note_db_error(deps, &e);
            tracing::warn!(error = %e, "cannot claim the job; handing the message back (not counted)");
            None
        }
    };
    if claim == Some(ClaimOutcome::CancelledNow) {
        tracing::info!("job cancelled at its claim (a pending cancel, or not started by notAfter)");
        deps.metrics.jobs_cancelled.inc();
    }
    let seen = claim
        .as_ref()
        .map_or(ClaimSeen::Unavailable, |c| seen_of(c, id));
    let run_estimate = deps.run_estimate.get();
    if let ClaimDecision::Settle(decision) =
        fate::on_claim(&seen, message.receive_count, run_estimate, &deps.limits)
    {
        log_settle(&seen, &decision, run_estimate);
        let attempt = match seen {
            ClaimSeen::Claimed { attempt, .. } => Some(attempt),
            _ => None,
        };
        // A job sent to the waiting room is counted there, when the room takes it.
        let waits = decision.message == MessageAction::WaitForSlot;
        if matches!(seen, ClaimSeen::UserAtCap { .. }) && !waits {
            deps.metrics.fairness_releases.inc();
        }
        let (mut outcome, _) = settle(deps, keepalive, message, id, attempt, decision).await;
        if let (true, Some(ClaimOutcome::UserAtCap { ahead, user_id })) = (waits, claim) {
            outcome.capped = Some(CappedJob {
                message: message.clone(),
                user_id,
                ahead,
            });
        }
        return Err(outcome);
    }
    match claim {
        Some(ClaimOutcome::Claimed {
            attempt,
            failures,
            payload,
            created_at,
            max_runtime_s,
            user_id,
        }) => Ok(Claimed {
            user_id,
            attempt,
            failures,
            payload,
            created_at,
            max_runtime: max_runtime_s
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }),
        // `on_claim` runs claimed jobs only; anything else waits for its redelivery.
        _ => {
            keepalive.forget(&message.receipt_handle);
            Err(Outcome::left_alone(&deps.limits))
        }
    }
}

fn seen_of(claim: &ClaimOutcome, id: Uuid) -> ClaimSeen {
    match claim {
        ClaimOutcome::Claimed {
            attempt, failures, ..
        } => ClaimSeen::Claimed {
            attempt: *attempt,
            failures: *failures,
        },
        ClaimOutcome::AlreadyFinished(_) | ClaimOutcome::CancelledNow => ClaimSeen::AlreadyFinished,
        ClaimOutcome::HeldElsewhere => ClaimSeen::HeldElsewhere,
        ClaimOutcome::NotFound => ClaimSeen::NotFound(id),
        ClaimOutcome::UserAtCap { ahead, .. } => ClaimSeen::UserAtCap { ahead: *ahead },
    }
}

/// Logs a claim settled without running. A release at the user's cap is at debug level:
/// a busy user's backlog makes many, and the hot path must not flood the log.
fn log_settle(seen: &ClaimSeen, decision: &Decision, run_estimate: Duration) {
    if let ClaimSeen::UserAtCap { ahead } = seen {
        tracing::debug!(
            ahead,
            run_estimate_ms = run_estimate.as_millis() as u64,
            action = ?decision.message,
            "released at the user's cap until about its turn"
        );
    } else {
        tracing::info!(claim = ?seen, action = ?decision.message, "settling the message without running the job");
    }
}

/// Logs an attempt's result and feeds its run time to the run estimate. Completions and
/// failures only: a shutdown or cancel cuts a run short, and host trouble says nothing
/// about the work, so their times would skew how long jobs take.
fn note_run_time(deps: &WorkerDeps, result: &AttemptResult, took: Duration) {
    let elapsed_ms = took.as_millis() as u64;
    match result {
        AttemptResult::Completed { .. } => {
            deps.run_estimate.record(took);
            tracing::info!(elapsed_ms, "job completed");
            deps.metrics.job_duration.observe(elapsed_ms as f64 / 1e3);
            deps.db_gate.host_ok();
        }
        AttemptResult::Failed { error, permanent } => {
            deps.run_estimate.record(took);
            tracing::warn!(error = %error, permanent, elapsed_ms, "attempt failed")
        }
        AttemptResult::HostTrouble { error, pause_s } => {
            tracing::warn!(error = %error, pause_s, "host trouble; the job goes back uncounted")
        }
        AttemptResult::Interrupted => {
            tracing::warn!("shutdown grace period over; releasing the running job")
        }
        AttemptResult::Cancelled => {
            tracing::info!(elapsed_ms, "job cancelled while it ran; generator stopped")
        }
    }
}

/// Runs the generator on a task of its own (a panic in user code becomes a JoinError,
/// not a dead worker) until it ends, shutdown's grace period does, a heartbeat brings a
/// cancel, or it runs past `max_runtime` (a failure, retried like any other). Returns
/// the result and whether the generator panicked.
async fn run_attempt(
    deps: &WorkerDeps,
    job: JobContext,
    mut cancel: watch::Receiver<bool>,
    max_runtime: Option<Duration>,
) -> (AttemptResult, bool) {
    let (report_id, attempt) = (job.report_id, job.attempt);
    let mut generation = tokio::spawn(deps.generator.generate(job));
    let mut abort = deps.abort.clone();
    let over_time = async {
        match max_runtime {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    // Biased: a generator that finished in the same poll as a stop keeps its result.
    let stopped = tokio::select! {
        biased;
        joined = &mut generation => Ok(joined),
        () = aborted(&mut abort) => Err(AttemptResult::Interrupted),
        () = aborted(&mut cancel) => Err(AttemptResult::Cancelled),
        () = over_time => Err(AttemptResult::Failed {
            error: format!(
                "timed out after {} s (maxRuntimeS)",
                max_runtime.map_or(0, |limit| limit.as_secs())
            ),
            permanent: false,
        }),
    };
    let joined = match stopped {
        Ok(joined) => joined,
        Err(result) => {
            generation.abort();
            let _ = generation.await;
            deps.generator.discard(report_id, attempt).await;
            return (result, false);
        }
    };
    match joined {
        Ok(Ok(report)) => (
            AttemptResult::Completed {
                report_url: report.report_url,
                file: report.file,
            },
            false,
        ),
        Ok(Err(GeneratorError::Environment(error))) => {
            let pause = deps.db_gate.pause_for_host_trouble(&error);
            let pause_s = u32::try_from(pause.as_secs()).unwrap_or(u32::MAX).max(1);
            (AttemptResult::HostTrouble { error, pause_s }, false)
        }
        Ok(Err(error)) => {
            let permanent = !error.is_retryable();
            let error = error.to_string();
            (AttemptResult::Failed { error, permanent }, false)
        }
        Err(join) => {
            let panicked = join.is_panic();
            let error = if panicked {
                "the generator panicked"
            } else {
                "the generator was cancelled"
            };
            let result = AttemptResult::Failed {
                error: error.into(),
                permanent: false,
            };
            (result, panicked)
        }
    }
}

/// Resolves when the flag turns true (shutdown's grace period is over, or a cancel came).
async fn aborted(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|aborted| *aborted).await.is_err() {
        // The sender is gone: the process is going away; never resolve from here.
        std::future::pending::<()>().await;
    }
}

/// Waits `delay_s` unless shutdown's grace period ends first; false when it did.
async fn wait_or_abort(deps: &WorkerDeps, delay_s: u32) -> bool {
    let mut abort = deps.abort.clone();
    if *abort.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(u64::from(delay_s))) => true,
        () = aborted(&mut abort) => false,
    }
}

/// Records the decision's end (if any), then carries out its message action. When the
/// end cannot be recorded, the message is left alone: it comes back after its
/// visibility timeout and its redelivery settles it.
async fn settle(
    deps: &WorkerDeps,
    keepalive: &Arc<Keepalive>,
    message: &ReceivedMessage,
    id: Uuid,
    attempt: Option<i32>,
    mut decision: Decision,
) -> (Outcome, bool) {
    if let (Some(end), Some(attempt)) = (decision.end.clone(), attempt) {
        let Some(status) = record_end(deps, id, attempt, end.clone()).await else {
            keepalive.forget(&message.receipt_handle);
            return (Outcome::left_alone(&deps.limits), false);
        };
        if status == JobStatus::Cancelled && end != AttemptEnd::Cancelled {
            // A hand-back that met a pending cancel: the job is over, not waiting.
            tracing::info!("the job was cancelled while it ran; its message goes");
            decision = fate::cancelled_at_end();
            count_end(deps, &AttemptEnd::Cancelled);
        } else {
            count_end(deps, &end);
        }
    }
    let outcome = Outcome::of(&decision);
    carry_out(deps, keepalive, message, Some(id), decision.message).await;
    (outcome, true)
}

fn count_end(deps: &WorkerDeps, end: &AttemptEnd) {
    match end {
        AttemptEnd::Completed { .. } => deps.metrics.jobs_completed.inc(),
        AttemptEnd::Requeued { .. } => deps.metrics.jobs_retried.inc(),
        AttemptEnd::Failed { .. } | AttemptEnd::GaveUp { .. } => deps.metrics.jobs_failed.inc(),
        AttemptEnd::Cancelled => deps.metrics.jobs_cancelled.inc(),
        AttemptEnd::Released { .. } => {}
    }
}

/// Longest time a worker keeps trying to record an attempt's end while the database is
/// away or the row is locked elsewhere (its keepalive holds the message meanwhile).
const RECORD_END_FOR: Duration = Duration::from_secs(15 * 60);

/// Records an attempt's end, retrying transient failures (database away, row locked)
/// with backoff; true when recorded. After shutdown's grace period, one try only.
async fn record_end(
    deps: &WorkerDeps,
    id: Uuid,
    attempt: i32,
    end: AttemptEnd,
) -> Option<JobStatus> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match status::end_attempt(&deps.status, id, attempt, end.clone()).await {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {
                tracing::warn!("the job is no longer this attempt's (claimed again or finished); result dropped");
                return None;
            }
            Err(e) => {
                note_db_error(deps, &e);
                let give_up =
                    !e.is_retryable() || *deps.abort.borrow() || started.elapsed() > RECORD_END_FOR;
                if give_up {
                    tracing::error!(error = %e, "cannot record the attempt's end; the message will come back");
                    return None;
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot record the attempt's end yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A database error that says the database is away pauses this process's receives.
fn note_db_error(deps: &WorkerDeps, error: &DbError) {
    if error.is_database_away() {
        deps.db_gate.trip();
    }
}

/// Does what the fate rules decided with a message. The keepalive stops renewing it
/// first (a delete keeps it renewed until SQS confirms).
async fn carry_out(
    deps: &WorkerDeps,
    keepalive: &Arc<Keepalive>,
    message: &ReceivedMessage,
    id: Option<Uuid>,
    action: MessageAction,
) {
    match action {
        MessageAction::Delete => delete_in_background(deps, keepalive, message),
        // Held on (the keepalive keeps renewing it) until the job runs again here.
        MessageAction::RunAgainAfter { .. } => {}
        // The poller's waiting room holds it from here on (see `WorkerIdle::capped`).
        MessageAction::WaitForSlot => keepalive.forget(&message.receipt_handle),
        MessageAction::Hide { delay_s } => {
            keepalive.forget(&message.receipt_handle);
            hide(deps, message, delay_s).await;
        }
        MessageAction::Renew { delay_s } => {
            keepalive.forget(&message.receipt_handle);
            renew(deps, message, id, delay_s).await;
        }
        MessageAction::DeadLetter { reason } => {
            tracing::warn!(reason = %reason, body = %truncate(&message.body, 200), "moving the message to the dead-letter queue");
            deps.metrics.jobs_dead_lettered.inc();
            match deps.queue.send_poison_to_dlq(message, &reason).await {
                Ok(()) => delete_in_background(deps, keepalive, message),
                Err(e) => {
                    // Not deleted: it comes back; the row (if any) says `failed` already,
                    // so its redelivery is dropped; SQS's redrive takes a poison one.
                    keepalive.forget(&message.receipt_handle);
                    tracing::error!(error = %e, "could not copy the message to the dead-letter queue");
                }
            }
        }
    }
}

/// Makes the message visible again after `seconds`.
async fn hide(deps: &WorkerDeps, message: &ReceivedMessage, seconds: u32) {
    let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
    if let Err(e) = deps
        .batchers
        .set_visibility(&message.receipt_handle, seconds)
        .await
    {
        tracing::warn!(error = %e, "could not change visibility; the message returns after its visibility timeout");
    }
}

/// Replaces the message with a fresh copy (its receive count starts over), then deletes
/// it. A crash in between leaves two copies, which the claim tells apart.
async fn renew(deps: &WorkerDeps, message: &ReceivedMessage, id: Option<Uuid>, delay_s: u32) {
    let Some(id) = id else {
        return hide(deps, message, delay_s).await;
    };
    let delay = i32::try_from(delay_s).unwrap_or(i32::MAX);
    let copy = OutgoingMessage::renewal(id, message.user_id, message.group_id.clone(), delay);
    match deps.batchers.send(copy).await {
        Ok(()) => {
            tracing::info!(
                receives = message.receive_count,
                "message renewed before SQS's redrive count"
            );
            if let Err(e) = deps.batchers.delete(&message.receipt_handle).await {
                tracing::warn!(error = %e, "renewed message not deleted; its duplicate is dropped by the claim");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not renew the message; hiding it instead");
            hide(deps, message, delay_s).await;
        }
    }
}

/// Deletes the message in the background: the job's outcome is already committed, so
/// the worker need not wait for SQS before taking its next job. The keepalive goes on
/// renewing the message until the delete is done. A delete that never happens (crash,
/// SQS error) only means a duplicate delivery, which the claim drops.
fn delete_in_background(deps: &WorkerDeps, keepalive: &Arc<Keepalive>, message: &ReceivedMessage) {
    let batchers = deps.batchers.clone();
    let handle = message.receipt_handle.clone();
    let message_id = message.message_id.clone();
    let keepalive = keepalive.clone();
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
        keepalive.forget(&handle);
    });
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// Keeps what a worker holds alive: every held message's visibility, and the running
/// attempt's row (`updated_at`), renewed every third of the visibility timeout on two
/// independent tasks. Dropped with the last reference (the worker's, or a background
/// delete's), which stops both tasks.
pub(crate) struct Keepalive {
    /// Receipt handles of the messages still held.
    held: Arc<Mutex<Vec<String>>>,
    /// The attempt whose row is touched, while one runs.
    job: Arc<Mutex<Option<RunningAttempt>>>,
    /// Turns true when a heartbeat of the current attempt finds a cancel request.
    cancel: Arc<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Keepalive {
    fn start(deps: &WorkerDeps, messages: &[ReceivedMessage]) -> Self {
        let held = Arc::new(Mutex::new(
            messages
                .iter()
                .map(|m| m.receipt_handle.clone())
                .collect::<Vec<_>>(),
        ));
        let job = Arc::new(Mutex::new(None));
        let vt = deps.limits.visibility_timeout_s;
        let beat = Duration::from_secs(u64::from(fate::beat_interval_s(vt)));
        let visibility = tokio::spawn(keep_messages_invisible(
            deps.batchers.clone(),
            held.clone(),
            beat,
            vt,
        ));
        let cancel = Arc::new(watch::channel(false).0);
        let rows = tokio::spawn(keep_row_fresh(
            deps.status.clone(),
            job.clone(),
            cancel.clone(),
            beat,
        ));
        Self {
            held,
            job,
            cancel,
            tasks: vec![visibility, rows],
        }
    }

    fn set_job(&self, job: Option<RunningAttempt>) {
        let mut current = lock(&self.job);
        *current = job;
        // A new attempt starts without the previous one's cancel.
        self.cancel.send_replace(false);
    }

    /// Turns true when the current attempt is to be cancelled.
    fn cancel_signal(&self) -> watch::Receiver<bool> {
        self.cancel.subscribe()
    }

    /// Stops renewing one message (it was settled or handed back).
    fn forget(&self, receipt_handle: &str) {
        lock(&self.held).retain(|h| h != receipt_handle);
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn keep_messages_invisible(
    batchers: SqsBatchers,
    held: Arc<Mutex<Vec<String>>>,
    beat: Duration,
    visibility_timeout_s: u32,
) {
    let received = Instant::now();
    let vt = Duration::from_secs(u64::from(visibility_timeout_s));
    let seconds = i32::try_from(visibility_timeout_s).unwrap_or(i32::MAX);
    loop {
        tokio::time::sleep(beat).await;
        if received.elapsed() + vt >= limits::MAX_INVISIBLE {
            // SQS refuses; the message comes back and its claim sees the live row.
            continue;
        }
        let handles = lock(&held).clone();
        let calls = handles.iter().map(|h| batchers.set_visibility(h, seconds));
        for result in futures_util::future::join_all(calls).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "visibility heartbeat failed");
            }
        }
    }
}

/// Touches the running attempt's row every `beat`, and raises `cancel` when the answer
/// says someone asked to cancel it: the heartbeat the worker sends anyway carries the
/// request, so a cancel from any process costs no extra query.
async fn keep_row_fresh(
    status: Addr<StatusActor>,
    job: Arc<Mutex<Option<RunningAttempt>>>,
    cancel: Arc<watch::Sender<bool>>,
    beat: Duration,
) {
    loop {
        tokio::time::sleep(beat).await;
        let Some(current) = lock(&job).clone() else {
            continue;
        };
        let (id, attempt) = (current.id, current.attempt);
        let progress = current.progress.take_unsent();
        let stored = progress.as_ref().and_then(|p| serde_json::to_value(p).ok());
        match status::touch(&status, id, attempt, stored).await {
            Ok(Heartbeat::CancelRequested) => {
                let still_current = lock(&job).as_ref().is_some_and(|j| j.is(id, attempt));
                if still_current {
                    tracing::info!(report_id = %id, attempt, "cancel requested; stopping the job");
                    cancel.send_replace(true);
                }
            }
            Ok(Heartbeat::Alive | Heartbeat::Gone) => {}
            Err(e) => {
                if let Some(progress) = &progress {
                    current.progress.unsent_again(progress);
                }
                tracing::warn!(error = %e, "row heartbeat failed");
            }
        }
    }
}

/// The attempt a worker runs: its row is touched, its progress carried, every beat.
#[derive(Clone)]
struct RunningAttempt {
    id: Uuid,
    attempt: i32,
    progress: ProgressReporter,
}

impl RunningAttempt {
    fn is(&self, id: Uuid, attempt: i32) -> bool {
        self.id == id && self.attempt == attempt
    }
}
