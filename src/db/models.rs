//! Rows of `report_queue` and the job status vocabulary.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::report_queue;

/// A job's lifecycle. Stored as the strings of the original design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobStatus {
    /// Accepted and waiting for a worker (also after a retryable failure).
    #[serde(rename = "in-queue")]
    InQueue,
    /// Claimed by a worker that is running it.
    #[serde(rename = "in-progress")]
    InProgress,
    /// Finished; `report_url` points at the file. Terminal.
    #[serde(rename = "completed")]
    Completed,
    /// Gave up (permanent error or out of receives); `last_error` says why. Terminal
    /// until a person retries it.
    #[serde(rename = "failed")]
    Failed,
    /// Cancelled by a person (`POST /reports/{id}/cancel`, `reportd cancel`), or not
    /// started by its `notAfter` (reason `expired`). Terminal: it never runs again.
    #[serde(rename = "cancelled")]
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order (the terminal ones last).
    pub const ALL: [JobStatus; 5] = [
        JobStatus::InQueue,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InQueue => "in-queue",
            JobStatus::InProgress => "in-progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether no worker may touch the job any more.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One row of `report_queue`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = report_queue, check_for_backend(diesel::pg::Pg))]
pub struct ReportRecord {
    /// The report's id: the row's primary key, and the `id` in its SQS message body.
    pub id: Uuid,
    /// The accepted request, `{"userId", "startDate", "endDate"}`, handed to the generator.
    pub payload: serde_json::Value,
    /// A [`JobStatus`] in its stored spelling (`in-queue`, `in-progress`, …).
    pub status: String,
    /// Where clients fetch the finished file; None until completed, or for zero-work jobs.
    pub report_url: Option<String>,
    /// Attempts started (claims by a worker, not SQS receives); kept by a retry.
    pub attempts: i32,
    /// Why the latest failure or hand-back happened (kept after a success); None if none did.
    pub last_error: Option<String>,
    /// The client's `Idempotency-Key` (unique when present); None without one.
    pub idempotency_key: Option<String>,
    /// Hex SHA-256 of the payload sent with the idempotency key (a different body gets
    /// 409); None without a key.
    pub request_hash: Option<String>,
    /// The payload's `userId`, copied out for listing by user; also the FIFO message group.
    pub user_id: Option<i64>,
    /// When the report was accepted.
    pub created_at: DateTime<Utc>,
    /// When the row last changed; a running job's heartbeats bump it too.
    pub updated_at: DateTime<Utc>,
    /// When the latest attempt was claimed; None before the first claim.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a terminal status; None while it is not terminal.
    pub finished_at: Option<DateTime<Utc>>,
    /// When SQS accepted the current message; None while the dispatcher or the
    /// reconciler still has to send it.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Attempts that failed (lost workers included); `jobs.max_attempts` of them fail the job.
    pub failures: i32,
    /// Re-sends so far; FIFO deduplication ids carry it.
    pub send_generation: i32,
    /// When a cancel was asked for; None if never. A running job stops at its next heartbeat.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The reason given with the cancel, or `expired`; None if none was given.
    pub cancel_reason: Option<String>,
    /// Seconds an attempt may run before it is aborted as a failure; None = no limit.
    pub max_runtime_s: Option<i32>,
    /// A job not started by then is cancelled as `expired`; None = it never expires.
    pub not_after: Option<DateTime<Utc>>,
    /// The latest progress the generator reported (`{percent, stage, done, total,
    /// updatedAt}`); None before the first report.
    pub progress: Option<serde_json::Value>,
    /// The finished file as the report store holds it (see [`FileColumns::to_file`]).
    #[diesel(embed)]
    pub file: FileColumns,
}

impl ReportRecord {
    /// Whether the job reached a terminal status (an unknown spelling is not terminal).
    pub(crate) fn is_terminal(&self) -> bool {
        JobStatus::parse(&self.status).is_some_and(JobStatus::is_terminal)
    }
}

/// A row's `file_*` columns (see [`ReportFile`]); all None until a completion records
/// a file.
#[derive(Debug, Clone, Default, Queryable, Selectable)]
#[diesel(table_name = report_queue, check_for_backend(diesel::pg::Pg))]
pub struct FileColumns {
    /// See [`ReportFile::key`].
    pub file_key: Option<String>,
    /// See [`ReportFile::size_bytes`].
    pub file_size_bytes: Option<i64>,
    /// See [`ReportFile::sha256`].
    pub file_sha256: Option<String>,
    /// See [`ReportFile::content_type`].
    pub file_content_type: Option<String>,
    /// See [`ReportFile::rows`].
    pub file_rows: Option<i64>,
    /// See [`ReportFile::gzip`].
    pub file_gzip: Option<bool>,
}

impl FileColumns {
    /// The row's file, when the completion recorded one (all its columns are set).
    pub(crate) fn to_file(&self) -> Option<ReportFile> {
        Some(ReportFile {
            key: self.file_key.clone()?,
            size_bytes: self.file_size_bytes?,
            sha256: self.file_sha256.clone()?,
            content_type: self.file_content_type.clone()?,
            rows: self.file_rows?,
            gzip: self.file_gzip?,
        })
    }
}

/// A finished report file as the report store holds it; recorded on the row by the
/// completion (`file_*` columns), so any api process can serve or link it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFile {
    /// Its key in the store: a file name in `report.output_dir`, or the S3 object key.
    pub key: String,
    /// Bytes stored (after compression when `gzip`).
    pub size_bytes: i64,
    /// Hex SHA-256 of the stored bytes: what a download returns, byte for byte.
    pub sha256: String,
    /// Media type of the content, e.g. `text/csv; charset=utf-8`.
    pub content_type: String,
    /// CSV data rows (the header not counted).
    pub rows: i64,
    /// Whether the stored bytes are gzip-compressed (`Content-Encoding: gzip`).
    pub gzip: bool,
}

/// A row to insert when a report is accepted.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = report_queue)]
pub struct NewReport {
    /// The new report's id (a fresh v4 UUID), also its message body's `id`.
    pub id: Uuid,
    /// The validated request, `{"userId", "startDate", "endDate"}`.
    pub payload: serde_json::Value,
    /// The initial status, `in-queue`.
    pub status: String,
    /// The client's `Idempotency-Key`; None without one (never collides).
    pub idempotency_key: Option<String>,
    /// Hex SHA-256 of the payload when an idempotency key came with it, else None.
    pub request_hash: Option<String>,
    /// The payload's `userId`, copied out for listing by user and FIFO grouping.
    pub user_id: Option<i64>,
    /// Seconds an attempt may run (`maxRuntimeS`, or `jobs.max_runtime_s`); None = no limit.
    pub max_runtime_s: Option<i32>,
    /// Start by then or be cancelled as `expired` (`notAfter`, or `jobs.expire_after_s`
    /// after acceptance); None = never expires.
    pub not_after: Option<DateTime<Utc>>,
    /// The submission's `callbackUrl`: where its webhooks go besides `[webhooks]
    /// endpoints`; None without one.
    pub callback_url: Option<String>,
}
