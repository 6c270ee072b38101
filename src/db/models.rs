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
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [
        JobStatus::InQueue,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InQueue => "in-queue",
            JobStatus::InProgress => "in-progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether no worker may touch the job any more.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// One row of `report_queue`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = report_queue, check_for_backend(diesel::pg::Pg))]
pub struct ReportRecord {
    pub id: Uuid,
    pub payload: serde_json::Value,
    pub status: String,
    pub report_url: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub user_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Attempts that failed (lost workers included); `jobs.max_attempts` of them fail the job.
    pub failures: i32,
    /// Re-sends so far; FIFO deduplication ids carry it.
    pub send_generation: i32,
}

/// A row to insert when a report is accepted.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = report_queue)]
pub struct NewReport {
    pub id: Uuid,
    pub payload: serde_json::Value,
    pub status: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub user_id: Option<i64>,
}
