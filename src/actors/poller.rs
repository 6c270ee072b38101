//! `PollerActor`: long-polls SQS for as many messages as there are idle workers (at
//! most 10) and hands each to a worker at once, so no message waits invisible in a local
//! buffer. Up to three receives run at once when enough workers are idle (one call
//! returns at most 10 messages). With no idle worker it does not poll. SQS errors back
//! off exponentially (capped) and polling resumes by itself when SQS answers again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::registry::ActorSlot;
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
}

impl PollerActor {
    pub(crate) fn new(
        queue: SqsQueue,
        batchers: SqsBatchers,
        settings: &SqsSettings,
        metrics: Arc<Metrics>,
        slot: ActorSlot,
        db_gate: DbGate,
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
        self.metrics.idle_workers.set(self.idle.len() as i64);
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

    fn hand_out(&mut self, messages: Vec<ReceivedMessage>) {
        if messages.is_empty() {
            return;
        }
        if self.stopping {
            // The receive was already in flight when shutdown began: give the messages
            // back at once instead of letting them sit out their visibility timeout.
            for message in messages {
                let batchers = self.batchers.clone();
                actix::spawn(async move {
                    let _ = batchers.set_visibility(&message.receipt_handle, 0).await;
                });
            }
            return;
        }
        for group in group_messages(messages, self.fifo) {
            match self.idle.pop() {
                Some(worker) => self.workers[worker].do_send(RunJobs { messages: group }),
                None => {
                    // Cannot happen (we never ask for more than idle workers), but never
                    // hold a message: release it.
                    for message in group {
                        let batchers = self.batchers.clone();
                        actix::spawn(async move {
                            let _ = batchers.set_visibility(&message.receipt_handle, 0).await;
                        });
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
        // A safety net and the liveness tick: resumes polling whatever path stalled it.
        ctx.run_interval(Duration::from_secs(1), |poller, ctx| poller.poll(ctx));
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
        self.poll(ctx);
    }
}

impl Handler<StopPolling> for PollerActor {
    type Result = ();

    fn handle(&mut self, _: StopPolling, _: &mut Self::Context) {
        tracing::info!("poller stopping: no new receives");
        self.stopping = true;
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
        })
    }
}
