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
//! a flush owned by the context could never finish and end the pause.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use diesel_async::AsyncConnection;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::messages::{StatusStats, Write, WriteOp, WriteOutcome};
use super::registry::ActorSlot;
use crate::db::models::NewReport;
use crate::db::reports::AttemptEnd;
use crate::db::{self, reports, DbError, DbPool};
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<WriteOutcome, DbError>>;

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
    pending: Vec<(WriteOp, Reply)>,
    /// Whether a flush is running (at most one at a time keeps writes ordered).
    flushing: bool,
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
    pub const MAILBOX_CAPACITY: usize = 1024;

    pub fn new(pool: DbPool, metrics: Arc<Metrics>, slot: ActorSlot, probe: StatusProbe) -> Self {
        Self {
            pool,
            pending: Vec::new(),
            flushing: false,
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
        self.flushing = true;
        self.flush_seq += 1;
        let seq = self.flush_seq;
        let take = self.pending.len().min(self.max_batch);
        let batch: Vec<(WriteOp, Reply)> = self.pending.drain(..take).collect();
        let pool = self.pool.clone();
        let probe = self.probe.clone();
        let metrics = self.metrics.clone();
        let completed = self.completed.clone();
        let task = actix::spawn(async move {
            let started = Instant::now();
            probe.with(|f| f.flush_started = Some(started));
            let size = batch.len();
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
            completed.send_replace(seq);
        });
        ctx.spawn(wrap_future::<_, Self>(task).map(|_, actor, ctx| {
            actor.flushing = false;
            actor.start_flush(ctx);
        }));
    }
}

impl Actor for StatusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(Self::MAILBOX_CAPACITY);
        ctx.run_interval(Duration::from_secs(1), |actor, _| actor.slot.heartbeat());
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Never drop accepted writes: keep running until the last flush is done.
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
    }
}

impl Handler<Write> for StatusActor {
    type Result = ResponseFuture<Result<WriteOutcome, DbError>>;

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.pending.push((msg.0, reply));
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

impl Handler<super::messages::GetStatusStats> for StatusActor {
    type Result = MessageResult<super::messages::GetStatusStats>;

    fn handle(
        &mut self,
        _: super::messages::GetStatusStats,
        _: &mut Self::Context,
    ) -> Self::Result {
        let mut stats = self.probe.stats();
        stats.pending = self.pending.len();
        MessageResult(stats)
    }
}

/// Runs one batch in a transaction. If the transaction fails, each write is tried on its
/// own so one bad write cannot fail the others; if the database is unreachable, every
/// sender gets that error.
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
    let ops: Vec<WriteOp> = batch.iter().map(|(op, _)| op.clone()).collect();
    let together = conn
        .transaction::<_, diesel::result::Error, _>(async |tx| apply_all(tx, &ops).await)
        .await;
    match together {
        Ok(outcomes) => {
            for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) if batch.len() == 1 => {
            if let Some((_, reply)) = batch.into_iter().next() {
                let _ = reply.send(Err(DbError::Query(error)));
            }
        }
        Err(error) => {
            tracing::warn!(%error, size = batch.len(), "batched write failed; retrying the writes one by one");
            for (op, reply) in batch {
                let single = vec![op];
                let result = conn
                    .transaction::<_, diesel::result::Error, _>(async |tx| {
                        apply_all(tx, &single).await
                    })
                    .await
                    .map_err(DbError::Query)
                    .and_then(|mut outcomes| outcomes.pop().ok_or(DbError::WriterGone));
                let _ = reply.send(result);
            }
        }
    }
}

/// Applies a batch with as few statements as the kinds of write in it: all inserts in
/// one, all claims in one (per stale-after value), all completions, heartbeats and
/// enqueue marks in one each; the rarer writes one by one. Grouping by kind is safe
/// because the writes of one batch arrived concurrently (a sender waits for each answer
/// before its next write), so any order of them is a valid one.
async fn apply_all(
    conn: &mut diesel_async::AsyncPgConnection,
    ops: &[WriteOp],
) -> Result<Vec<WriteOutcome>, diesel::result::Error> {
    let mut outcomes: Vec<Option<WriteOutcome>> = ops.iter().map(|_| None).collect();

    let inserts: Vec<(usize, NewReport)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::Insert(row) => Some((i, row.clone())),
            _ => None,
        })
        .collect();
    if !inserts.is_empty() {
        let rows: Vec<NewReport> = inserts.iter().map(|(_, row)| row.clone()).collect();
        let inserted: HashSet<Uuid> = reports::insert_many(conn, &rows)
            .await?
            .into_iter()
            .collect();
        for (i, row) in &inserts {
            outcomes[*i] = Some(WriteOutcome::Inserted(inserted.contains(&row.id)));
        }
    }

    let marks: Vec<(usize, &Vec<Uuid>)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::MarkEnqueued(ids) => Some((i, ids)),
            _ => None,
        })
        .collect();
    if !marks.is_empty() {
        let all: Vec<Uuid> = marks
            .iter()
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let changed: HashSet<Uuid> = reports::mark_enqueued(conn, &all)
            .await?
            .into_iter()
            .collect();
        for (i, ids) in &marks {
            outcomes[*i] = Some(WriteOutcome::Count(
                ids.iter().filter(|id| changed.contains(id)).count(),
            ));
        }
    }

    let mut claims: Vec<(usize, Uuid, i64)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::Claim { id, stale_after_s } => Some((i, *id, *stale_after_s)),
            _ => None,
        })
        .collect();
    claims.sort_by_key(|(i, _, stale)| (*stale, *i));
    for group in claims.chunk_by(|a, b| a.2 == b.2) {
        let ids: Vec<Uuid> = group.iter().map(|(_, id, _)| *id).collect();
        let results = reports::claim_many(conn, &ids, group[0].2).await?;
        for ((i, _, _), result) in group.iter().zip(results) {
            outcomes[*i] = Some(WriteOutcome::Claim(result));
        }
    }

    let touches: Vec<(usize, (Uuid, i32))> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::Touch { id, attempt } => Some((i, (*id, *attempt))),
            _ => None,
        })
        .collect();
    if !touches.is_empty() {
        let items: Vec<(Uuid, i32)> = touches.iter().map(|(_, item)| *item).collect();
        let results = reports::touch_many(conn, &items).await?;
        for ((i, _), applied) in touches.iter().zip(results) {
            outcomes[*i] = Some(WriteOutcome::Applied(applied));
        }
    }

    let completions: Vec<(usize, reports::Completion)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            WriteOp::EndAttempt {
                id,
                attempt,
                end: AttemptEnd::Completed { report_url },
            } => Some((i, (*id, *attempt, report_url.clone()))),
            _ => None,
        })
        .collect();
    if !completions.is_empty() {
        let items: Vec<(Uuid, i32, Option<String>)> =
            completions.iter().map(|(_, item)| item.clone()).collect();
        let results = reports::complete_many(conn, &items).await?;
        for ((i, _), applied) in completions.iter().zip(results) {
            outcomes[*i] = Some(WriteOutcome::Applied(applied));
        }
    }

    for (i, op) in ops.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let outcome = match op {
            WriteOp::EndAttempt { id, attempt, end } => {
                WriteOutcome::Applied(reports::end_attempt(conn, *id, *attempt, end).await?)
            }
            WriteOp::ResetFailed(id) => {
                WriteOutcome::Applied(reports::reset_failed(conn, *id, true).await?)
            }
            // Every other kind was applied above.
            _ => continue,
        };
        outcomes[i] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or(diesel::result::Error::NotFound))
        .collect()
}

/// Sends one write and waits for its commit; the mailbox bound applies (back-pressure).
pub async fn write(addr: &Addr<StatusActor>, op: WriteOp) -> Result<WriteOutcome, DbError> {
    match tokio::time::timeout(Duration::from_secs(60), addr.send(Write(op))).await {
        Ok(Ok(result)) => result,
        Ok(Err(_mailbox)) => Err(DbError::WriterGone),
        Err(_elapsed) => Err(DbError::Pool(
            "the StatusActor did not answer within 60 s".into(),
        )),
    }
}
