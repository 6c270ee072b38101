//! `[api] submit_rate_per_user` (issue 15): a token bucket per user in this process, so
//! one user's burst cannot fill the queue ahead of everyone else. Over the rate a
//! submit answers 429 with `Retry-After`, before anything is written.
//!
//! Per process, not shared by the fleet: N api processes behind a load balancer let a
//! user submit up to N times the rate. Sharing it would cost a database or cache round
//! trip on every submit; per process costs a mutex and a map lookup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before idle ones are dropped: a full bucket holds nothing worth keeping
/// (a new one starts full too), so the map stays bounded by the users active within
/// the last refill time.
const MAX_BUCKETS: usize = 10_000;

/// One user's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    /// Tokens left (a submit takes one), at most the burst.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// The refill rule, pure: `bucket` brought up to `now` at `rate` tokens per second
/// (capped at a burst of `rate`), then one token taken. Returns the new bucket, or how
/// long until a token is there when none is.
fn take(bucket: Bucket, now: Instant, rate: f64) -> Result<Bucket, Duration> {
    let tokens = refilled(bucket, now, rate);
    if tokens >= 1.0 {
        Ok(Bucket {
            tokens: tokens - 1.0,
            at: now,
        })
    } else {
        Err(Duration::from_secs_f64((1.0 - tokens) / rate))
    }
}

/// The tokens `bucket` holds at `now`: refilled at `rate` per second, at most `rate`.
fn refilled(bucket: Bucket, now: Instant, rate: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(rate)
}

/// The buckets of every user this process has seen submit recently.
#[derive(Debug, Default)]
pub(crate) struct SubmitLimiter {
    buckets: Mutex<HashMap<i64, Bucket>>,
}

impl SubmitLimiter {
    /// Takes a token of `user` at `rate` per second (0 = no limit). `Err` carries the
    /// whole seconds to wait (at least 1), for `Retry-After`.
    pub(crate) fn check(&self, user: i64, rate: u32) -> Result<(), u64> {
        if rate == 0 {
            return Ok(());
        }
        let rate = f64::from(rate);
        let now = Instant::now();
        // A poisoned lock only means a panic elsewhere mid-update; the map is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            // Only full buckets go: a user at the limit keeps it.
            buckets.retain(|_, b| refilled(*b, now, rate) < rate);
        }
        let bucket = buckets.get(&user).copied().unwrap_or(Bucket {
            tokens: rate,
            at: now,
        });
        match take(bucket, now, rate) {
            Ok(next) => {
                buckets.insert(user, next);
                Ok(())
            }
            Err(wait) => Err(wait.as_secs_f64().ceil().max(1.0) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_of_the_rate_then_refuses() {
        let now = Instant::now();
        let mut bucket = Bucket {
            tokens: 3.0,
            at: now,
        };
        for _ in 0..3 {
            bucket = take(bucket, now, 3.0).expect("within the burst");
        }
        let wait = take(bucket, now, 3.0).expect_err("over the burst");
        assert!((wait.as_secs_f64() - 1.0 / 3.0).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn tokens_come_back_at_the_rate_up_to_the_burst() {
        let now = Instant::now();
        let empty = Bucket {
            tokens: 0.0,
            at: now,
        };
        let later = now + Duration::from_millis(500);
        let refilled = take(empty, later, 4.0).expect("two tokens after half a second");
        assert!((refilled.tokens - 1.0).abs() < 1e-9);
        let much_later = now + Duration::from_secs(3600);
        let capped = take(empty, much_later, 4.0).expect("a full bucket");
        assert!((capped.tokens - 3.0).abs() < 1e-9, "burst = rate");
    }

    #[test]
    fn only_full_buckets_are_forgotten_when_the_map_is_full() {
        let limiter = SubmitLimiter::default();
        for user in 0..MAX_BUCKETS as i64 {
            assert!(limiter.check(user, 1).is_ok());
        }
        // Every bucket is empty (1 per second, one taken): none may be dropped, so user 0
        // is still over the rate.
        assert_eq!(limiter.check(0, 1), Err(1));
    }

    #[test]
    fn the_limiter_counts_users_apart_and_zero_means_no_limit() {
        let limiter = SubmitLimiter::default();
        assert!(limiter.check(1, 1).is_ok());
        assert_eq!(limiter.check(1, 1), Err(1));
        assert!(
            limiter.check(2, 1).is_ok(),
            "another user has its own bucket"
        );
        for _ in 0..100 {
            assert!(limiter.check(3, 0).is_ok());
        }
    }
}
