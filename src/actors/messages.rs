//! Messages between the actors, one struct per request with its result type.

use actix::prelude::*;
use uuid::Uuid;

use crate::db::models::NewReport;
use crate::db::reports::{AttemptEnd, ClaimOutcome};
use crate::db::DbError;
use crate::queue::ReceivedMessage;

/// A write for the StatusActor.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert an accepted report (skipped if its idempotency key exists).
    Insert(NewReport),
    /// Claim a job for a new attempt.
    Claim { id: Uuid, stale_after_s: i64 },
    /// A running attempt's heartbeat.
    Touch { id: Uuid, attempt: i32 },
    /// End an attempt (compare-and-set on the attempt number).
    EndAttempt {
        id: Uuid,
        attempt: i32,
        end: AttemptEnd,
    },
    /// SQS accepted these reports' messages.
    MarkEnqueued(Vec<Uuid>),
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Insert: whether the row was new.
    Inserted(bool),
    /// Claim's outcome.
    Claim(ClaimOutcome),
    /// Conditional update: whether the row matched.
    Applied(bool),
    /// Rows changed.
    Count(usize),
}

/// Asks the StatusActor to commit one write; answered after the commit, or `Expired`
/// (never applied) when it is still queued at `deadline`.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, DbError>")]
pub struct Write {
    pub op: WriteOp,
    pub deadline: std::time::Instant,
}

/// Figures the StatusActor reports to the health endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatusStats {
    pub pending: usize,
    pub flushes: u64,
    pub last_batch_size: usize,
    pub last_flush_ms: f64,
    /// Seconds the running flush has taken so far (None when idle).
    pub flush_running_s: Option<f64>,
    /// Seconds since the last flush finished.
    pub last_flush_age_s: Option<f64>,
}

/// Asks the StatusActor for its figures (also proves its mailbox moves).
#[derive(Message)]
#[rtype(result = "StatusStats")]
pub struct GetStatusStats;

/// Hands the dispatcher a committed report to send to SQS.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub id: Uuid,
    /// FIFO message group (the user id).
    pub group_id: Option<String>,
}

/// Hands a worker the messages it must run, in order (several only for one FIFO group).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RunJobs {
    pub messages: Vec<ReceivedMessage>,
}

/// A worker tells the poller it has finished its messages and is free.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct WorkerIdle {
    pub worker: usize,
}

/// Stops the poller's receives (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopPolling;

/// Figures of the poller for the health endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PollerStats {
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
pub struct GetPollerStats;

/// Asks a worker whether its mailbox moves (health); answered with nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;
