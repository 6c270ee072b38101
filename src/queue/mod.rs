//! The SQS adapter: the client, queue provisioning, SQS's limits, and every call reportd
//! makes (batched where SQS allows it, because calls per message is what limits
//! throughput), each counted in the metrics. It knows nothing of reports, rows or actors:
//! the dispatcher (`crate::outbox`) and the DLQ operations (`crate::dlq`) sit on it.

pub(crate) use crate::sqs_limits as limits;
pub mod provision;

use std::sync::Arc;

use crate::batcher::{Batcher, BatcherConfig};
use crate::metrics::Metrics;

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use uuid::Uuid;

use crate::config::SqsSettings;

/// An SQS failure. Everything but a malformed request is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A call failed: SQS refused it, it timed out or lost its connection, or reportd
    /// could not build the request or read the answer.
    #[error("SQS {operation} failed: {message}")]
    Call {
        /// The SQS action, e.g. `SendMessageBatch`.
        operation: &'static str,
        /// SQS's error code (`ReceiptHandleIsInvalid`, …), when SQS answered with one.
        code: Option<String>,
        /// What went wrong: the SDK error with its context, or reportd's own description.
        message: String,
    },
    /// No queue of this name exists (in this region, at this endpoint).
    #[error("queue {0} does not exist (run `reportd queues ensure`)")]
    Missing(String),
}

/// Why one entry of a batched call failed, as SQS put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// SQS's error code, when SQS answered (not for a timeout or a lost connection).
    pub code: Option<String>,
    /// SQS's message, or reportd's own description of the failure (what `Display` shows).
    pub message: String,
}

impl CallFailure {
    /// A failure that did not come from SQS (no code).
    pub fn local(message: impl Into<String>) -> Self {
        Self {
            code: None,
            message: message.into(),
        }
    }

    /// The failure as the error of one `operation`.
    pub(crate) fn into_error(self, operation: &'static str) -> QueueError {
        QueueError::Call {
            operation,
            code: self.code,
            message: self.message,
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<QueueError> for CallFailure {
    fn from(error: QueueError) -> Self {
        let code = match &error {
            QueueError::Call { code, .. } => code.clone(),
            QueueError::Missing(_) => None,
        };
        Self {
            code,
            message: error.to_string(),
        }
    }
}

impl QueueError {
    fn call<E>(operation: &'static str, err: aws_sdk_sqs::error::SdkError<E>) -> Self
    where
        E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + Send + Sync + 'static,
    {
        use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
        QueueError::Call {
            operation,
            code: err.code().map(str::to_string),
            message: format!("{}", DisplayErrorContext(&err)),
        }
    }

    /// A failure reportd found itself (a request it could not build, an answer it could
    /// not read): no SQS code.
    pub(crate) fn unbuilt(operation: &'static str, error: impl std::fmt::Display) -> Self {
        QueueError::Call {
            operation,
            code: None,
            message: error.to_string(),
        }
    }

    /// Whether SQS said the receipt handle no longer refers to a message held by us
    /// (already deleted, or re-received elsewhere): benign after a finished job.
    pub(crate) fn is_stale_receipt(&self) -> bool {
        match self {
            QueueError::Call {
                code: Some(code), ..
            } => is_stale_receipt_code(code),
            QueueError::Call { code: None, .. } | QueueError::Missing(_) => false,
        }
    }
}

/// The SQS error codes that mean "this receipt handle is no longer yours". SQS's query
/// protocol spells codes `AWS.SimpleQueueService.MessageNotInflight`, its JSON protocol
/// and LocalStack may add `Exception`; the name in the middle is what counts.
fn is_stale_receipt_code(code: &str) -> bool {
    let name = code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(code);
    let name = name.strip_suffix("Exception").unwrap_or(name);
    // `InvalidParameterValue` is what SQS answers for a handle whose message was
    // deleted ("Message does not exist or is not available for visibility timeout change").
    matches!(
        name,
        "ReceiptHandleIsInvalid" | "InvalidParameterValue" | "MessageNotInflight"
    )
}

/// Builds an SQS client. With an `endpoint_url` (LocalStack) and no AWS credentials in
/// the environment, static dummy credentials are used, since such endpoints accept any.
pub async fn build_client(settings: &SqsSettings) -> Client {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // A long poll holds the call for up to 20 s.
                .operation_attempt_timeout(Duration::from_secs(
                    u64::from(settings.wait_time_s) + 10,
                ))
                .build(),
        )
        // Retries are mostly reportd's own (with backoff and visible errors); the SDK only
        // retries a call once, for a reset connection, so a dead endpoint cannot hide
        // behind SDK retries.
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
    let loader = crate::aws_endpoint::at_endpoint(loader, settings.endpoint_url.as_deref());
    Client::new(&loader.load().await)
}

/// A received message, with what the consumer needs to act on it.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// SQS's id for the message, the same on every delivery of it.
    pub message_id: String,
    /// This delivery's handle, needed to delete the message or extend its visibility.
    pub receipt_handle: String,
    /// The body: `{"id":"<report id>"}` for reportd's messages, anything for a poison one.
    pub body: String,
    /// SQS's `ApproximateReceiveCount` (1 on the first delivery).
    pub receive_count: u32,
    /// FIFO message group, if any.
    pub group_id: Option<String>,
    /// The report's user, from the message's [`USER_ATTRIBUTE`] (absent on messages
    /// sent before reportd set it, and on foreign ones).
    pub user_id: Option<i64>,
}

/// The message attribute that carries a report's user id (a `Number`). The body stays
/// `{"id": ...}`; the attribute lets a worker process keep a job of a user it knows to be
/// at `fairness.max_in_flight_per_user` out of the way without a database round trip.
pub(crate) const USER_ATTRIBUTE: &str = "reportd_user";

/// A message of the dead-letter queue, as the DLQ tools see it.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// Why reportd put it there (`reportd_poison_reason`), if reportd did.
    pub poison_reason: Option<String>,
    /// When the message (or reportd's copy) was sent.
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// FIFO message group, if any.
    pub group_id: Option<String>,
}

impl DeadLetter {
    fn from_sdk(message: aws_sdk_sqs::types::Message) -> Option<Self> {
        let attributes = message.attributes.unwrap_or_default();
        let poison_reason = message
            .message_attributes
            .as_ref()
            .and_then(|a| a.get(POISON_REASON_ATTRIBUTE))
            .and_then(|v| v.string_value.clone());
        Some(Self {
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            body: message.body.unwrap_or_default(),
            poison_reason,
            sent_at: attributes
                .get(&MessageSystemAttributeName::SentTimestamp)
                .and_then(|ms| ms.parse::<i64>().ok())
                .and_then(chrono::DateTime::from_timestamp_millis),
            group_id: attributes
                .get(&MessageSystemAttributeName::MessageGroupId)
                .cloned(),
        })
    }
}

/// The message attribute that carries why reportd dead-lettered a message.
pub(crate) const POISON_REASON_ATTRIBUTE: &str = "reportd_poison_reason";

/// A message to send: the report id, its user, its FIFO group (the user id), and its FIFO
/// deduplication id.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The report whose id the body carries.
    pub report_id: Uuid,
    /// The report's user, sent as [`USER_ATTRIBUTE`].
    pub user_id: Option<i64>,
    /// `MessageGroupId` (the user id). FIFO: None sends to group `default`. Standard queues
    /// send it when `sqs.fair_groups` is on (for SQS fair queues).
    pub group_id: Option<String>,
    /// FIFO `MessageDeduplicationId`: `<id>-<send_generation>`, so that repeating one
    /// send is deduplicated while a re-send (retry, redrive, reconciler) never is.
    pub dedup_id: String,
    /// Seconds SQS keeps the message hidden after the send (standard queues only).
    pub delay_s: i32,
}

impl OutgoingMessage {
    /// The message for send number `generation` of a report.
    pub fn for_report(report_id: Uuid, user_id: Option<i64>, generation: i32) -> Self {
        Self {
            report_id,
            user_id,
            group_id: user_id.map(|u| u.to_string()),
            dedup_id: format!("{report_id}-{generation}"),
            delay_s: 0,
        }
    }

    /// A fresh copy replacing a received message whose SQS receive count is running out
    /// (see the worker's fate rules): a deduplication id of its own, never dropped.
    pub(crate) fn renewal(
        report_id: Uuid,
        user_id: Option<i64>,
        group_id: Option<String>,
        delay_s: i32,
    ) -> Self {
        Self {
            report_id,
            user_id,
            group_id,
            dedup_id: format!("{report_id}-renew-{}", Uuid::new_v4().simple()),
            delay_s,
        }
    }
}

/// One failed entry of a batch call.
fn entry_failure(code: &str, message: Option<&str>) -> CallFailure {
    CallFailure {
        code: Some(code.to_string()),
        message: format!("{code}: {}", message.unwrap_or_default()),
    }
}

/// The queue pair reportd works with.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    /// URL of the main queue.
    pub queue_url: String,
    /// URL of the dead-letter queue.
    pub dlq_url: String,
    fifo: bool,
    /// `sqs.fair_groups`: standard-queue sends carry the user id as `MessageGroupId`.
    fair_groups: bool,
    /// Counts calls by operation and outcome, when set.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("queue_url", &self.queue_url)
            .field("dlq_url", &self.dlq_url)
            .field("fifo", &self.fifo)
            .finish()
    }
}

/// The wire format of a job message, owned here and nowhere else: `{"id":"<uuid>"}`,
/// exactly as the original design had it. Only the id travels; the job lives in its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct JobMessage {
    pub id: Uuid,
}

impl JobMessage {
    /// The message body.
    pub(crate) fn body(self) -> String {
        format!("{{\"id\":\"{}\"}}", self.id)
    }

    /// Reads a body; the error says what is wrong with it (a poison message's reason).
    pub(crate) fn parse(body: &str) -> Result<Self, String> {
        serde_json::from_str::<Self>(body)
            .map_err(|e| format!("body is not {{\"id\": \"<uuid>\"}}: {e}"))
    }
}

/// The body of a report's message (see `JobMessage`).
pub fn message_body(report_id: Uuid) -> String {
    JobMessage { id: report_id }.body()
}

impl SqsQueue {
    /// Looks up both queues' URLs.
    pub async fn connect(client: Client, settings: &SqsSettings) -> Result<Self, QueueError> {
        let main_url = queue_url(&client, &settings.queue_name).await?;
        let dlq_url = queue_url(&client, &settings.dlq_name()).await?;
        Ok(Self {
            client,
            queue_url: main_url,
            dlq_url,
            fifo: settings.fifo,
            fair_groups: settings.fair_groups,
            metrics: None,
        })
    }

    /// Counts this queue's SQS calls in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count<T, E>(&self, operation: &str, result: &Result<T, E>) {
        if let Some(metrics) = &self.metrics {
            metrics.sqs_call(operation, result.is_ok());
        }
    }

    /// The underlying client, for tests that set up queue states reportd itself never
    /// makes (a message sent straight to the DLQ, a poison body). reportd's own calls all
    /// go through the methods here, so each is counted in `reportd_sqs_calls_total`.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends up to 10 messages in one call; returns the report ids SQS accepted.
    pub async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<Uuid>, QueueError> {
        let mut request = self.client.send_message_batch().queue_url(&self.queue_url);
        for (index, message) in messages.iter().enumerate() {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(format!("m{index}"))
                .message_body(message_body(message.report_id));
            if let Some(user) = message.user_id {
                let attribute = MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(user.to_string())
                    .build()
                    .map_err(|e| QueueError::unbuilt("SendMessageBatch", e))?;
                entry = entry.message_attributes(USER_ATTRIBUTE, attribute);
            }
            if self.fifo {
                entry = entry
                    .message_group_id(message.group_id.clone().unwrap_or_else(|| "default".into()))
                    .message_deduplication_id(message.dedup_id.clone());
            } else {
                // A fair queue's tenant: SQS serves a group with a backlog no faster than
                // the others (a standard queue keeps no order within it).
                if let Some(group) = message.group_id.clone().filter(|_| self.fair_groups) {
                    entry = entry.message_group_id(group);
                }
                if message.delay_s > 0 {
                    entry = entry.delay_seconds(message.delay_s.min(limits::MAX_DELAY_S));
                }
            }
            let entry = entry
                .build()
                .map_err(|e| QueueError::unbuilt("SendMessageBatch", e))?;
            request = request.entries(entry);
        }
        let output = request.send().await;
        self.count("SendMessageBatch", &output);
        let output = output.map_err(|e| QueueError::call("SendMessageBatch", e))?;
        let accepted = output
            .successful()
            .iter()
            .filter_map(|ok| ok.id().strip_prefix('m')?.parse::<usize>().ok())
            .filter_map(|index| messages.get(index).map(|m| m.report_id))
            .collect();
        Ok(accepted)
    }

    /// One counted `ReceiveMessage` call on `queue_url` (main queue or DLQ), asking for
    /// `attributes` (and, on the DLQ, every message attribute: the poison reason).
    async fn receive_from(
        &self,
        queue_url: &str,
        max: i32,
        wait_time_s: i32,
        visibility_timeout_s: Option<i32>,
        attributes: &[MessageSystemAttributeName],
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, limits::MAX_BATCH as i32))
            .wait_time_seconds(wait_time_s)
            .set_visibility_timeout(visibility_timeout_s)
            .set_message_system_attribute_names(Some(attributes.to_vec()))
            .message_attribute_names(if queue_url == self.dlq_url {
                "All"
            } else {
                USER_ATTRIBUTE
            })
            .send()
            .await;
        self.count("ReceiveMessage", &output);
        let output = output.map_err(|e| QueueError::call("ReceiveMessage", e))?;
        Ok(output.messages.unwrap_or_default())
    }

    /// Receives up to `max` (≤ 10) messages of the dead-letter queue, hiding them for
    /// `hold_s` seconds, with what the DLQ tools show (poison reason, send time, group).
    pub(crate) async fn receive_dead_letters(
        &self,
        max: i32,
        wait_time_s: i32,
        hold_s: i32,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let attributes = [
            MessageSystemAttributeName::SentTimestamp,
            MessageSystemAttributeName::MessageGroupId,
        ];
        let messages = self
            .receive_from(&self.dlq_url, max, wait_time_s, Some(hold_s), &attributes)
            .await?;
        Ok(messages
            .into_iter()
            .filter_map(DeadLetter::from_sdk)
            .collect())
    }

    /// Sends raw bodies (up to 10) to the main queue, each on a FIFO queue with its group
    /// and a fresh deduplication id; returns the indexes SQS accepted.
    pub(crate) async fn send_bodies(
        &self,
        bodies: &[(String, Option<String>)],
    ) -> Result<Vec<usize>, QueueError> {
        let mut request = self.client.send_message_batch().queue_url(&self.queue_url);
        for (index, (body, group)) in bodies.iter().enumerate() {
            // SQS refuses an empty body; a poison message may have had one.
            let body = if body.is_empty() { " " } else { body.as_str() };
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(format!("b{index}"))
                .message_body(body);
            if self.fifo {
                entry = entry
                    .message_group_id(group.clone().unwrap_or_else(|| "redrive".into()))
                    .message_deduplication_id(format!("redrive-{}", Uuid::new_v4().simple()));
            }
            request = request.entries(
                entry
                    .build()
                    .map_err(|e| QueueError::unbuilt("SendMessageBatch", e))?,
            );
        }
        let output = request.send().await;
        self.count("SendMessageBatch", &output);
        let output = output.map_err(|e| QueueError::call("SendMessageBatch", e))?;
        Ok(output
            .successful()
            .iter()
            .filter_map(|ok| ok.id().strip_prefix('b')?.parse::<usize>().ok())
            .collect())
    }

    /// Empties the dead-letter queue.
    pub(crate) async fn purge_dlq(&self) -> Result<(), QueueError> {
        let output = self
            .client
            .purge_queue()
            .queue_url(&self.dlq_url)
            .send()
            .await;
        self.count("PurgeQueue", &output);
        output.map_err(|e| QueueError::call("PurgeQueue", e))?;
        Ok(())
    }

    /// Long-polls for up to `max` messages.
    pub async fn receive(
        &self,
        max: i32,
        wait_time_s: i32,
        visibility_timeout_s: Option<i32>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let attributes = [
            MessageSystemAttributeName::ApproximateReceiveCount,
            MessageSystemAttributeName::MessageGroupId,
        ];
        let messages = self
            .receive_from(
                &self.queue_url,
                max,
                wait_time_s,
                visibility_timeout_s,
                &attributes,
            )
            .await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let attributes = m.attributes.unwrap_or_default();
                let user_id = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get(USER_ATTRIBUTE))
                    .and_then(|v| v.string_value.as_deref())
                    .and_then(|v| v.parse().ok());
                Some(ReceivedMessage {
                    user_id,
                    message_id: m.message_id?,
                    receipt_handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count: attributes
                        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    group_id: attributes
                        .get(&MessageSystemAttributeName::MessageGroupId)
                        .cloned(),
                })
            })
            .collect())
    }

    /// Deletes up to 10 messages in one call; returns the receipt handles that failed
    /// with their reason.
    pub async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<(String, CallFailure)>, QueueError> {
        self.delete_batch_in(&self.queue_url, receipt_handles).await
    }

    /// [`SqsQueue::delete_batch`] on either of the two queues (the DLQ tools use it).
    pub(crate) async fn delete_batch_in(
        &self,
        queue_url: &str,
        receipt_handles: &[String],
    ) -> Result<Vec<(String, CallFailure)>, QueueError> {
        let mut request = self.client.delete_message_batch().queue_url(queue_url);
        for (index, handle) in receipt_handles.iter().enumerate() {
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(format!("d{index}"))
                .receipt_handle(handle)
                .build()
                .map_err(|e| QueueError::unbuilt("DeleteMessageBatch", e))?;
            request = request.entries(entry);
        }
        let output = request.send().await;
        self.count("DeleteMessageBatch", &output);
        let output = output.map_err(|e| QueueError::call("DeleteMessageBatch", e))?;
        Ok(output
            .failed()
            .iter()
            .filter_map(|f| {
                let index: usize = f.id().strip_prefix('d')?.parse().ok()?;
                let handle = receipt_handles.get(index)?.clone();
                Some((handle, entry_failure(f.code(), f.message())))
            })
            .collect())
    }

    /// Changes several messages' visibility in one call; one result per entry, in order.
    pub(crate) async fn change_visibility_batch(
        &self,
        entries: &[(String, i32)],
    ) -> Vec<Result<(), CallFailure>> {
        self.change_visibility_batch_in(&self.queue_url, entries)
            .await
    }

    /// [`SqsQueue::change_visibility_batch`] on either of the two queues.
    pub(crate) async fn change_visibility_batch_in(
        &self,
        queue_url: &str,
        entries: &[(String, i32)],
    ) -> Vec<Result<(), CallFailure>> {
        let mut request = self
            .client
            .change_message_visibility_batch()
            .queue_url(queue_url);
        for (index, (handle, seconds)) in entries.iter().enumerate() {
            match aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(format!("v{index}"))
                .receipt_handle(handle)
                .visibility_timeout(*seconds)
                .build()
            {
                Ok(entry) => request = request.entries(entry),
                Err(e) => {
                    let failure = CallFailure::local(e.to_string());
                    return entries.iter().map(|_| Err(failure.clone())).collect();
                }
            }
        }
        let output = request.send().await;
        self.count("ChangeMessageVisibilityBatch", &output);
        match output {
            Ok(output) => {
                let mut results: Vec<Result<(), CallFailure>> =
                    entries.iter().map(|_| Ok(())).collect();
                for failed in output.failed() {
                    if let Some(index) = failed
                        .id()
                        .strip_prefix('v')
                        .and_then(|i| i.parse::<usize>().ok())
                    {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Err(entry_failure(failed.code(), failed.message()));
                        }
                    }
                }
                results
            }
            Err(e) => {
                let failure =
                    CallFailure::from(QueueError::call("ChangeMessageVisibilityBatch", e));
                entries.iter().map(|_| Err(failure.clone())).collect()
            }
        }
    }

    /// Copies a poison message to the DLQ with the reason as a message attribute. The
    /// caller deletes the original afterwards: a crash in between duplicates, never loses.
    pub(crate) async fn send_poison_to_dlq(
        &self,
        message: &ReceivedMessage,
        reason: &str,
    ) -> Result<(), QueueError> {
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| QueueError::unbuilt("SendMessage", e))
        };
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(if message.body.is_empty() {
                " "
            } else {
                message.body.as_str()
            })
            .message_attributes(POISON_REASON_ATTRIBUTE, attribute(reason)?)
            .message_attributes(
                "reportd_original_message_id",
                attribute(&message.message_id)?,
            );
        if self.fifo {
            request = request
                .message_group_id(message.group_id.clone().unwrap_or_else(|| "poison".into()))
                .message_deduplication_id(message.message_id.clone());
        }
        let output = request.send().await;
        self.count("SendMessage", &output);
        output.map_err(|e| QueueError::call("SendMessage", e))?;
        Ok(())
    }

    /// Queue depth attributes of a queue (`ApproximateNumberOfMessages`, ...).
    pub async fn depth(&self, queue_url: &str) -> Result<HashMap<String, String>, QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let result = queue_attributes(
            &self.client,
            queue_url,
            &[
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ],
        )
        .await;
        self.count("GetQueueAttributes", &result);
        result
    }
}

/// Some attributes of a queue, by name.
pub(crate) async fn queue_attributes(
    client: &Client,
    queue_url: &str,
    names: &[aws_sdk_sqs::types::QueueAttributeName],
) -> Result<HashMap<String, String>, QueueError> {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .set_attribute_names(Some(names.to_vec()))
        .send()
        .await
        .map_err(|e| QueueError::call("GetQueueAttributes", e))?;
    Ok(output
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), v))
        .collect())
}

/// A queue's URL, or [`QueueError::Missing`].
pub async fn queue_url(client: &Client, name: &str) -> Result<String, QueueError> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(output) => output
            .queue_url
            .ok_or_else(|| QueueError::Missing(name.to_string())),
        Err(err) => {
            let is_missing = err
                .as_service_error()
                .map(|e| e.is_queue_does_not_exist())
                .unwrap_or(false);
            if is_missing {
                Err(QueueError::Missing(name.to_string()))
            } else {
                Err(QueueError::call("GetQueueUrl", err))
            }
        }
    }
}

/// Deletes and visibility changes: off the latency path of any client, so two calls in
/// flight are enough for batches to fill.
const OFF_PATH: BatcherConfig = BatcherConfig {
    max_batch: limits::MAX_BATCH,
    max_in_flight: 2,
    capacity: 4096,
};

/// Batched SQS calls shared by every worker and the dispatcher of one process.
#[derive(Clone)]
pub(crate) struct SqsBatchers {
    /// `DeleteMessageBatch` by receipt handle.
    pub delete: Batcher<String, Result<(), CallFailure>>,
    /// `ChangeMessageVisibilityBatch` by (receipt handle, seconds).
    pub visibility: Batcher<(String, i32), Result<(), CallFailure>>,
    /// `SendMessageBatch`: whether SQS accepted each message.
    pub send: Batcher<OutgoingMessage, Result<(), CallFailure>>,
}

impl SqsBatchers {
    /// Starts the three batchers on the current runtime.
    ///
    /// SQS's cost is per call, not per message (LocalStack's single Python process is the
    /// ceiling here), so few calls in flight is what makes batches fill up under load:
    /// while one call is out, the next batch gathers. Deletes and visibility changes are
    /// off the latency path of any client, so they get two calls in flight; sends get
    /// eight, since a report waits for its send before a worker can start it.
    pub(crate) fn spawn(queue: &SqsQueue) -> Self {
        let q = queue.clone();
        let delete = Batcher::spawn(OFF_PATH, move |handles: Vec<String>| {
            let q = q.clone();
            async move {
                match q.delete_batch(&handles).await {
                    Ok(failed) => handles
                        .iter()
                        .map(|h| match failed.iter().find(|(f, _)| f == h) {
                            Some((_, reason)) => Err(reason.clone()),
                            None => Ok(()),
                        })
                        .collect(),
                    Err(e) => {
                        let failure = CallFailure::from(e);
                        handles.iter().map(|_| Err(failure.clone())).collect()
                    }
                }
            }
        });
        let q = queue.clone();
        let visibility = Batcher::spawn(OFF_PATH, move |entries: Vec<(String, i32)>| {
            let q = q.clone();
            async move { q.change_visibility_batch(&entries).await }
        });
        let q = queue.clone();
        // A FIFO queue keeps a group's order only if its sends do not overtake each other.
        let send_in_flight = if queue.fifo { 1 } else { 8 };
        let sends = BatcherConfig {
            max_batch: limits::MAX_BATCH,
            max_in_flight: send_in_flight,
            // Room for a burst of accepted reports; beyond it the reconciler sends them.
            capacity: 65_536,
        };
        let send = Batcher::spawn(sends, move |messages: Vec<OutgoingMessage>| {
            let q = q.clone();
            async move {
                match q.send_batch(&messages).await {
                    Ok(accepted) => messages
                        .iter()
                        .map(|m| {
                            if accepted.contains(&m.report_id) {
                                Ok(())
                            } else {
                                Err(CallFailure::local("SQS rejected the message"))
                            }
                        })
                        .collect(),
                    Err(e) => {
                        let failure = CallFailure::from(e);
                        messages.iter().map(|_| Err(failure.clone())).collect()
                    }
                }
            }
        });
        Self {
            delete,
            visibility,
            send,
        }
    }

    /// Deletes one message (batched with others').
    pub(crate) async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.delete
            .submit(receipt_handle.to_string())
            .await
            .unwrap_or_else(|| Err(CallFailure::local("the delete batcher is gone")))
            .map_err(|failure| failure.into_error("DeleteMessageBatch"))
    }

    /// Sets one message's visibility (batched with others').
    pub(crate) async fn set_visibility(
        &self,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), QueueError> {
        self.visibility
            .submit((receipt_handle.to_string(), seconds))
            .await
            .unwrap_or_else(|| Err(CallFailure::local("the visibility batcher is gone")))
            .map_err(|failure| failure.into_error("ChangeMessageVisibilityBatch"))
    }

    /// Sends one message (batched with others').
    pub(crate) async fn send(&self, message: OutgoingMessage) -> Result<(), QueueError> {
        self.send
            .submit(message)
            .await
            .unwrap_or_else(|| Err(CallFailure::local("the send batcher is gone")))
            .map_err(|failure| failure.into_error("SendMessageBatch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_receipt_codes_are_recognised_in_every_spelling() {
        for code in [
            "ReceiptHandleIsInvalid",
            "InvalidParameterValue",
            "InvalidParameterValueException",
            "AWS.SimpleQueueService.MessageNotInflight",
            "MessageNotInflight",
        ] {
            assert!(is_stale_receipt_code(code), "{code}");
        }
        for code in [
            "ThrottlingException",
            "AWS.SimpleQueueService.NonExistentQueue",
            "RequestThrottled",
            "",
        ] {
            assert!(!is_stale_receipt_code(code), "{code}");
        }
    }

    #[test]
    fn only_a_call_failure_with_a_stale_code_is_a_stale_receipt() {
        let with_code = |code: Option<&str>| QueueError::Call {
            operation: "DeleteMessageBatch",
            code: code.map(str::to_string),
            message: "Message does not exist".into(),
        };
        assert!(with_code(Some("ReceiptHandleIsInvalid")).is_stale_receipt());
        assert!(
            !with_code(None).is_stale_receipt(),
            "text alone decides nothing"
        );
        assert!(!QueueError::Missing("q".into()).is_stale_receipt());
    }

    #[test]
    fn a_job_message_round_trips_through_its_wire_body() {
        let id = Uuid::new_v4();
        let body = message_body(id);
        assert_eq!(body, format!("{{\"id\":\"{id}\"}}"));
        assert_eq!(JobMessage::parse(&body), Ok(JobMessage { id }));
    }

    #[test]
    fn a_body_that_is_not_a_job_message_says_why() {
        for body in ["not json", "{\"x\":1}", "{\"id\":\"nope\"}", ""] {
            let reason = JobMessage::parse(body).expect_err(body);
            assert!(reason.starts_with("body is not"), "{reason}");
        }
    }

    #[test]
    fn sends_keep_their_deduplication_generation_and_renewals_never_collide() {
        let id = Uuid::new_v4();
        assert_eq!(
            OutgoingMessage::for_report(id, Some(7), 3).dedup_id,
            format!("{id}-3")
        );
        let a = OutgoingMessage::renewal(id, None, None, 0);
        let b = OutgoingMessage::renewal(id, None, None, 0);
        assert_ne!(a.dedup_id, b.dedup_id);
    }
}
