//! How far a running report is, as its generator says.
//!
//! A generator reports as often as it likes; the latest value waits here until the
//! worker's next row heartbeat (every third of the visibility timeout) carries it to the
//! job's row. So progress costs no write of its own: at most one per beat, none while
//! nothing changed.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Longest `stage` kept, in characters.
const MAX_STAGE_CHARS: usize = 80;

/// One progress reading, as stored in the row and shown by `GET /reports/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// 0–100.
    pub percent: u8,
    /// What the generator is doing (short text), if it said.
    pub stage: Option<String>,
    /// Items done so far, when the generator counts.
    pub done: Option<u64>,
    /// Items in all, when the generator counts.
    pub total: Option<u64>,
    /// When the generator reported it.
    pub updated_at: DateTime<Utc>,
}

/// Handed to a generator with its job; cheap to clone, safe to call from any task.
#[derive(Debug, Clone, Default)]
pub struct ProgressReporter {
    /// The latest reading, and whether the heartbeat still has to write it.
    latest: Arc<Mutex<Option<(Progress, bool)>>>,
}

impl ProgressReporter {
    /// Reports `percent` (capped at 100) and what the generator is doing.
    pub fn report(&self, percent: u8, stage: &str) {
        self.store(reading(percent, stage, None, Utc::now()));
    }

    /// Reports `done` of `total` items; the percent follows from them.
    pub fn report_counts(&self, done: u64, total: u64, stage: &str) {
        self.store(reading(
            percent_of(done, total),
            stage,
            Some((done, total)),
            Utc::now(),
        ));
    }

    /// The reading the heartbeat has not written yet, if any; it counts as written from
    /// now on (a failed heartbeat hands it back with [`Self::unsent_again`]).
    pub(crate) fn take_unsent(&self) -> Option<Progress> {
        let mut latest = self.lock();
        match latest.as_mut() {
            Some((progress, unsent)) if *unsent => {
                *unsent = false;
                Some(progress.clone())
            }
            _ => None,
        }
    }

    /// Marks `sent` unwritten again after a failed heartbeat, unless a newer reading
    /// came meanwhile.
    pub(crate) fn unsent_again(&self, sent: &Progress) {
        if let Some((progress, unsent)) = self.lock().as_mut() {
            if progress == sent {
                *unsent = true;
            }
        }
    }

    fn store(&self, progress: Progress) {
        *self.lock() = Some((progress, true));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Progress, bool)>> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn reading(percent: u8, stage: &str, counts: Option<(u64, u64)>, at: DateTime<Utc>) -> Progress {
    let stage: String = stage.trim().chars().take(MAX_STAGE_CHARS).collect();
    Progress {
        percent: percent.min(100),
        stage: (!stage.is_empty()).then_some(stage),
        done: counts.map(|(done, _)| done),
        total: counts.map(|(_, total)| total),
        updated_at: at,
    }
}

/// `done` of `total` as a whole percent, rounded down, within 0–100 (0 of 0 is 0).
fn percent_of(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    let percent = u128::from(done.min(total)) * 100 / u128::from(total);
    u8::try_from(percent).unwrap_or(100)
}

/// Seconds left, from how long the attempt has run and how far it is: the rest at the
/// pace so far. None before the first percent, or when done.
pub(crate) fn eta_s(percent: u8, running_s: f64) -> Option<u64> {
    if percent == 0 || percent >= 100 || running_s <= 0.0 {
        return None;
    }
    let rest = running_s * f64::from(100 - percent) / f64::from(percent);
    Some(rest.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_written_once_until_a_new_one_comes() {
        let reporter = ProgressReporter::default();
        assert_eq!(reporter.take_unsent(), None, "nothing reported yet");
        reporter.report(30, "querying");
        let first = reporter.take_unsent().expect("unsent");
        assert_eq!(
            (first.percent, first.stage.as_deref()),
            (30, Some("querying"))
        );
        assert_eq!(reporter.take_unsent(), None, "written already");
        reporter.report(60, "writing");
        assert_eq!(reporter.take_unsent().map(|p| p.percent), Some(60));
    }

    #[test]
    fn a_failed_heartbeat_hands_its_reading_back_unless_a_newer_one_came() {
        let reporter = ProgressReporter::default();
        reporter.report(10, "a");
        let sent = reporter.take_unsent().expect("unsent");
        reporter.unsent_again(&sent);
        assert_eq!(reporter.take_unsent(), Some(sent.clone()));
        reporter.report(20, "b");
        reporter.unsent_again(&sent);
        assert_eq!(reporter.take_unsent().map(|p| p.percent), Some(20));
    }

    #[test]
    fn percents_are_capped_counts_give_the_percent_and_stages_are_cut() {
        let at = Utc::now();
        assert_eq!(reading(250, "x", None, at).percent, 100);
        assert_eq!(percent_of(1, 3), 33);
        assert_eq!(percent_of(5, 0), 0);
        assert_eq!(percent_of(7, 5), 100, "more done than total is done");
        let long = "s".repeat(200);
        assert_eq!(reading(1, &long, None, at).stage.map(|s| s.len()), Some(80));
        assert_eq!(reading(1, "  ", None, at).stage, None);
        let counted = reading(40, "rows", Some((4, 10)), at);
        assert_eq!((counted.done, counted.total), (Some(4), Some(10)));
    }

    #[test]
    fn the_eta_is_the_rest_at_the_pace_so_far() {
        assert_eq!(eta_s(25, 10.0), Some(30));
        assert_eq!(eta_s(50, 3.0), Some(3));
        assert_eq!(eta_s(0, 10.0), None);
        assert_eq!(eta_s(100, 10.0), None);
    }
}
