//! `[retention]`: how long finished reports are kept before the pruner deletes them
//! (issue 15). Its own file beside `config.rs`, like `[webhooks]`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[retention]`: days each terminal status is kept, and the pruner's pace. Every
/// `*_days` defaults to 0 (keep for ever): deleting reports is the operator's decision,
/// so an upgrade never starts deleting rows on its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Days a `completed` report (row and file) is kept after it finished; 0 = for ever.
    pub completed_days: u32,
    /// Days a `failed` report is kept after it finished; 0 = for ever.
    pub failed_days: u32,
    /// Days a `cancelled` report is kept after it finished; 0 = for ever.
    pub cancelled_days: u32,
    /// Seconds between pruning passes.
    pub interval_s: u64,
    /// Rows one delete statement removes (one short transaction each), so a pass never
    /// holds many row locks or a long transaction.
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            completed_days: 0,
            failed_days: 0,
            cancelled_days: 0,
            interval_s: 60,
            batch: 500,
        }
    }
}

/// Longest accepted `*_days` (about 100 years): far beyond any real policy, small enough
/// that `now() - days` never overflows a timestamp.
pub(crate) const MAX_RETENTION_DAYS: u32 = 36_500;

/// Most rows accepted for `retention.batch`.
pub(crate) const MAX_BATCH: u32 = 10_000;

impl RetentionSettings {
    /// Whether any status has a limit: without one the pruner does not run at all.
    pub fn enabled(&self) -> bool {
        self.completed_days > 0 || self.failed_days > 0 || self.cancelled_days > 0
    }

    /// The checks serde cannot make; the error names the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        for (key, days) in [
            ("retention.completed_days", self.completed_days),
            ("retention.failed_days", self.failed_days),
            ("retention.cancelled_days", self.cancelled_days),
        ] {
            if days > MAX_RETENTION_DAYS {
                return invalid(
                    key,
                    format!("{days} is outside 0..={MAX_RETENTION_DAYS} days (0 = keep)"),
                );
            }
        }
        if !(1..=86_400).contains(&self.interval_s) {
            return invalid(
                "retention.interval_s",
                format!("{} is outside 1..=86400 seconds", self.interval_s),
            );
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return invalid(
                "retention.batch",
                format!("{} is outside 1..={MAX_BATCH} rows", self.batch),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_keep_everything_and_validate() {
        let settings = RetentionSettings::default();
        assert!(!settings.enabled());
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn a_zero_batch_or_interval_is_refused_naming_the_key() {
        let zero_batch = RetentionSettings {
            batch: 0,
            ..RetentionSettings::default()
        };
        let message = zero_batch.validate().expect_err("refused").to_string();
        assert!(message.contains("retention.batch"), "{message}");
        let zero_interval = RetentionSettings {
            interval_s: 0,
            ..RetentionSettings::default()
        };
        let message = zero_interval.validate().expect_err("refused").to_string();
        assert!(message.contains("retention.interval_s"), "{message}");
    }
}
