//! Dead-letter operations shared by the HTTP API and the CLI: look into the DLQ without
//! consuming it, send messages back, discard them.
//!
//! The report rows are reset with conditional updates straight on the database (not
//! through the StatusActor), so that `reportd dlq ...` works without a running daemon;
//! each is a compare-and-set on `status = 'failed'`, so it cannot race a worker.

use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{QueueError, SqsQueue};
use crate::db::{self, reports, DbError, DbPool};

/// How long listed messages stay hidden while reportd looks at them.
const HOLD_S: i32 = 30;
/// Receives in one scan; bounds the time a scan can take on a huge DLQ.
const MAX_SCAN_CALLS: usize = 200;

/// A DLQ failure.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// One message of the DLQ as a person sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqEntry {
    pub message_id: String,
    /// The report the message names, if its body is `{"id": "<uuid>"}`.
    pub report_id: Option<Uuid>,
    /// The report's status, attempts and last error, if the row exists.
    pub report_status: Option<String>,
    pub attempts: Option<i32>,
    pub last_error: Option<String>,
    /// Why reportd put it there (poison messages and permanent errors).
    pub poison_reason: Option<String>,
    /// When the message was sent: its first send for a message SQS moved here, the copy's
    /// send for one reportd copied here (poison messages, permanent errors).
    pub sent_at: Option<DateTime<Utc>>,
    /// The raw body (cut to 256 characters).
    pub body: String,
}

impl DlqEntry {
    /// A message with no report row behind it: only redriven when asked for by id.
    pub fn is_poison(&self) -> bool {
        self.report_status.is_none()
    }
}

struct Held {
    entry: DlqEntry,
    receipt_handle: String,
    group_id: Option<String>,
    full_body: String,
}

/// Receives up to `limit` DLQ messages, hiding them for [`HOLD_S`] seconds.
async fn scan(queue: &SqsQueue, pool: &DbPool, limit: usize) -> Result<Vec<Held>, DlqError> {
    let mut held: Vec<Held> = Vec::new();
    for _ in 0..MAX_SCAN_CALLS {
        if held.len() >= limit {
            break;
        }
        let want = (limit - held.len()).min(10) as i32;
        let output = queue
            .client()
            .receive_message()
            .queue_url(&queue.dlq_url)
            .max_number_of_messages(want)
            .wait_time_seconds(1)
            .visibility_timeout(HOLD_S)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .map_err(|e| QueueError::call("ReceiveMessage", e))?;
        let messages = output.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for message in messages {
            let (Some(message_id), Some(receipt_handle)) =
                (message.message_id.clone(), message.receipt_handle.clone())
            else {
                continue;
            };
            let body = message.body.clone().unwrap_or_default();
            let attributes = message.attributes.clone().unwrap_or_default();
            let report_id = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("id")
                        .and_then(|id| id.as_str())
                        .and_then(|s| Uuid::parse_str(s).ok())
                });
            let poison_reason = message
                .message_attributes
                .as_ref()
                .and_then(|a| a.get("reportd_poison_reason"))
                .and_then(|v| v.string_value.clone());
            let sent_at = attributes
                .get(&MessageSystemAttributeName::SentTimestamp)
                .and_then(|ms| ms.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_millis);
            held.push(Held {
                entry: DlqEntry {
                    message_id,
                    report_id,
                    report_status: None,
                    attempts: None,
                    last_error: None,
                    poison_reason,
                    sent_at,
                    body: body.chars().take(256).collect(),
                },
                receipt_handle,
                group_id: attributes
                    .get(&MessageSystemAttributeName::MessageGroupId)
                    .cloned(),
                full_body: body,
            });
        }
    }
    let mut conn = db::connection(pool).await?;
    for item in &mut held {
        if let Some(id) = item.entry.report_id {
            if let Some(record) = reports::find(&mut conn, id).await.map_err(DbError::Query)? {
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

/// The DLQ's messages (up to `limit`), without consuming them.
pub async fn list(
    queue: &SqsQueue,
    pool: &DbPool,
    limit: usize,
) -> Result<Vec<DlqEntry>, DlqError> {
    let held = scan(queue, pool, limit).await?;
    release(queue, &held).await;
    Ok(held.into_iter().map(|h| h.entry).collect())
}

/// Which messages to send back.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Report ids or message ids. Poison messages are redriven only when named here.
    pub ids: Vec<String>,
    /// Every message that has a report row.
    pub all: bool,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Report ids (or message ids, for poison messages) sent back to the main queue.
    pub moved: Vec<String>,
    /// Poison messages left in the DLQ because they were not asked for by id.
    pub skipped_poison: Vec<String>,
    /// Ids asked for that are not in the DLQ.
    pub not_found: Vec<String>,
    /// The SQS message move task's handle, when `all` used SQS's own redrive.
    pub move_task: Option<String>,
}

/// Sends the selected messages back to the main queue: first the report is reset to
/// `in-queue` (attempts kept), then the message is sent to the main queue, then deleted
/// from the DLQ — so a crash in between duplicates a message (which the consumer drops)
/// and never loses one.
pub async fn redrive(
    queue: &SqsQueue,
    pool: &DbPool,
    selection: &Selection,
) -> Result<RedriveReport, DlqError> {
    let held = scan(queue, pool, 10_000).await?;
    let mut report = RedriveReport::default();
    let named = |entry: &DlqEntry| {
        selection.ids.iter().any(|id| {
            id == &entry.message_id
                || entry
                    .report_id
                    .is_some_and(|r| r.to_string() == id.to_ascii_lowercase())
        })
    };
    let (chosen, rest): (Vec<Held>, Vec<Held>) = held.into_iter().partition(|h| {
        let entry = &h.entry;
        named(entry) || (selection.all && !entry.is_poison())
    });
    for h in &rest {
        if selection.all && h.entry.is_poison() {
            report.skipped_poison.push(h.entry.message_id.clone());
        }
    }
    release(queue, &rest).await;
    for id in &selection.ids {
        let found = chosen.iter().any(|h| {
            &h.entry.message_id == id
                || h.entry
                    .report_id
                    .is_some_and(|r| r.to_string() == id.to_ascii_lowercase())
        });
        if !found {
            report.not_found.push(id.clone());
        }
    }
    let mut conn = db::connection(pool).await?;
    for h in &chosen {
        if let Some(id) = h.entry.report_id {
            // `failed` → `in-queue`; a row in any other state is left as it is (a
            // completed job's stale message is dropped by the consumer as a duplicate).
            reports::reset_failed(&mut conn, id, false)
                .await
                .map_err(DbError::Query)?;
        }
    }
    drop(conn);
    let mut chosen = chosen;
    if selection.all
        && selection.ids.is_empty()
        && report.skipped_poison.is_empty()
        && !queue.fifo
        && !chosen.is_empty()
    {
        // Nothing to leave behind: let SQS move everything itself.
        release(queue, &chosen).await;
        match start_move_task(queue).await {
            Ok(task) => {
                tracing::info!(
                    task,
                    messages = chosen.len(),
                    "DLQ redrive started as an SQS message move task"
                );
                report.moved = chosen
                    .iter()
                    .map(|h| {
                        h.entry
                            .report_id
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| h.entry.message_id.clone())
                    })
                    .collect();
                report.move_task = Some(task);
                return Ok(report);
            }
            Err(e) => {
                tracing::warn!(error = %e, "StartMessageMoveTask unavailable; sending the messages back one batch at a time");
                // Rescan, and choose again: a poison message may have arrived meanwhile.
                chosen = scan(queue, pool, 10_000).await?;
                let (keep, poison): (Vec<Held>, Vec<Held>) =
                    chosen.into_iter().partition(|h| !h.entry.is_poison());
                report
                    .skipped_poison
                    .extend(poison.iter().map(|h| h.entry.message_id.clone()));
                release(queue, &poison).await;
                chosen = keep;
            }
        }
    }
    for chunk in chosen.chunks(10) {
        let mut request = queue
            .client()
            .send_message_batch()
            .queue_url(&queue.queue_url);
        for (index, h) in chunk.iter().enumerate() {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(format!("r{index}"))
                .message_body(if h.full_body.is_empty() {
                    " ".to_string()
                } else {
                    h.full_body.clone()
                });
            if queue.fifo {
                entry = entry
                    .message_group_id(h.group_id.clone().unwrap_or_else(|| "redrive".into()))
                    .message_deduplication_id(format!("redrive-{}", Uuid::new_v4().simple()));
            }
            request = request.entries(entry.build().map_err(|e| QueueError::Call {
                operation: "SendMessageBatch",
                message: e.to_string(),
            })?);
        }
        let output = request
            .send()
            .await
            .map_err(|e| QueueError::call("SendMessageBatch", e))?;
        let sent: Vec<usize> = output
            .successful()
            .iter()
            .filter_map(|ok| ok.id().strip_prefix('r')?.parse().ok())
            .collect();
        let handles: Vec<String> = sent
            .iter()
            .filter_map(|i| chunk.get(*i).map(|h| h.receipt_handle.clone()))
            .collect();
        if !handles.is_empty() {
            for (handle, reason) in delete_from_dlq(queue, &handles).await? {
                tracing::warn!(
                    reason,
                    handle,
                    "redriven message not deleted from the DLQ; it may run twice (harmless)"
                );
            }
        }
        for i in sent {
            if let Some(h) = chunk.get(i) {
                let name = h
                    .entry
                    .report_id
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| h.entry.message_id.clone());
                tracing::info!(message_id = %h.entry.message_id, report = %name, "redriven from the DLQ");
                report.moved.push(name);
            }
        }
    }
    Ok(report)
}

async fn delete_from_dlq(
    queue: &SqsQueue,
    handles: &[String],
) -> Result<Vec<(String, String)>, QueueError> {
    queue.delete_batch_in(&queue.dlq_url, handles).await
}

/// Deletes one DLQ message by its message id; false when it is not there.
pub async fn discard(queue: &SqsQueue, pool: &DbPool, message_id: &str) -> Result<bool, DlqError> {
    let held = scan(queue, pool, 10_000).await?;
    let (target, rest): (Vec<Held>, Vec<Held>) = held
        .into_iter()
        .partition(|h| h.entry.message_id == message_id);
    release(queue, &rest).await;
    let Some(h) = target.first() else {
        return Ok(false);
    };
    delete_from_dlq(queue, std::slice::from_ref(&h.receipt_handle)).await?;
    tracing::warn!(
        message_id,
        report_id = ?h.entry.report_id,
        poison_reason = ?h.entry.poison_reason,
        "DLQ message discarded by an operator"
    );
    Ok(true)
}

/// Empties the DLQ.
pub async fn purge(queue: &SqsQueue) -> Result<(), DlqError> {
    queue
        .client()
        .purge_queue()
        .queue_url(&queue.dlq_url)
        .send()
        .await
        .map_err(|e| QueueError::call("PurgeQueue", e))?;
    tracing::warn!(dlq = %queue.dlq_url, "DLQ purged by an operator");
    Ok(())
}

/// Starts SQS's own move of every DLQ message back to its source queue.
async fn start_move_task(queue: &SqsQueue) -> Result<String, QueueError> {
    let dlq_arn = super::provision::queue_arn(queue.client(), &queue.dlq_url).await?;
    let output = queue
        .client()
        .start_message_move_task()
        .source_arn(dlq_arn)
        .send()
        .await
        .map_err(|e| QueueError::call("StartMessageMoveTask", e))?;
    Ok(output.task_handle.unwrap_or_default())
}
