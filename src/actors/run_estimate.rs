//! How long an attempt runs, as this process has seen lately: an exponentially weighted
//! moving average of attempt run times, shared by the workers. It sizes how long a job
//! released at its user's cap stays away ([`super::fate::capped_release_delay_s`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The estimate before any attempt has ended: a guess, replaced by the first measurement.
pub(crate) const DEFAULT_RUN_ESTIMATE: Duration = Duration::from_secs(1);

/// Weight of the newest run time. Small enough that one odd job (a huge report, a
/// generator error after a millisecond) moves the estimate little, large enough that a
/// change in the work's mix shows within some tens of attempts.
const NEWEST_WEIGHT: f64 = 0.1;

/// Stands for "no measurement yet": the bits of a NaN, which the average of finite run
/// times never is.
const NO_MEASUREMENT: u64 = u64::MAX;

/// The shared estimate: an `f64` of seconds in an atomic, so the workers update it
/// without a lock on their hot path.
pub(crate) struct RunEstimate {
    /// `f64::to_bits` of the average in seconds, or [`NO_MEASUREMENT`].
    seconds_bits: AtomicU64,
}

impl Default for RunEstimate {
    fn default() -> Self {
        Self {
            seconds_bits: AtomicU64::new(NO_MEASUREMENT),
        }
    }
}

impl RunEstimate {
    /// The current estimate ([`DEFAULT_RUN_ESTIMATE`] until an attempt has ended).
    pub(crate) fn get(&self) -> Duration {
        decode(self.seconds_bits.load(Ordering::Relaxed))
            // Always finite and ≥ 0 (an average of run times); the default otherwise.
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .unwrap_or(DEFAULT_RUN_ESTIMATE)
    }

    /// Folds one attempt's run time into the estimate.
    pub(crate) fn record(&self, took: Duration) {
        let sample = took.as_secs_f64();
        // The closure always returns Some, so the update cannot fail; a lost race with
        // another worker is retried by `fetch_update` itself.
        let _ = self
            .seconds_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(next_estimate_s(decode(bits), sample).to_bits())
            });
    }
}

fn decode(bits: u64) -> Option<f64> {
    (bits != NO_MEASUREMENT).then(|| f64::from_bits(bits))
}

/// The estimate after a run of `sample_s` seconds: the first sample as it is, then each
/// new one weighted [`NEWEST_WEIGHT`] against the estimate so far.
pub(crate) fn next_estimate_s(previous_s: Option<f64>, sample_s: f64) -> f64 {
    match previous_s {
        None => sample_s,
        Some(previous) => previous + NEWEST_WEIGHT * (sample_s - previous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_one_second_until_an_attempt_has_ended() {
        assert_eq!(RunEstimate::default().get(), Duration::from_secs(1));
    }

    #[test]
    fn the_first_run_time_replaces_the_default_guess() {
        let estimate = RunEstimate::default();
        estimate.record(Duration::from_millis(4_000));
        assert_eq!(estimate.get(), Duration::from_secs(4));
        assert_eq!(next_estimate_s(None, 0.25), 0.25);
    }

    #[test]
    fn one_odd_run_moves_the_estimate_a_tenth_of_the_way() {
        assert!((next_estimate_s(Some(2.0), 12.0) - 3.0).abs() < 1e-9);
        assert!((next_estimate_s(Some(2.0), 0.0) - 1.8).abs() < 1e-9);
    }

    #[test]
    fn steady_run_times_bring_the_estimate_to_them() {
        let estimate = RunEstimate::default();
        estimate.record(Duration::from_secs(10));
        for _ in 0..100 {
            estimate.record(Duration::from_millis(500));
        }
        let seconds = estimate.get().as_secs_f64();
        assert!((seconds - 0.5).abs() < 0.01, "{seconds}");
    }
}
