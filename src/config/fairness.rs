//! `[fairness]`: how many of one user's jobs may run at once across the fleet (issue 15).
//! Its own file beside `config.rs`, like `[retention]`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[fairness]`: a cap on one user's jobs in progress, counted in PostgreSQL so it holds
/// for every worker process together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FairnessSettings {
    /// Most jobs of one user `in-progress` at once over the whole fleet; 0 = no cap. A
    /// job of a user at the cap is not failed: it waits (in its worker process, or back in
    /// SQS) until about its turn, so other users' jobs run first.
    pub max_in_flight_per_user: u32,
    /// The shortest a job sent back to SQS at the cap stays invisible.
    pub release_delay_s: u32,
    /// How far away a capped job's turn (its queued jobs ahead × the attempts' average
    /// run time ÷ the cap) may be for it to wait in its process's waiting room; a job
    /// further away (or any, on a FIFO queue) is sent back to SQS until about its turn,
    /// within `release_delay_s..=max_release_delay_s`: a capped job may wait in-queue for
    /// minutes.
    pub max_release_delay_s: u32,
}

impl Default for FairnessSettings {
    fn default() -> Self {
        Self {
            max_in_flight_per_user: 0,
            release_delay_s: 2,
            max_release_delay_s: 300,
        }
    }
}

/// Longest accepted `fairness.release_delay_s` and `fairness.max_release_delay_s`: five
/// minutes, well under SQS's longest message delay (15 min), which a renewed copy uses.
pub(crate) const MAX_RELEASE_DELAY_S: u32 = 300;

impl FairnessSettings {
    /// The checks serde cannot make; the error names the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_in_flight_per_user > 100_000 {
            return Err(ConfigError::Invalid {
                key: "fairness.max_in_flight_per_user",
                reason: format!("{} is above 100000", self.max_in_flight_per_user),
            });
        }
        if !(1..=MAX_RELEASE_DELAY_S).contains(&self.release_delay_s) {
            return Err(ConfigError::Invalid {
                key: "fairness.release_delay_s",
                reason: format!(
                    "{} is outside 1..={MAX_RELEASE_DELAY_S}",
                    self.release_delay_s
                ),
            });
        }
        if !(self.release_delay_s..=MAX_RELEASE_DELAY_S).contains(&self.max_release_delay_s) {
            return Err(ConfigError::Invalid {
                key: "fairness.max_release_delay_s",
                reason: format!(
                    "{} is outside fairness.release_delay_s ({})..={MAX_RELEASE_DELAY_S}",
                    self.max_release_delay_s, self.release_delay_s
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_off_by_default_and_the_delay_is_bounded() {
        let mut settings = FairnessSettings::default();
        assert_eq!(settings.max_in_flight_per_user, 0);
        assert!(settings.validate().is_ok());
        settings.release_delay_s = 0;
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("fairness.release_delay_s"), "{message}");
        settings.release_delay_s = 2;
        settings.max_release_delay_s = 1;
        let message = settings.validate().unwrap_err().to_string();
        assert!(
            message.contains("fairness.max_release_delay_s"),
            "{message}"
        );
        settings.max_release_delay_s = 10;
        settings.max_in_flight_per_user = 100_001;
        let message = settings.validate().unwrap_err().to_string();
        assert!(
            message.contains("fairness.max_in_flight_per_user"),
            "{message}"
        );
    }
}
