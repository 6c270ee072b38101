//! The limits SQS sets, in one place: every caller that clamps or validates against
//! one of them names it from here. On the ground floor (it imports nothing of reportd),
//! so that `config` can validate against it and `queue` re-export it as `queue::limits`.

use std::time::Duration;

/// Messages per `ReceiveMessage`, `SendMessageBatch`, `DeleteMessageBatch` and
/// `ChangeMessageVisibilityBatch` call.
pub(crate) const MAX_BATCH: usize = 10;

/// Longest long-poll wait of a receive, in seconds.
pub(crate) const MAX_WAIT_TIME_S: u32 = 20;

/// Most messages one `ReceiveMessage` asks for, as the `u32` of `sqs.receive_batch`.
pub(crate) const MAX_RECEIVE_BATCH: u32 = MAX_BATCH as u32;

/// Longest visibility timeout of a queue or a message, in seconds (12 h).
pub(crate) const MAX_VISIBILITY_TIMEOUT_S: u32 = 43_200;

/// How long after its receipt a message may stay invisible in total (12 h).
pub(crate) const MAX_INVISIBLE: Duration = Duration::from_secs(MAX_VISIBILITY_TIMEOUT_S as u64);

/// Shortest and longest message retention, in seconds (1 min, 14 days).
pub(crate) const MIN_RETENTION_S: u32 = 60;
pub(crate) const MAX_RETENTION_S: u32 = 1_209_600;

/// Longest `DelaySeconds` of a message (standard queues; 15 min).
pub(crate) const MAX_DELAY_S: i32 = 900;
