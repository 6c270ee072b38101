//! `StatusActor`: the single writer to `report_queue`.
//!
//! Writes that arrive while a flush is running are collected and committed together in
//! the next flush, in one transaction. A lone write is flushed at once, so batching adds
//! no latency at low load. Each sender is answered after the commit. When `max_batch`
//! writes are waiting, the actor stops reading its (bounded) mailbox until the running
//! flush ends, so a slow database slows the senders instead of growing memory.
//!
//! A flush runs as a task of its own, not as a future of the actor's context: while the
//! actor pauses its mailbox (`ctx.wait`), actix polls none of the context's futures, so
//! a flush owned by the context could never finish and end the pause. The pause ends on
//! the flush's "finished" signal, which is sent even when the flush panics.
//!
//! The writer cannot be wedged: its connections (a pool of its own) run with
//! `statement_timeout` and a short `lock_timeout`; a batch that meets a row locked
//! elsewhere fails after that timeout, the writes touching such rows are answered
//! `DbError::RowBusy` (retryable) and the rest of the batch commits at once; and a write
//! that waited past its deadline is answered `Expired` without being applied, so a
//! caller that gave up never has its write commit behind its back. Nothing of this
//! costs a statement while no row is locked.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use diesel_async::AsyncConnection;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::registry::ActorSlot;
use crate::db::models::{JobStatus, NewReport};
use crate::db::reports::{AttemptEnd, ClaimOutcome, Heartbeat};
use crate::db::{self, reports, DbError, DbPool};
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<WriteOutcome, DbError>>;

// The StatusActor's messages.

/// A write for the StatusActor.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert an accepted report (skipped if its idempotency key exists).
    Insert(NewReport),
    /// Claim a job for a new attempt.
    Claim {
        /// The report to claim.
        id: Uuid,
        /// Seconds an `in-progress` row's heartbeat may be silent before its worker
        /// counts as lost and this claim may take the job over.
        stale_after_s: i64,
        /// `fairness.max_in_flight_per_user` (0 = no cap).
        max_per_user: u32,
    },
    /// A running attempt's heartbeat.
    Touch {
        /// The running report.
        id: Uuid,
        /// The attempt still alive; the row is touched only while it is that attempt's.
        attempt: i32,
        /// The generator's latest progress, when it changed since the last heartbeat.
        progress: Option<serde_json::Value>,
    },
    /// End an attempt (compare-and-set on the attempt number).
    EndAttempt {
        /// The report whose attempt ends.
        id: Uuid,
        /// The attempt that ends; nothing changes if the row is no longer that attempt's.
        attempt: i32,
        /// How it ended: completed, requeued, failed, gave up or released.
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
    /// What a heartbeat found.
    Heartbeat(Heartbeat),
    /// Rows changed.
    Count(usize),
    /// An attempt's end: the status it left the job in, or None when the row was no
    /// longer that attempt's.
    Ended(Option<JobStatus>),
}

/// Asks the StatusActor to commit one write; answered after the commit, or `Expired`
/// (never applied) when it is still queued at `deadline`.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, DbError>")]
pub(crate) struct Write {
    pub op: WriteOp,
    pub deadline: std::time::Instant,
}

/// Figures the StatusActor reports to the health endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatusStats {
    /// Writes waiting for the next flush (always 0 from [`StatusProbe`], which cannot see them).
    pub pending: usize,
    /// Flushes finished since the process started (restarts of the actor included).
    pub flushes: u64,
    /// Writes in the last finished flush (0 before the first).
    pub last_batch_size: usize,
    /// How long the last finished flush took, in milliseconds (0 before the first).
    pub last_flush_ms: f64,
    /// Seconds the running flush has taken so far (None when idle).
    pub flush_running_s: Option<f64>,
    /// Seconds since the last flush finished.
    pub last_flush_age_s: Option<f64>,
}

/// Asks the StatusActor for its figures (also proves its mailbox moves).
#[derive(Message)]
#[rtype(result = "StatusStats")]
pub(crate) struct GetStatusStats;

/// How long a write may wait for its flush before it is answered `Expired` unapplied.
pub(crate) const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// How long a caller waits for an answer: past the deadline plus one flush, bounded by
/// the writer's statement timeout, so a write is either answered or never applied.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(90);

/// A write waiting for a flush.
struct Pending {
    op: WriteOp,
    reply: Reply,
    deadline: Instant,
}

/// Sends the "flush finished" signal when dropped, so a panicking flush still ends the
/// mailbox pause that waits for it.
struct FinishedSignal {
    completed: Arc<watch::Sender<u64>>,
    seq: u64,
}

impl Drop for FinishedSignal {
    fn drop(&mut self) {
        self.completed.send_replace(self.seq);
    }
}

#[derive(Debug, Default)]
struct FlushFigures {
    flushes: u64,
    last_batch_size: usize,
    last_flush_ms: f64,
    last_flush_at: Option<Instant>,
    flush_started: Option<Instant>,
}

/// The StatusActor's flush figures, readable without asking the actor: under heavy
/// load its mailbox is full for a while, and the health endpoint must still tell a busy
/// writer (flushes keep finishing) from a stuck one.
#[derive(Clone, Default)]
pub struct StatusProbe {
    figures: Arc<Mutex<FlushFigures>>,
}

impl StatusProbe {
    /// The latest figures (`pending` is not known from outside and stays 0).
    pub fn stats(&self) -> StatusStats {
        let figures = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        StatusStats {
            pending: 0,
            flushes: figures.flushes,
            last_batch_size: figures.last_batch_size,
            last_flush_ms: figures.last_flush_ms,
            flush_running_s: figures.flush_started.map(|t| t.elapsed().as_secs_f64()),
            last_flush_age_s: figures.last_flush_at.map(|t| t.elapsed().as_secs_f64()),
        }
    }

    fn with(&self, f: impl FnOnce(&mut FlushFigures)) {
        f(&mut self.figures.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Serialises and batches every database write of this process.
pub struct StatusActor {
    /// Connections for the flushes.
    pool: DbPool,
    /// Writes waiting for the next flush, with the channel to answer each sender.
    pending: Vec<Pending>,
    /// Whether a flush is running (at most one at a time keeps writes ordered).
    flushing: bool,
    /// Under load, the next flush waits a moment for more writes (group commit).
    lingering: bool,
    /// Flushes started so far; the number of the running one.
    flush_seq: u64,
    /// The number of the last finished flush, for pauses waiting on it.
    completed: Arc<watch::Sender<u64>>,
    /// Most writes per flush, and the point where the mailbox pauses.
    max_batch: usize,
    /// Figures for the health endpoint, shared with it.
    probe: StatusProbe,
    metrics: Arc<Metrics>,
    /// This actor's entry in the health registry.
    slot: ActorSlot,
}

impl StatusActor {
    /// Mailbox bound: senders wait (back-pressure) when this many writes are queued.
    pub(crate) const MAILBOX_CAPACITY: usize = 1024;

    /// A writer on `pool` (its own pool, with statement and lock timeouts) that reports
    /// its flush figures through `probe` and its heartbeats through `slot`.
    pub fn new(pool: DbPool, metrics: Arc<Metrics>, slot: ActorSlot, probe: StatusProbe) -> Self {
        Self {
            pool,
            pending: Vec::new(),
            flushing: false,
            lingering: false,
            flush_seq: 0,
            completed: Arc::new(watch::channel(0).0),
            max_batch: 256,
            probe,
            metrics,
            slot,
        }
    }

    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.pending.is_empty() {
            return;
        }
        if self.lingering && self.pending.len() < LINGER_UNTIL {
            return;
        }
        self.flushing = true;
        self.flush_seq += 1;
        let seq = self.flush_seq;
        let take = self.pending.len().min(self.max_batch);
        let now = Instant::now();
        let (batch, expired): (Vec<Pending>, Vec<Pending>) = self
            .pending
            .drain(..take)
            .partition(|write| write.deadline > now);
        for write in expired {
            let _ = write
                .reply
                .send(Err(DbError::Expired(WRITE_DEADLINE.as_secs())));
        }
        let batch: Vec<(WriteOp, Reply)> = batch.into_iter().map(|w| (w.op, w.reply)).collect();
        let size = batch.len();
        let pool = self.pool.clone();
        let probe = self.probe.clone();
        let metrics = self.metrics.clone();
        let finished = FinishedSignal {
            completed: self.completed.clone(),
            seq,
        };
        let task = actix::spawn(async move {
            let _finished = finished;
            let started = Instant::now();
            probe.with(|f| f.flush_started = Some(started));
            execute_batch(&pool, batch).await;
            let seconds = started.elapsed().as_secs_f64();
            probe.with(|f| {
                f.flushes += 1;
                f.last_batch_size = size;
                f.last_flush_ms = seconds * 1e3;
                f.last_flush_at = Some(Instant::now());
                f.flush_started = None;
            });
            metrics.status_batch_size.observe(size as f64);
            metrics.status_flush_seconds.observe(seconds);
        });
        let probe = self.probe.clone();
        ctx.spawn(wrap_future::<_, Self>(task).map(move |joined, actor, ctx| {
            if joined.is_err() {
                // Its senders were answered `WriterGone` when their replies dropped.
                tracing::error!("a StatusActor flush panicked; its writes were not applied");
                probe.with(|f| f.flush_started = None);
            }
            actor.flushing = false;
            if linger_after(size) {
                actor.lingering = true;
                ctx.spawn(wrap_future::<_, Self>(let_answered_writers_run()).map(
                    |_, actor, ctx| {
                        actor.lingering = false;
                        actor.start_flush(ctx);
                    },
                ));
            }
            actor.start_flush(ctx);
        }));
    }
}

/// Scheduler rounds the next flush waits after a flush that carried several writes.
/// A flush's answers wake the workers that were waiting on it, and most of them send
/// their next write (a claimed job's end, a finished job's next claim) a few task hops
/// later: the answer, the worker's task, the generator's task. Starting the next flush
/// at once sends it without them, and they wait a whole flush for the one after. Each
/// flush costs PostgreSQL a fixed share whatever its size (a transaction, a commit's WAL
/// flush, planning each statement, the round trips), so letting the ready tasks run a
/// few rounds first makes flushes bigger and fewer. No timer: a round is microseconds, so
/// nobody's latency grows; a timer of even 1 ms cost the drain bench 10 % of its jobs/s.
/// Measured on the drain bench: 11 → 15 writes per flush, jobs/s unchanged.
const LINGER_ROUNDS: usize = 3;

async fn let_answered_writers_run() {
    for _ in 0..LINGER_ROUNDS {
        tokio::task::yield_now().await;
    }
}

/// Writes that end a linger early: enough to make the flush's fixed cost small.
const LINGER_UNTIL: usize = 64;

/// Whether the flush after one of `size` writes should linger: only when writes arrived
/// faster than one per flush, so the wait gathers more and costs an idle process nothing.
pub(crate) fn linger_after(size: usize) -> bool {
    size >= 2
}

impl Actor for StatusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(Self::MAILBOX_CAPACITY);
        ctx.run_interval(Duration::from_secs(1), |actor, _| actor.slot.heartbeat());
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Never drop accepted writes: keep running until the last flush is done.
        self.lingering = false;
        if self.flushing || !self.pending.is_empty() {
            self.start_flush(ctx);
            return Running::Continue;
        }
        Running::Stop
    }
}

impl Supervised for StatusActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.slot.restarted("the StatusActor stopped");
        // A flush task still running answers its own senders; the next one may start.
        self.flushing = false;
        self.lingering = false;
    }
}

impl Handler<Write> for StatusActor {
    type Result = ResponseFuture<Result<WriteOutcome, DbError>>;

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.pending.push(Pending {
            op: msg.op,
            reply,
            deadline: msg.deadline,
        });
        self.start_flush(ctx);
        if self.pending.len() >= self.max_batch {
            // A full batch is waiting: stop taking mail until the running flush ends.
            let running = self.flush_seq;
            let mut finished = self.completed.subscribe();
            ctx.wait(wrap_future(async move {
                let _ = finished.wait_for(|done| *done >= running).await;
            }));
        }
        Box::pin(async move { answer.await.map_err(|_| DbError::WriterGone)? })
    }
}

impl Handler<GetStatusStats> for StatusActor {
    type Result = MessageResult<GetStatusStats>;

    fn handle(&mut self, _: GetStatusStats, _: &mut Self::Context) -> Self::Result {
        let mut stats = self.probe.stats();
        stats.pending = self.pending.len();
        MessageResult(stats)
    }
}

/// Rounds of "find the rows locked elsewhere, set their writes aside, run the rest"
/// before a batch falls back to one write per transaction.
const LOCK_ROUNDS: usize = 3;

/// Runs one batch in a transaction. If it hits its lock timeout, the writes touching
/// rows locked by another session are answered `RowBusy` (retryable) and the rest run
/// again, so a locked row stalls only its own writes, for one `lock_timeout`. If the
/// transaction fails otherwise, each write is tried on its own so one bad write cannot
/// fail the others; if the database is unreachable, every sender gets that error.
async fn execute_batch(pool: &DbPool, batch: Vec<(WriteOp, Reply)>) {
    let mut conn = match db::connection(pool).await {
        Ok(conn) => conn,
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(DbError::Pool(message.clone())));
            }
            return;
        }
    };
    let (ops, replies): (Vec<WriteOp>, Vec<Reply>) = batch.into_iter().unzip();
    let mut outcomes: Vec<Option<Result<WriteOutcome, DbError>>> =
        ops.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..ops.len()).collect();
    for _ in 0..LOCK_ROUNDS {
        let these: Vec<&WriteOp> = pending.iter().map(|i| &ops[*i]).collect();
        let together = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| apply_all(tx, &these).await)
            .await;
        match together {
            Ok(results) => {
                for (i, outcome) in pending.drain(..).zip(results) {
                    outcomes[i] = Some(Ok(outcome));
                }
                break;
            }
            Err(error) if db::is_lock_timeout(&error) => {
                let ids: Vec<Uuid> = these.iter().flat_map(|op| rows_of(op)).collect();
                let busy = match reports::busy_rows(&mut conn, &ids).await {
                    Ok(busy) if !busy.is_empty() => busy,
                    _ => break,
                };
                tracing::warn!(
                    rows = busy.len(),
                    "rows locked by another session; their writes wait, the rest go on"
                );
                pending.retain(|i| {
                    let touches_busy = rows_of(&ops[*i]).iter().any(|id| busy.contains(id));
                    if touches_busy {
                        outcomes[*i] = Some(Err(DbError::RowBusy));
                    }
                    !touches_busy
                });
            }
            Err(error) if pending.len() == 1 => {
                outcomes[pending[0]] = Some(Err(DbError::Query(error)));
                pending.clear();
                break;
            }
            Err(error) => {
                tracing::warn!(%error, size = pending.len(), "batched write failed; retrying the writes one by one");
                break;
            }
        }
    }
    for i in pending {
        let single = [&ops[i]];
        let result = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| apply_all(tx, &single).await)
            .await
            .map_err(DbError::Query)
            .and_then(|mut results| results.pop().ok_or(DbError::WriterGone));
        outcomes[i] = Some(result);
    }
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome.unwrap_or(Err(DbError::WriterGone)));
    }
}

/// The rows a write changes (inserts change none that exist yet).
fn rows_of(op: &WriteOp) -> Vec<Uuid> {
    match op {
        WriteOp::Insert(_) => Vec::new(),
        WriteOp::Claim { id, .. } | WriteOp::Touch { id, .. } | WriteOp::EndAttempt { id, .. } => {
            vec![*id]
        }
        WriteOp::MarkEnqueued(ids) => ids.clone(),
    }
}

/// A batch's writes sorted by kind, each with its position in the batch. The one
/// exhaustive `match` over [`WriteOp`]: a new kind of write does not compile until it
/// has a place here.
#[derive(Default)]
struct ByKind<'a> {
    inserts: Vec<(usize, &'a NewReport)>,
    marks: Vec<(usize, &'a [Uuid])>,
    claims: Vec<(usize, Uuid, i64, u32)>,
    touches: Vec<(usize, reports::Touch)>,
    completions: Vec<(usize, reports::Completion)>,
    /// The rarer ends (retry, failure, release), one statement each.
    ends: Vec<(usize, Uuid, i32, &'a AttemptEnd)>,
}

impl<'a> ByKind<'a> {
    fn sort(writes: &[&'a WriteOp]) -> Self {
        let mut kinds = Self::default();
        for (i, op) in writes.iter().copied().enumerate() {
            match op {
                WriteOp::Insert(row) => kinds.inserts.push((i, row)),
                WriteOp::MarkEnqueued(ids) => kinds.marks.push((i, ids)),
                WriteOp::Claim {
                    id,
                    stale_after_s,
                    max_per_user,
                } => kinds.claims.push((i, *id, *stale_after_s, *max_per_user)),
                WriteOp::Touch {
                    id,
                    attempt,
                    progress,
                } => kinds.touches.push((i, (*id, *attempt, progress.clone()))),
                WriteOp::EndAttempt {
                    id,
                    attempt,
                    end: AttemptEnd::Completed { report_url, file },
                } => kinds
                    .completions
                    .push((i, (*id, *attempt, report_url.clone(), file.clone()))),
                WriteOp::EndAttempt { id, attempt, end } => {
                    kinds.ends.push((i, *id, *attempt, end))
                }
            }
        }
        kinds
    }
}

/// What each write of a batch did, by position.
type Outcomes = Vec<Option<WriteOutcome>>;

/// Applies writes with as few statements as the kinds of write in it: all inserts in
/// one, all claims in one (per stale-after value), all completions, heartbeats and
/// enqueue marks in one each; the rarer ends one by one. Grouping by kind is safe
/// because the writes of one batch arrived concurrently (a sender waits for each answer
/// before its next write), so any order of them is a valid one.
async fn apply_all(
    conn: &mut diesel_async::AsyncPgConnection,
    writes: &[&WriteOp],
) -> Result<Vec<WriteOutcome>, diesel::result::Error> {
    let kinds = ByKind::sort(writes);
    let mut outcomes: Outcomes = vec![None; writes.len()];
    apply_inserts(conn, &kinds.inserts, &mut outcomes).await?;
    apply_marks(conn, &kinds.marks, &mut outcomes).await?;
    apply_claims(conn, kinds.claims, &mut outcomes).await?;
    apply_touches(conn, &kinds.touches, &mut outcomes).await?;
    apply_completions(conn, &kinds.completions, &mut outcomes).await?;
    for (i, id, attempt, end) in kinds.ends {
        let ended = reports::end_attempt(conn, id, attempt, end).await?;
        outcomes[i] = Some(WriteOutcome::Ended(ended));
    }
    // `ByKind::sort` gave every write exactly one kind, so every write has an outcome.
    outcomes
        .into_iter()
        .map(|o| o.ok_or(diesel::result::Error::NotFound))
        .collect()
}

async fn apply_inserts(
    conn: &mut diesel_async::AsyncPgConnection,
    inserts: &[(usize, &NewReport)],
    outcomes: &mut Outcomes,
) -> Result<(), diesel::result::Error> {
    if inserts.is_empty() {
        return Ok(());
    }
    let rows: Vec<&NewReport> = inserts.iter().map(|(_, row)| *row).collect();
    let inserted: HashSet<Uuid> = reports::insert_many(conn, &rows)
        .await?
        .into_iter()
        .collect();
    for (i, row) in inserts {
        outcomes[*i] = Some(WriteOutcome::Inserted(inserted.contains(&row.id)));
    }
    Ok(())
}

async fn apply_marks(
    conn: &mut diesel_async::AsyncPgConnection,
    marks: &[(usize, &[Uuid])],
    outcomes: &mut Outcomes,
) -> Result<(), diesel::result::Error> {
    if marks.is_empty() {
        return Ok(());
    }
    let all: Vec<Uuid> = marks
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    let changed: HashSet<Uuid> = reports::mark_enqueued(conn, &all)
        .await?
        .into_iter()
        .collect();
    for (i, ids) in marks {
        let count = ids.iter().filter(|id| changed.contains(id)).count();
        outcomes[*i] = Some(WriteOutcome::Count(count));
    }
    Ok(())
}

async fn apply_claims(
    conn: &mut diesel_async::AsyncPgConnection,
    mut claims: Vec<(usize, Uuid, i64, u32)>,
    outcomes: &mut Outcomes,
) -> Result<(), diesel::result::Error> {
    // One claim per stale-after value and cap (in practice one: the queue's and config's).
    claims.sort_by_key(|(i, _, stale, cap)| (*stale, *cap, *i));
    for group in claims.chunk_by(|a, b| (a.2, a.3) == (b.2, b.3)) {
        let ids: Vec<Uuid> = group.iter().map(|(_, id, _, _)| *id).collect();
        let results = reports::claim_many_fair(conn, &ids, group[0].2, group[0].3).await?;
        for ((i, _, _, _), result) in group.iter().zip(results) {
            outcomes[*i] = Some(WriteOutcome::Claim(result));
        }
    }
    Ok(())
}

async fn apply_touches(
    conn: &mut diesel_async::AsyncPgConnection,
    touches: &[(usize, reports::Touch)],
    outcomes: &mut Outcomes,
) -> Result<(), diesel::result::Error> {
    if touches.is_empty() {
        return Ok(());
    }
    let items: Vec<reports::Touch> = touches.iter().map(|(_, item)| item.clone()).collect();
    let results = reports::touch_many(conn, &items).await?;
    for ((i, _), heartbeat) in touches.iter().zip(results) {
        outcomes[*i] = Some(WriteOutcome::Heartbeat(heartbeat));
    }
    Ok(())
}

async fn apply_completions(
    conn: &mut diesel_async::AsyncPgConnection,
    completions: &[(usize, reports::Completion)],
    outcomes: &mut Outcomes,
) -> Result<(), diesel::result::Error> {
    if completions.is_empty() {
        return Ok(());
    }
    let items: Vec<reports::Completion> =
        completions.iter().map(|(_, item)| item.clone()).collect();
    let results = reports::complete_many(conn, &items).await?;
    for ((i, _), applied) in completions.iter().zip(results) {
        outcomes[*i] = Some(WriteOutcome::Ended(applied.then_some(JobStatus::Completed)));
    }
    Ok(())
}

/// Sends one write and waits for its commit; the mailbox bound applies (back-pressure).
/// A write still queued `WRITE_DEADLINE` (30 s) after this call is answered `Expired` and
/// never applied.
pub async fn write(addr: &Addr<StatusActor>, op: WriteOp) -> Result<WriteOutcome, DbError> {
    let deadline = Instant::now() + WRITE_DEADLINE;
    match tokio::time::timeout(ANSWER_TIMEOUT, addr.send(Write { op, deadline })).await {
        Ok(Ok(result)) => result,
        Ok(Err(_mailbox)) => Err(DbError::WriterGone),
        Err(_elapsed) => Err(DbError::Pool(format!(
            "the StatusActor did not answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        ))),
    }
}

/// An answer of the wrong kind: cannot happen (the handler answers each write with its
/// own kind); reported as a writer fault rather than a panic.
fn mismatch(outcome: WriteOutcome) -> DbError {
    tracing::error!(
        ?outcome,
        "the StatusActor answered a write with the wrong kind"
    );
    DbError::WriterGone
}

/// Inserts an accepted report; false when its idempotency key already existed.
pub async fn insert(addr: &Addr<StatusActor>, row: NewReport) -> Result<bool, DbError> {
    match write(addr, WriteOp::Insert(row)).await? {
        WriteOutcome::Inserted(inserted) => Ok(inserted),
        other => Err(mismatch(other)),
    }
}

/// Claims a job for a new attempt.
pub async fn claim(
    addr: &Addr<StatusActor>,
    id: Uuid,
    stale_after_s: i64,
    max_per_user: u32,
) -> Result<ClaimOutcome, DbError> {
    let claim = WriteOp::Claim {
        id,
        stale_after_s,
        max_per_user,
    };
    match write(addr, claim).await? {
        WriteOutcome::Claim(outcome) => Ok(outcome),
        other => Err(mismatch(other)),
    }
}

/// A running attempt's heartbeat, with the progress to record: still its row, asked to
/// cancel, or gone.
pub async fn touch(
    addr: &Addr<StatusActor>,
    id: Uuid,
    attempt: i32,
    progress: Option<serde_json::Value>,
) -> Result<Heartbeat, DbError> {
    let touch = WriteOp::Touch {
        id,
        attempt,
        progress,
    };
    match write(addr, touch).await? {
        WriteOutcome::Heartbeat(heartbeat) => Ok(heartbeat),
        other => Err(mismatch(other)),
    }
}

/// Ends an attempt (compare-and-set): the status it left the job in, or None when the
/// row is no longer that attempt's.
pub(crate) async fn end_attempt(
    addr: &Addr<StatusActor>,
    id: Uuid,
    attempt: i32,
    end: AttemptEnd,
) -> Result<Option<JobStatus>, DbError> {
    match write(addr, WriteOp::EndAttempt { id, attempt, end }).await? {
        WriteOutcome::Ended(status) => Ok(status),
        other => Err(mismatch(other)),
    }
}

/// Records that SQS accepted these reports' messages; returns how many rows changed.
pub(crate) async fn mark_enqueued(
    addr: &Addr<StatusActor>,
    ids: Vec<Uuid>,
) -> Result<usize, DbError> {
    match write(addr, WriteOp::MarkEnqueued(ids)).await? {
        WriteOutcome::Count(count) => Ok(count),
        other => Err(mismatch(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_write_is_flushed_at_once_and_only_a_busy_writer_waits_for_more() {
        assert!(!linger_after(0));
        assert!(!linger_after(1));
        assert!(linger_after(2));
        assert!(linger_after(LINGER_UNTIL));
    }

    #[test]
    fn a_flush_that_panics_still_signals_that_it_finished() {
        let completed = Arc::new(watch::channel(0).0);
        let observer = completed.subscribe();
        let signal = FinishedSignal {
            completed: completed.clone(),
            seq: 7,
        };
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _signal = signal;
            panic!("a flush panicked");
        }));
        assert!(unwound.is_err());
        assert_eq!(
            *observer.borrow(),
            7,
            "the mailbox pause waiting on flush 7 ends"
        );
    }

    #[test]
    fn every_write_of_a_batch_is_sorted_into_exactly_one_kind() {
        let id = Uuid::new_v4();
        let end = |end| WriteOp::EndAttempt {
            id,
            attempt: 1,
            end,
        };
        let writes = [
            WriteOp::Touch {
                id,
                attempt: 1,
                progress: None,
            },
            end(AttemptEnd::Completed {
                report_url: None,
                file: None,
            }),
            end(AttemptEnd::Released { note: None }),
            WriteOp::Claim {
                id,
                stale_after_s: 40,
                max_per_user: 0,
            },
            WriteOp::MarkEnqueued(vec![id]),
            end(AttemptEnd::Requeued { error: "x".into() }),
        ];
        let refs: Vec<&WriteOp> = writes.iter().collect();
        let kinds = ByKind::sort(&refs);
        assert_eq!(kinds.touches.len(), 1);
        assert_eq!(kinds.completions.len(), 1);
        assert_eq!(kinds.claims.len(), 1);
        assert_eq!(kinds.marks.len(), 1);
        assert_eq!(kinds.inserts.len(), 0);
        let mut ends: Vec<usize> = kinds.ends.iter().map(|e| e.0).collect();
        ends.sort();
        assert_eq!(ends, vec![2, 5], "positions are kept");
    }

    #[test]
    fn every_write_but_an_insert_names_the_rows_it_may_wait_for() {
        let id = Uuid::new_v4();
        let other = Uuid::new_v4();
        let touch = WriteOp::Touch {
            id,
            attempt: 1,
            progress: None,
        };
        assert_eq!(rows_of(&touch), vec![id]);
        let claim = WriteOp::Claim {
            id,
            stale_after_s: 40,
            max_per_user: 0,
        };
        assert_eq!(rows_of(&claim), vec![id]);
        assert_eq!(
            rows_of(&WriteOp::MarkEnqueued(vec![id, other])),
            vec![id, other]
        );
        let row = NewReport {
            id,
            payload: serde_json::json!({}),
            status: "in-queue".into(),
            idempotency_key: None,
            request_hash: None,
            user_id: None,
            max_runtime_s: None,
            not_after: None,
            callback_url: None,
        };
        assert!(rows_of(&WriteOp::Insert(row)).is_empty());
    }
}
