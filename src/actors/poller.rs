//! `PollerActor`: long-polls SQS for as many messages as there are idle workers (at
//! most 10) and hands each to a worker at once, so no message waits invisible in a local
//! buffer. Up to three receives run at once when enough workers are idle (one call
//! returns at most 10 messages). With no idle worker it does not poll. SQS errors back
//! off exponentially (capped) and polling resumes by itself when SQS answers again.
//!
//! Jobs a worker found over their user's cap with their turn near wait in the poller's
//! [`WaitingRoom`], their messages kept invisible here; an idle worker takes one of them
//! (when a slot of its user freed) before the poller asks SQS for more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::fate::{self, Screened};
use super::registry::ActorSlot;
use super::run_estimate::RunEstimate;
use super::waiting_room::{CappedJob, WaitingRoom};
use super::worker::{ReportWorker, RunJobs, WorkerIdle};
use crate::config::SqsSettings;
use crate::db::DbGate;
use crate::metrics::Metrics;
use crate::queue::{limits, ReceivedMessage, SqsBatchers, SqsQueue};

// The poller's messages.

/// Stops the poller's receives (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct StopPolling;

/// Figures of the poller for the health endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct PollerStats {
    pub idle_workers: usize,
    pub busy_workers: usize,
    pub polling: bool,
    pub stopped: bool,
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
    /// Seconds since the last receive returned successfully.
    pub last_receive_age_s: Option<f64>,
    /// Seconds since the poll loop last ran.
    pub last_tick_age_s: Option<f64>,
    pub received: u64,
    /// Receives are paused because the database is away.
    pub waiting_for_database: bool,
    /// Jobs over their user's cap waiting here for a slot.
    pub waiting_at_cap: usize,
}

/// Asks the poller for its figures.
#[derive(Message)]
#[rtype(result = "PollerStats")]
pub(crate) struct GetPollerStats;

/// Most receives out at once (each for up to 10 messages).
const MAX_RECEIVES_IN_FLIGHT: usize = 3;

/// Longest pause between two receives after repeated SQS errors.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Feeds the worker pool from SQS.
pub(crate) struct PollerActor {
    queue: SqsQueue,
    batchers: SqsBatchers,
    /// The pool, by index.
    workers: Vec<Addr<ReportWorker>>,
    /// Indexes of workers with nothing to do.
    idle: Vec<usize>,
    /// Most messages per receive (`sqs.receive_batch`).
    receive_batch: usize,
    /// Long-poll wait (`sqs.wait_time_s`).
    wait_time_s: i32,
    /// FIFO: a receive's messages of one group go to one worker, in order.
    fifo: bool,
    /// Receives in flight.
    receives_in_flight: usize,
    /// Messages those receives asked for: workers they may still claim.
    asked: usize,
    /// Shutdown began: no new receives; whatever an in-flight receive brings is released.
    stopping: bool,
    /// When the next receive may start (error backoff).
    paused_until: Option<Instant>,
    consecutive_errors: u32,
    last_error: Option<String>,
    last_receive: Option<Instant>,
    last_tick: Instant,
    received: u64,
    metrics: Arc<Metrics>,
    /// This actor's entry in the health registry.
    slot: ActorSlot,
    /// Receives pause while the database is away.
    db_gate: DbGate,
    /// A database probe is running.
    probing: bool,
    /// Jobs over their user's cap, held until a slot of their user frees.
    room: WaitingRoom,
    /// The queue's visibility timeout: how long a renewal keeps a waiting job's message
    /// invisible.
    visibility_timeout: Duration,
    /// What screening a received job of a user with waiting jobs needs.
    screening: Screening,
}

/// The fate rules' limits and the workers' run estimate, for
/// [`fate::screen_for_waiting_user`].
pub(crate) struct Screening {
    pub limits: fate::Limits,
    pub run_estimate: Arc<RunEstimate>,
}

impl PollerActor {
    pub(crate) fn new(
        queue: SqsQueue,
        batchers: SqsBatchers,
        settings: &SqsSettings,
        metrics: Arc<Metrics>,
        slot: ActorSlot,
        db_gate: DbGate,
        screening: Screening,
    ) -> Self {
        Self {
            queue,
            batchers,
            workers: Vec::new(),
            idle: Vec::new(),
            receive_batch: (settings.receive_batch as usize).clamp(1, limits::MAX_BATCH),
            wait_time_s: settings.wait_time_s as i32,
            fifo: settings.fifo,
            receives_in_flight: 0,
            asked: 0,
            stopping: false,
            paused_until: None,
            consecutive_errors: 0,
            last_error: None,
            last_receive: None,
            last_tick: Instant::now(),
            received: 0,
            metrics,
            slot,
            db_gate,
            probing: false,
            room: WaitingRoom::default(),
            visibility_timeout: Duration::from_secs(u64::from(settings.visibility_timeout_s)),
            screening,
        }
    }

    /// Gives the poller its workers (they need the poller's address first).
    pub(crate) fn set_workers(&mut self, workers: Vec<Addr<ReportWorker>>) {
        self.idle = (0..workers.len()).rev().collect();
        self.workers = workers;
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        self.last_tick = Instant::now();
        self.slot.heartbeat();
        // Waiting jobs are claimed like received ones: not while the database is away or
        // the host in trouble.
        let can_claim = !self.db_gate.is_down() && self.db_gate.host_paused_until().is_none();
        if !self.stopping && can_claim {
            self.hand_out_waiting();
        }
        // Every change of the room is followed by a poll (or the next tick's).
        self.metrics.idle_workers.set(self.idle.len() as i64);
        self.metrics.waiting_at_cap.set(self.room.len() as i64);
        if self.stopping || self.idle.len() <= self.asked {
            return;
        }
        if self.db_gate.is_down() {
            if !self.probing {
                self.probing = true;
                let gate = self.db_gate.clone();
                ctx.spawn(async move { gate.probe().await }.into_actor(self).map(
                    |back, poller, ctx| {
                        poller.probing = false;
                        if back {
                            poller.poll(ctx);
                        }
                    },
                ));
            }
            return;
        }
        if self.db_gate.host_paused_until().is_some() {
            // Host trouble (too many open files, disk full): the 1 s tick resumes.
            return;
        }
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return;
            }
            self.paused_until = None;
        }
        // Several receives may be out at once, each for workers no other receive has
        // asked for; an extra one only when it can ask for a full batch, so an idle
        // queue is not polled by many small receives.
        let available = self.idle.len() - self.asked;
        if self.receives_in_flight >= MAX_RECEIVES_IN_FLIGHT
            || (self.receives_in_flight > 0 && available < self.receive_batch)
        {
            return;
        }
        let asked = available.min(self.receive_batch);
        self.asked += asked;
        self.receives_in_flight += 1;
        let queue = self.queue.clone();
        let wait = self.wait_time_s;
        ctx.spawn(
            async move { queue.receive(asked as i32, wait, None).await }
                .into_actor(self)
                .map(move |result, poller, ctx| {
                    poller.asked -= asked;
                    poller.receives_in_flight -= 1;
                    poller.last_tick = Instant::now();
                    match result {
                        Ok(messages) => {
                            if poller.consecutive_errors > 0 {
                                tracing::info!(after_errors = poller.consecutive_errors, "SQS answers again");
                            }
                            poller.consecutive_errors = 0;
                            poller.last_error = None;
                            poller.last_receive = Some(Instant::now());
                            poller.received += messages.len() as u64;
                            poller.hand_out(messages);
                            poller.poll(ctx);
                        }
                        Err(e) => {
                            poller.consecutive_errors += 1;
                            let delay = error_backoff(poller.consecutive_errors);
                            tracing::warn!(error = %e, errors = poller.consecutive_errors, retry_in_ms = delay.as_millis() as u64, "receive failed");
                            poller.last_error = Some(e.to_string());
                            poller.paused_until = Some(Instant::now() + delay);
                            ctx.run_later(delay, |poller, ctx| poller.poll(ctx));
                        }
                    }
                }),
        );
    }

    /// Gives waiting jobs whose user freed a slot (or whose line is due for a try) to the
    /// idle workers no receive has asked for.
    fn hand_out_waiting(&mut self) {
        let now = Instant::now();
        while self.idle.len() > self.asked {
            let Some(message) = self.room.next_to_try(now) else {
                break;
            };
            if let Some(worker) = self.idle.pop() {
                self.workers[worker].do_send(RunJobs {
                    messages: vec![message],
                });
            }
        }
    }

    /// Keeps the received jobs of users with jobs waiting in the room out of the way
    /// (into the room behind them, or back to SQS), without a claim; returns the rest,
    /// for the workers.
    fn screen(&mut self, messages: Vec<ReceivedMessage>) -> Vec<ReceivedMessage> {
        let run_estimate = self.screening.run_estimate.get();
        let mut to_claim = Vec::with_capacity(messages.len());
        for message in messages {
            let waiting_user = message
                .user_id
                .map(|user| (user, self.room.waiting(user)))
                .filter(|(_, waiting)| *waiting > 0);
            let Some((user_id, waiting)) = waiting_user else {
                to_claim.push(message);
                continue;
            };
            let limits = &self.screening.limits;
            match fate::screen_for_waiting_user(
                waiting,
                message.receive_count,
                run_estimate,
                limits,
            ) {
                Screened::Claim => to_claim.push(message),
                Screened::Wait if self.room.has_room() => {
                    // Just received: invisible for a visibility timeout already.
                    let now = Instant::now();
                    let job = CappedJob {
                        message,
                        user_id,
                        // Behind every job of its user already waiting.
                        ahead: u32::MAX,
                    };
                    self.room.admit(job, now, now + self.visibility_timeout);
                    self.metrics.fairness_waits.inc();
                }
                // A full room: the claim decides.
                Screened::Wait => to_claim.push(message),
                Screened::Release { delay_s } => {
                    self.metrics.fairness_releases.inc();
                    self.set_visibility(message.receipt_handle, u64::from(delay_s));
                }
            }
        }
        to_claim
    }

    /// Takes jobs a worker found over their user's cap into the room, each message
    /// renewed for a visibility timeout from now; when the room is full, the message
    /// goes back to SQS instead, and when the poller stops, at once.
    fn admit_waiting(&mut self, capped: Vec<CappedJob>) {
        let renewal_s = self.visibility_timeout.as_secs();
        for job in capped {
            let handle = job.message.receipt_handle.clone();
            if self.stopping {
                self.set_visibility(handle, 0);
                continue;
            }
            if self.room.has_room() {
                let now = Instant::now();
                self.room.admit(job, now, now + self.visibility_timeout);
                self.metrics.fairness_waits.inc();
                self.set_visibility(handle, renewal_s);
            } else {
                // Back to SQS until about its turn, as when the turn is far.
                let run_estimate = self.screening.run_estimate.get();
                let limits = &self.screening.limits;
                let delay_s = fate::capped_release_delay_s(job.ahead, run_estimate, limits);
                self.metrics.fairness_releases.inc();
                self.set_visibility(handle, u64::from(delay_s));
            }
        }
    }

    /// Renews the waiting messages about to turn visible (a third of a visibility
    /// timeout ahead, like a running job's keepalive); those held for the room's longest
    /// hold go back to SQS instead.
    fn renew_waiting(&mut self) {
        let now = Instant::now();
        for message in self.room.take_overdue(now) {
            self.set_visibility(message.receipt_handle, 0);
        }
        let handles = self.room.due_for_renewal(
            now,
            self.visibility_timeout / 3,
            now + self.visibility_timeout,
        );
        for handle in handles {
            self.set_visibility(handle, self.visibility_timeout.as_secs());
        }
    }

    /// Makes a held message visible `seconds` from now (0 = at once), in the background.
    fn set_visibility(&self, receipt_handle: String, seconds: u64) {
        let batchers = self.batchers.clone();
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        actix::spawn(async move {
            if let Err(e) = batchers.set_visibility(&receipt_handle, seconds).await {
                tracing::warn!(error = %e, "could not change a held message's visibility");
            }
        });
    }

    fn hand_out(&mut self, messages: Vec<ReceivedMessage>) {
        if messages.is_empty() {
            return;
        }
        if self.stopping {
            // The receive was already in flight when shutdown began: give the messages
            // back at once instead of letting them sit out their visibility timeout.
            for message in messages {
                self.set_visibility(message.receipt_handle, 0);
            }
            return;
        }
        // Screening needs a user with waiting jobs: none on FIFO, none in an empty room.
        let messages = if self.fifo || self.room.len() == 0 {
            messages
        } else {
            self.screen(messages)
        };
        for group in group_messages(messages, self.fifo) {
            match self.idle.pop() {
                Some(worker) => self.workers[worker].do_send(RunJobs { messages: group }),
                None => {
                    // Cannot happen (we never ask for more than idle workers), but never
                    // hold a message: release it.
                    for message in group {
                        self.set_visibility(message.receipt_handle, 0);
                    }
                }
            }
        }
    }
}

/// Standard queues: one message per worker. FIFO: one worker per message group, keeping
/// the receive's order within the group.
pub(crate) fn group_messages(
    messages: Vec<ReceivedMessage>,
    fifo: bool,
) -> Vec<Vec<ReceivedMessage>> {
    if !fifo {
        return messages.into_iter().map(|m| vec![m]).collect();
    }
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<ReceivedMessage>> = HashMap::new();
    for message in messages {
        let key = message.group_id.clone().unwrap_or_default();
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(message);
    }
    order
        .into_iter()
        .filter_map(|key| groups.remove(&key))
        .collect()
}

/// 200 ms doubling per consecutive error, capped at [`MAX_BACKOFF`].
pub(crate) fn error_backoff(consecutive_errors: u32) -> Duration {
    let exponent = consecutive_errors.saturating_sub(1).min(10);
    (Duration::from_millis(200) * (1u32 << exponent)).min(MAX_BACKOFF)
}

impl Actor for PollerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.poll(ctx);
        // A safety net and the liveness tick: resumes polling whatever path stalled it,
        // tries the waiting lines due for a try, and renews their messages.
        ctx.run_interval(Duration::from_secs(1), |poller, ctx| {
            poller.renew_waiting();
            poller.poll(ctx);
        });
    }
}

impl Supervised for PollerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.slot.restarted("the poller stopped");
        self.receives_in_flight = 0;
        self.asked = 0;
    }
}

impl Handler<WorkerIdle> for PollerActor {
    type Result = ();

    fn handle(&mut self, msg: WorkerIdle, ctx: &mut Self::Context) {
        if !self.idle.contains(&msg.worker) {
            self.idle.push(msg.worker);
        }
        for user in msg.freed_users {
            self.room.slot_freed(user);
        }
        self.admit_waiting(msg.capped);
        self.poll(ctx);
    }
}

impl Handler<StopPolling> for PollerActor {
    type Result = ();

    fn handle(&mut self, _: StopPolling, _: &mut Self::Context) {
        tracing::info!(
            waiting_at_cap = self.room.len(),
            "poller stopping: no new receives; waiting jobs go back to the queue"
        );
        self.stopping = true;
        for message in self.room.empty_out() {
            self.set_visibility(message.receipt_handle, 0);
        }
    }
}

impl Handler<GetPollerStats> for PollerActor {
    type Result = MessageResult<GetPollerStats>;

    fn handle(&mut self, _: GetPollerStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(PollerStats {
            idle_workers: self.idle.len(),
            busy_workers: self.workers.len() - self.idle.len(),
            polling: self.receives_in_flight > 0,
            stopped: self.stopping,
            consecutive_errors: self.consecutive_errors,
            last_error: self.last_error.clone(),
            last_receive_age_s: self.last_receive.map(|t| t.elapsed().as_secs_f64()),
            last_tick_age_s: Some(self.last_tick.elapsed().as_secs_f64()),
            received: self.received,
            waiting_for_database: self.db_gate.is_down(),
            waiting_at_cap: self.room.len(),
        })
    }
}
