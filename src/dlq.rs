//! Dead-letter operations shared by the HTTP API and the CLI (look into the DLQ without
//! consuming it, send reports back, discard messages), and the reconciler's DLQ watcher.
//!
//! The report rows are reset with conditional updates straight on the database (not
//! through the StatusActor), so that `reportd dlq ...` works without a running daemon.
//! A redrive resets a `failed` row in a way the reconciler covers (`enqueued_at = NULL`,
//! a new send generation) before it sends anything, so a send that fails or a crash
//! after the reset leaves a row the reconciler sends, never a row without a message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::Serialize;
use uuid::Uuid;

use crate::db::models::JobStatus;
use crate::db::reconcile::{self, Resent, RowFate};
use crate::db::{self, reports, DbError, DbPool};
use crate::queue::{limits, DeadLetter, JobMessage, OutgoingMessage, QueueError, SqsQueue};

/// How long listed messages stay hidden while reportd looks at them.
const HOLD_S: i32 = 30;
/// Receives in one scan; bounds the time a scan can take on a huge DLQ.
const MAX_SCAN_CALLS: usize = 200;
/// How long the watcher hides the messages it looks at: long enough to decide and act,
/// short enough that a listing or redrive hardly notices.
const WATCH_HOLD_S: i32 = 5;
/// Messages the watcher looks at per pass, so that a pass stays short on a full DLQ.
const WATCH_MAX_MESSAGES: usize = 30;
/// Re-sends after which the watcher stops giving a dead-lettered job a new message:
/// something about it makes SQS give up on it every time.
pub(crate) const MAX_SEND_GENERATION: i32 = 10;

/// A DLQ failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DlqError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for DlqError {
    fn from(error: diesel::result::Error) -> Self {
        DlqError::Db(DbError::Query(error))
    }
}

/// One message of the DLQ as a person sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DlqEntry {
    pub message_id: String,
    /// The report the message names, if its body is `{"id": "<uuid>"}`.
    #[schema(required = true)]
    pub report_id: Option<Uuid>,
    /// The report's status, attempts and last error, if the row exists.
    #[schema(required = true, value_type = Option<JobStatus>)]
    pub report_status: Option<String>,
    #[schema(required = true)]
    pub attempts: Option<i32>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// Why reportd put it there (poison messages and permanent errors).
    #[schema(required = true)]
    pub poison_reason: Option<String>,
    /// When the message was sent: its first send for a message SQS moved here, the copy's
    /// send for one reportd copied here (poison messages, permanent errors).
    #[schema(required = true)]
    pub sent_at: Option<DateTime<Utc>>,
    /// The raw body (cut to 256 characters).
    pub body: String,
}

impl DlqEntry {
    /// A message with no report row behind it: only redriven when asked for by id.
    pub(crate) fn is_poison(&self) -> bool {
        self.report_status.is_none()
    }
}

struct Held {
    entry: DlqEntry,
    receipt_handle: String,
    group_id: Option<String>,
    full_body: String,
}

/// The report id in a body of the form `{"id": "<uuid>"}`.
fn report_id_in(body: &str) -> Option<Uuid> {
    JobMessage::parse(body).ok().map(|job| job.id)
}

/// Receives up to `limit` DLQ messages, hiding them for `hold_s` seconds. The last
/// receive waits up to `wait_s` for more.
async fn receive_held(
    queue: &SqsQueue,
    limit: usize,
    hold_s: i32,
    wait_s: i32,
) -> Result<Vec<Held>, QueueError> {
    let mut held: Vec<Held> = Vec::new();
    for _ in 0..MAX_SCAN_CALLS {
        if held.len() >= limit {
            break;
        }
        let want = (limit - held.len()).min(limits::MAX_BATCH) as i32;
        let messages = queue.receive_dead_letters(want, wait_s, hold_s).await?;
        if messages.is_empty() {
            break;
        }
        held.extend(messages.into_iter().map(held_message));
    }
    Ok(held)
}

fn held_message(message: DeadLetter) -> Held {
    Held {
        entry: DlqEntry {
            message_id: message.message_id,
            report_id: report_id_in(&message.body),
            report_status: None,
            attempts: None,
            last_error: None,
            poison_reason: message.poison_reason,
            sent_at: message.sent_at,
            body: message.body.chars().take(256).collect(),
        },
        receipt_handle: message.receipt_handle,
        group_id: message.group_id,
        full_body: message.body,
    }
}

/// Receives up to `limit` DLQ messages for [`HOLD_S`] seconds, with their reports.
async fn scan(queue: &SqsQueue, pool: &DbPool, limit: usize) -> Result<Vec<Held>, DlqError> {
    let mut held = receive_held(queue, limit, HOLD_S, 1).await?;
    let mut conn = db::connection(pool).await?;
    for item in &mut held {
        if let Some(id) = item.entry.report_id {
            if let Some(record) = reports::find(&mut conn, id).await? {
                item.entry.report_status = Some(record.status);
                item.entry.attempts = Some(record.attempts);
                item.entry.last_error = record.last_error;
            }
        }
    }
    Ok(held)
}

/// Makes held messages visible again at once.
async fn release(queue: &SqsQueue, held: &[Held]) {
    for chunk in held.chunks(10) {
        let entries: Vec<(String, i32)> = chunk
            .iter()
            .map(|h| (h.receipt_handle.clone(), 0))
            .collect();
        for result in queue
            .change_visibility_batch_in(&queue.dlq_url, &entries)
            .await
        {
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not release a DLQ message after looking at it");
            }
        }
    }
}

/// Deletes held messages from the DLQ, 10 per call.
async fn delete_held<'a>(
    queue: &SqsQueue,
    held: impl IntoIterator<Item = &'a Held>,
) -> Result<(), QueueError> {
    let handles: Vec<String> = held.into_iter().map(|h| h.receipt_handle.clone()).collect();
    for chunk in handles.chunks(10) {
        for (handle, reason) in queue.delete_batch_in(&queue.dlq_url, chunk).await? {
            tracing::warn!(
                reason = %reason,
                handle,
                "DLQ message not deleted; it may be acted on again (harmless)"
            );
        }
    }
    Ok(())
}

/// The DLQ's messages (up to `limit`), without consuming them.
pub(crate) async fn list(
    queue: &SqsQueue,
    pool: &DbPool,
    limit: usize,
) -> Result<Vec<DlqEntry>, DlqError> {
    let held = scan(queue, pool, limit).await?;
    release(queue, &held).await;
    Ok(held.into_iter().map(|h| h.entry).collect())
}

/// How long a finished listing answers the readers that waited for it.
const SHARE_LISTING_FOR: Duration = Duration::from_secs(1);

/// The API's DLQ operations, one at a time in this process.
///
/// Looking into an SQS queue without consuming it means receiving its messages (which
/// hides them) and releasing them. Two listings at once would each see only what the
/// other did not hold, and a redrive during a listing would report held messages as not
/// found. So the operations take turns, and readers that waited behind a listing get
/// its result when it is less than [`SHARE_LISTING_FOR`] old instead of scanning again.
/// Another process looking at the same DLQ (the CLI, the watcher of a worker process)
/// can still hold messages for a few seconds.
#[derive(Default)]
pub(crate) struct DlqGate {
    last_listing: tokio::sync::Mutex<Option<Listing>>,
}

struct Listing {
    taken: std::time::Instant,
    limit: usize,
    entries: Vec<DlqEntry>,
}

impl Listing {
    /// Whether this listing can answer a request for `limit` messages at `now`.
    fn answers(&self, limit: usize, now: std::time::Instant) -> bool {
        limit <= self.limit && now.saturating_duration_since(self.taken) < SHARE_LISTING_FOR
    }
}

impl DlqGate {
    /// [`list`], shared with the readers that asked at the same time.
    pub(crate) async fn list(
        &self,
        queue: &SqsQueue,
        pool: &DbPool,
        limit: usize,
    ) -> Result<Vec<DlqEntry>, DlqError> {
        let mut last = self.last_listing.lock().await;
        let now = std::time::Instant::now();
        if let Some(listing) = last.as_ref().filter(|l| l.answers(limit, now)) {
            return Ok(listing.entries.iter().take(limit).cloned().collect());
        }
        let entries = list(queue, pool, limit).await?;
        *last = Some(Listing {
            taken: std::time::Instant::now(),
            limit,
            entries: entries.clone(),
        });
        Ok(entries)
    }

    /// [`redrive`], never during a listing; later listings scan again.
    pub(crate) async fn redrive(
        &self,
        queue: &SqsQueue,
        pool: &DbPool,
        selection: &Selection,
    ) -> Result<RedriveReport, DlqError> {
        let mut last = self.last_listing.lock().await;
        *last = None;
        redrive(queue, pool, selection).await
    }

    /// [`discard`], never during a listing; later listings scan again.
    pub(crate) async fn discard(
        &self,
        queue: &SqsQueue,
        pool: &DbPool,
        message_id: &str,
    ) -> Result<bool, DlqError> {
        let mut last = self.last_listing.lock().await;
        *last = None;
        discard(queue, pool, message_id).await
    }
}

/// Which messages to send back.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    /// Report ids or message ids. Poison messages are redriven only when named here.
    pub ids: Vec<String>,
    /// Every message that has a report row.
    pub all: bool,
}

impl Selection {
    /// Whether `id` (as asked for) names this message, by message id or report id.
    fn id_names(id: &str, entry: &DlqEntry) -> bool {
        id == entry.message_id
            || entry
                .report_id
                .is_some_and(|r| r.to_string() == id.to_ascii_lowercase())
    }

    /// Whether this message was asked for by one of `ids`.
    fn names(&self, entry: &DlqEntry) -> bool {
        self.ids.iter().any(|id| Self::id_names(id, entry))
    }

    /// Whether the redrive acts on this message: named, or (with `all`) not poison.
    fn chooses(&self, entry: &DlqEntry) -> bool {
        self.names(entry) || (self.all && !entry.is_poison())
    }

    /// The ids asked for that name none of `entries`.
    fn not_found<'a>(&self, entries: impl Iterator<Item = &'a DlqEntry> + Clone) -> Vec<String> {
        self.ids
            .iter()
            .filter(|id| !entries.clone().any(|e| Self::id_names(id, e)))
            .cloned()
            .collect()
    }
}

/// A chosen DLQ message that the redrive left where it is, because its report is not
/// `failed`: a completed job's stale copy, or a live job's (the reconciler's business).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SkippedMessage {
    pub report_id: Uuid,
    pub message_id: String,
    /// The report's status when the redrive looked.
    #[schema(value_type = JobStatus)]
    pub status: String,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RedriveReport {
    /// Report ids sent back to the main queue (or message ids, for poison messages).
    pub moved: Vec<String>,
    /// Poison messages left in the DLQ because they were not asked for by id.
    pub skipped_poison: Vec<String>,
    /// Messages left in the DLQ because their report is not `failed`.
    pub skipped: Vec<SkippedMessage>,
    /// Ids asked for that are not in the DLQ.
    pub not_found: Vec<String>,
}

/// Sends the selected messages back. For a report: its row is reset (`failed` →
/// `in-queue`, a new send generation, `enqueued_at` cleared), a new message is sent and
/// marked, and only then the DLQ copy is deleted — so a crash or a failed send leaves a
/// row the reconciler sends, and at worst a duplicate (which the consumer drops), never
/// a lost job. Only messages seen by this redrive's scan are touched, and only those
/// whose row it reset (or poison messages named by id, whose body is copied back).
pub(crate) async fn redrive(
    queue: &SqsQueue,
    pool: &DbPool,
    selection: &Selection,
) -> Result<RedriveReport, DlqError> {
    let held = scan(queue, pool, 10_000).await?;
    let mut report = RedriveReport {
        not_found: selection.not_found(held.iter().map(|h| &h.entry)),
        ..RedriveReport::default()
    };
    let (chosen, rest): (Vec<Held>, Vec<Held>) =
        held.into_iter().partition(|h| selection.chooses(&h.entry));
    if selection.all {
        report.skipped_poison = rest
            .iter()
            .filter(|h| h.entry.is_poison())
            .map(|h| h.entry.message_id.clone())
            .collect();
    }
    release(queue, &rest).await;
    let (poison, of_reports): (Vec<Held>, Vec<Held>) =
        chosen.into_iter().partition(|h| h.entry.is_poison());
    report.moved = copy_back(queue, &poison).await?;
    resend_reports(queue, pool, of_reports, &mut report).await?;
    Ok(report)
}

/// Copies poison messages' bodies back to the main queue (on FIFO queues with their
/// group and a new deduplication id), then deletes them; returns their message ids.
async fn copy_back(queue: &SqsQueue, poison: &[Held]) -> Result<Vec<String>, DlqError> {
    let mut moved = Vec::new();
    for chunk in poison.chunks(limits::MAX_BATCH) {
        let bodies: Vec<(String, Option<String>)> = chunk
            .iter()
            .map(|h| (h.full_body.clone(), h.group_id.clone()))
            .collect();
        let sent: Vec<&Held> = queue
            .send_bodies(&bodies)
            .await?
            .into_iter()
            .filter_map(|i| chunk.get(i))
            .collect();
        delete_held(queue, sent.iter().copied()).await?;
        for h in sent {
            tracing::info!(message_id = %h.entry.message_id, "poison message redriven from the DLQ");
            moved.push(h.entry.message_id.clone());
        }
    }
    Ok(moved)
}

/// Resets each report's row, sends it a new message and deletes its DLQ copies (all of
/// them: one reset and one send per report, however many copies the DLQ holds).
async fn resend_reports(
    queue: &SqsQueue,
    pool: &DbPool,
    held: Vec<Held>,
    report: &mut RedriveReport,
) -> Result<(), DlqError> {
    let mut by_report: BTreeMap<Uuid, Vec<Held>> = BTreeMap::new();
    for h in held {
        if let Some(id) = h.entry.report_id {
            by_report.entry(id).or_default().push(h);
        }
    }
    let mut conn = db::connection(pool).await?;
    let mut reset: Vec<(Resent, Vec<Held>)> = Vec::new();
    let mut left: Vec<Held> = Vec::new();
    for (id, copies) in by_report {
        match reconcile::reset_failed(&mut conn, id).await? {
            Some(resent) => reset.push((resent, copies)),
            None => {
                let status = reconcile::fate(&mut conn, id)
                    .await?
                    .map_or_else(|| "deleted".to_string(), |f| f.status);
                tracing::info!(report_id = %id, status, "redrive skipped a report that is not failed; its DLQ message stays");
                report.skipped.extend(copies.iter().map(|h| SkippedMessage {
                    report_id: id,
                    message_id: h.entry.message_id.clone(),
                    status: status.clone(),
                }));
                left.extend(copies);
            }
        }
    }
    release(queue, &left).await;
    for chunk in reset.chunks(10) {
        report
            .moved
            .extend(send_reset_chunk(queue, &mut conn, chunk).await?);
    }
    Ok(())
}

/// Sends one batch of reset reports, marks what SQS took and deletes those reports' DLQ
/// copies; returns the report ids sent. A report SQS did not take keeps its row reset
/// (the reconciler sends it) and its DLQ copy (released).
async fn send_reset_chunk(
    queue: &SqsQueue,
    conn: &mut AsyncPgConnection,
    chunk: &[(Resent, Vec<Held>)],
) -> Result<Vec<String>, DlqError> {
    let messages: Vec<OutgoingMessage> = chunk
        .iter()
        .map(|(r, _)| OutgoingMessage::for_report(r.id, r.user_id, r.send_generation))
        .collect();
    let accepted: HashSet<Uuid> = queue.send_batch(&messages).await?.into_iter().collect();
    let sent: Vec<(Uuid, i32)> = chunk
        .iter()
        .filter(|(r, _)| accepted.contains(&r.id))
        .map(|(r, _)| (r.id, r.send_generation))
        .collect();
    reconcile::mark_sent(conn, &sent).await?;
    let (done, refused): (Vec<_>, Vec<_>) =
        chunk.iter().partition(|(r, _)| accepted.contains(&r.id));
    delete_held(queue, done.iter().flat_map(|(_, copies)| copies.iter())).await?;
    for (r, copies) in &refused {
        tracing::warn!(report_id = %r.id, "SQS did not take the redriven report's message; the reconciler will send it");
        release(queue, copies).await;
    }
    Ok(done
        .iter()
        .map(|(r, _)| {
            tracing::info!(report_id = %r.id, generation = r.send_generation, "redriven from the DLQ");
            r.id.to_string()
        })
        .collect())
}

/// Deletes one DLQ message by its message id; false when it is not there.
pub(crate) async fn discard(
    queue: &SqsQueue,
    pool: &DbPool,
    message_id: &str,
) -> Result<bool, DlqError> {
    let held = scan(queue, pool, 10_000).await?;
    let (target, rest): (Vec<Held>, Vec<Held>) = held
        .into_iter()
        .partition(|h| h.entry.message_id == message_id);
    release(queue, &rest).await;
    let Some(h) = target.first() else {
        return Ok(false);
    };
    delete_held(queue, [h]).await?;
    tracing::warn!(
        message_id,
        report_id = ?h.entry.report_id,
        poison_reason = ?h.entry.poison_reason,
        "DLQ message discarded by an operator"
    );
    Ok(true)
}

/// Empties the DLQ.
pub(crate) async fn purge(queue: &SqsQueue) -> Result<(), DlqError> {
    queue.purge_dlq().await?;
    tracing::warn!(dlq = %queue.dlq_url, "DLQ purged by an operator");
    Ok(())
}

/// What the watcher does with a DLQ message, given its report's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterVerdict {
    /// Poison, or a finished job's message: it belongs in the DLQ, a person decides.
    Leave,
    /// A stale copy: the job runs right now, its new message is about to be sent, or the
    /// copy is of an earlier send (a retry or the reconciler re-sent the job since).
    DeleteCopy,
    /// SQS dead-lettered the current message of a job that is not finished: give the
    /// job a new message, then delete the copy.
    Resend,
    /// The job was re-sent [`MAX_SEND_GENERATION`] times already: fail it, and leave
    /// the message for a person.
    GiveUp,
}

/// How much earlier than the row's `enqueued_at` a copy must have been sent to count as
/// an earlier send's: the current message is sent moments before its mark commits
/// (seconds at worst, under load), and SQS's and PostgreSQL's clocks differ a little.
const EARLIER_SEND_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// The watcher's rule. A DLQ message of a non-terminal job got there behind reportd's
/// back (SQS's receive-count redrive), so the job would wait forever for a message it
/// no longer has — unless the job is running (fresh heartbeat), already has a new
/// message on the way (`enqueued_at` NULL), or was re-sent after this copy was sent
/// (`sent_at` is the copy's SQS `SentTimestamp`).
pub(crate) fn dead_letter_verdict(
    row: Option<&RowFate>,
    sent_at: Option<DateTime<Utc>>,
    stranded_after: Duration,
) -> DeadLetterVerdict {
    let Some(row) = row else {
        return DeadLetterVerdict::Leave;
    };
    let earlier_send = match (sent_at, row.enqueued_at) {
        (Some(sent), Some(enqueued)) => sent < enqueued - EARLIER_SEND_SLACK,
        _ => false,
    };
    match row.job_status() {
        None | Some(JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled) => {
            DeadLetterVerdict::Leave
        }
        Some(JobStatus::InProgress) if row.age() < stranded_after => DeadLetterVerdict::DeleteCopy,
        Some(_) if row.enqueued_at.is_none() || earlier_send => DeadLetterVerdict::DeleteCopy,
        Some(_) if row.send_generation < MAX_SEND_GENERATION => DeadLetterVerdict::Resend,
        Some(_) => DeadLetterVerdict::GiveUp,
    }
}

/// What one watcher pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WatchReport {
    /// DLQ copies of running (or about to be re-sent) jobs, deleted.
    pub deleted_copies: usize,
    /// Jobs given a new message (the reconciler sends it).
    pub resent: usize,
    /// Jobs failed because SQS dead-lettered them too often.
    pub given_up: usize,
}

/// Looks at up to [`WATCH_MAX_MESSAGES`] DLQ messages and gives every non-terminal job
/// among them a live message again (see [`dead_letter_verdict`]); releases the rest.
/// `conn` is the reconciler's (it holds the pass lock).
pub(crate) async fn watch(
    queue: &SqsQueue,
    conn: &mut AsyncPgConnection,
    stranded_after: Duration,
) -> Result<WatchReport, DlqError> {
    let held = receive_held(queue, WATCH_MAX_MESSAGES, WATCH_HOLD_S, 0).await?;
    if held.is_empty() {
        return Ok(WatchReport::default());
    }
    let ids: Vec<Uuid> = held.iter().filter_map(|h| h.entry.report_id).collect();
    let rows: HashMap<Uuid, RowFate> = reconcile::fates(conn, &ids)
        .await?
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
    let mut report = WatchReport::default();
    let mut handled: HashSet<Uuid> = HashSet::new();
    let mut delete_it = Vec::with_capacity(held.len());
    for h in &held {
        let row = h.entry.report_id.and_then(|id| rows.get(&id));
        let verdict = match row {
            // A second copy of a job this pass already acted on is stale.
            Some(row) if handled.contains(&row.id) => DeadLetterVerdict::DeleteCopy,
            _ => dead_letter_verdict(row, h.entry.sent_at, stranded_after),
        };
        let delete = match (verdict, row) {
            (DeadLetterVerdict::Leave, _) | (_, None) => false,
            (verdict, Some(row)) => {
                handled.insert(row.id);
                act_on_dead_letter(conn, row, verdict, &mut report).await?
            }
        };
        delete_it.push(delete);
    }
    let (delete, keep): (Vec<_>, Vec<_>) = held.into_iter().zip(delete_it).partition(|(_, d)| *d);
    delete_held(queue, delete.iter().map(|(h, _)| h)).await?;
    let keep: Vec<Held> = keep.into_iter().map(|(h, _)| h).collect();
    release(queue, &keep).await;
    Ok(report)
}

/// Carries out a verdict on the row; returns whether the DLQ copy may be deleted.
async fn act_on_dead_letter(
    conn: &mut AsyncPgConnection,
    row: &RowFate,
    verdict: DeadLetterVerdict,
    report: &mut WatchReport,
) -> Result<bool, DlqError> {
    match verdict {
        DeadLetterVerdict::Leave => Ok(false),
        DeadLetterVerdict::DeleteCopy => {
            tracing::warn!(report_id = %row.id, status = %row.status, "deleting a DLQ copy of a job that is running or about to be re-sent");
            report.deleted_copies += 1;
            Ok(true)
        }
        DeadLetterVerdict::Resend => {
            let resent =
                reconcile::resend_many(conn, &[row.seen()], Some(JobStatus::InQueue)).await?;
            if resent.is_empty() {
                // The row moved on since it was read; the next pass looks again.
                return Ok(false);
            }
            tracing::warn!(report_id = %row.id, status = %row.status, generation = row.send_generation + 1, "SQS dead-lettered the message of an unfinished job; re-sending it");
            report.resent += 1;
            Ok(true)
        }
        DeadLetterVerdict::GiveUp => {
            let error = format!(
                "SQS dead-lettered its message {} times; stopped re-sending",
                row.send_generation
            );
            if reconcile::fail_dead_lettered(conn, &row.seen(), &error).await? {
                tracing::warn!(report_id = %row.id, generation = row.send_generation, "SQS keeps dead-lettering this job; marked it failed");
                report.given_up += 1;
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRANDED: Duration = Duration::from_secs(120);

    /// A row whose current message SQS accepted a minute ago (None: not yet sent).
    fn row(status: &str, age_s: f64, generation: i32, enqueued: bool) -> RowFate {
        RowFate {
            id: Uuid::nil(),
            status: status.into(),
            user_id: Some(1),
            updated_at: Utc::now(),
            send_generation: generation,
            enqueued_at: enqueued.then(|| Utc::now() - chrono::TimeDelta::minutes(1)),
            age_s,
        }
    }

    /// A copy sent 30 s ago, after the rows' current message.
    fn sent() -> Option<DateTime<Utc>> {
        Some(Utc::now() - chrono::TimeDelta::seconds(30))
    }

    fn entry(message_id: &str, report_id: Option<Uuid>, has_row: bool) -> DlqEntry {
        DlqEntry {
            message_id: message_id.into(),
            report_id,
            report_status: has_row.then(|| "failed".to_string()),
            attempts: None,
            last_error: None,
            poison_reason: None,
            sent_at: None,
            body: String::new(),
        }
    }

    #[test]
    fn a_listing_answers_smaller_or_equal_requests_for_one_second() {
        let taken = std::time::Instant::now();
        let listing = Listing {
            taken,
            limit: 100,
            entries: Vec::new(),
        };
        assert!(listing.answers(100, taken));
        assert!(listing.answers(10, taken + Duration::from_millis(999)));
        assert!(!listing.answers(101, taken), "asks for more than it holds");
        assert!(!listing.answers(10, taken + SHARE_LISTING_FOR), "too old");
    }

    #[test]
    fn poison_and_finished_jobs_stay_in_the_dlq() {
        assert_eq!(
            dead_letter_verdict(None, sent(), STRANDED),
            DeadLetterVerdict::Leave
        );
        for status in ["completed", "failed"] {
            assert_eq!(
                dead_letter_verdict(Some(&row(status, 1000.0, 0, true)), sent(), STRANDED),
                DeadLetterVerdict::Leave,
                "{status}"
            );
        }
    }

    #[test]
    fn the_copy_of_a_running_job_is_deleted() {
        let running = row("in-progress", 5.0, 0, true);
        assert_eq!(
            dead_letter_verdict(Some(&running), sent(), STRANDED),
            DeadLetterVerdict::DeleteCopy
        );
    }

    #[test]
    fn the_copy_of_a_job_whose_new_message_is_on_the_way_is_deleted() {
        for status in ["in-queue", "in-progress"] {
            assert_eq!(
                dead_letter_verdict(Some(&row(status, 1000.0, 3, false)), sent(), STRANDED),
                DeadLetterVerdict::DeleteCopy,
                "{status}"
            );
        }
    }

    #[test]
    fn an_unfinished_job_that_lost_its_message_is_resent_until_the_generation_cap() {
        for status in ["in-queue", "in-progress"] {
            let age = if status == "in-queue" { 1.0 } else { 1000.0 };
            assert_eq!(
                dead_letter_verdict(
                    Some(&row(status, age, MAX_SEND_GENERATION - 1, true)),
                    sent(),
                    STRANDED
                ),
                DeadLetterVerdict::Resend,
                "{status}"
            );
            assert_eq!(
                dead_letter_verdict(
                    Some(&row(status, age, MAX_SEND_GENERATION, true)),
                    sent(),
                    STRANDED
                ),
                DeadLetterVerdict::GiveUp,
                "{status}"
            );
        }
    }

    #[test]
    fn a_copy_of_an_earlier_send_is_deleted_and_one_of_the_current_send_is_resent() {
        let queued = row("in-queue", 1.0, 1, true);
        let enqueued = queued.enqueued_at.unwrap_or_default();
        let before = Some(enqueued - chrono::TimeDelta::minutes(5));
        assert_eq!(
            dead_letter_verdict(Some(&queued), before, STRANDED),
            DeadLetterVerdict::DeleteCopy
        );
        // Sent moments before its mark committed: the current message.
        let moments_before = Some(enqueued - chrono::TimeDelta::seconds(2));
        assert_eq!(
            dead_letter_verdict(Some(&queued), moments_before, STRANDED),
            DeadLetterVerdict::Resend
        );
        assert_eq!(
            dead_letter_verdict(Some(&queued), None, STRANDED),
            DeadLetterVerdict::Resend,
            "no SentTimestamp: assume the current message"
        );
    }

    #[test]
    fn an_in_progress_job_is_stale_exactly_at_stranded_after() {
        let stale = row("in-progress", STRANDED.as_secs_f64(), 0, true);
        assert_eq!(
            dead_letter_verdict(Some(&stale), sent(), STRANDED),
            DeadLetterVerdict::Resend
        );
    }

    #[test]
    fn all_chooses_report_messages_and_poison_only_by_id() {
        let report = Uuid::new_v4();
        let with_row = entry("m-1", Some(report), true);
        let poison = entry("m-2", None, false);
        let all = Selection {
            ids: Vec::new(),
            all: true,
        };
        assert!(all.chooses(&with_row));
        assert!(!all.chooses(&poison));
        let by_id = Selection {
            ids: vec!["m-2".into(), report.to_string().to_uppercase()],
            all: false,
        };
        assert!(by_id.chooses(&poison));
        assert!(
            by_id.chooses(&with_row),
            "report ids match case-insensitively"
        );
    }

    #[test]
    fn ids_that_name_no_message_are_not_found() {
        let report = Uuid::new_v4();
        let entries = [entry("m-1", Some(report), true)];
        let selection = Selection {
            ids: vec![report.to_string(), "m-1".into(), "m-9".into()],
            all: false,
        };
        assert_eq!(selection.not_found(entries.iter()), vec!["m-9".to_string()]);
    }

    #[test]
    fn a_body_names_a_report_only_as_id_uuid() {
        let id = Uuid::new_v4();
        assert_eq!(report_id_in(&crate::queue::message_body(id)), Some(id));
        assert_eq!(report_id_in("not json"), None);
        assert_eq!(report_id_in("{\"id\":\"nope\"}"), None);
        assert_eq!(report_id_in("{\"x\":1}"), None);
    }
}
