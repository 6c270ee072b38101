//! The limits SQS sets, in one place: every caller that clamps or validates against
//! one of them names it from here.

use std::time::Duration;

/// Messages per `ReceiveMessage`, `SendMessageBatch`, `DeleteMessageBatch` and
/// `ChangeMessageVisibilityBatch` call.
pub const MAX_BATCH: usize = 10;

/// Longest long-poll wait of a receive, in seconds.
pub const MAX_WAIT_TIME_S: u32 = 20;

/// Longest visibility timeout of a queue or a message, in seconds (12 h).
pub const MAX_VISIBILITY_TIMEOUT_S: u32 = 43_200;

/// How long after its receipt a message may stay invisible in total (12 h).
pub const MAX_INVISIBLE: Duration = Duration::from_secs(MAX_VISIBILITY_TIMEOUT_S as u64);

/// Shortest and longest message retention, in seconds (1 min, 14 days).
pub const MIN_RETENTION_S: u32 = 60;
pub const MAX_RETENTION_S: u32 = 1_209_600;

/// Longest `DelaySeconds` of a message (standard queues; 15 min).
pub const MAX_DELAY_S: i32 = 900;
