//! A job's fate, decided in one place: from what the claim found or how the attempt
//! ended, the counts in the job's row and SQS's receive count, to what the worker writes
//! to the row and what it does with the message.
//!
//! The rules:
//! - **Failures are counted in the database.** A job ends `failed` after
//!   `jobs.max_attempts` failures (errors, panics, lost workers), or at once on a
//!   permanent error; reportd then copies its message to the DLQ with the reason and
//!   deletes it. SQS's receive count decides nothing.
//! - **Interruptions are not failures**: a shutdown release, a duplicate delivery of a
//!   running job, a claim that cannot reach the database, host trouble. The job goes
//!   back to the queue with nothing counted.
//! - **A message never runs out of receives.** Every receive counts in SQS, whatever
//!   happened; a message handed back when it has few receives left is replaced by a fresh
//!   copy (sent, then the old one deleted), so SQS's redrive stays a safety net for
//!   messages reportd cannot handle at all.
//! - **A job over its user's cap waits, uncounted**: nothing is written; with its turn
//!   near it waits in the process's waiting room, otherwise it goes back to SQS until
//!   about its turn.
//! - **FIFO order holds.** In a FIFO group the worker keeps every message of the group
//!   it holds; a failure with tries left runs again in place after its backoff, and
//!   anything that stops a job hands the rest of the group back behind it.
//!
//! Pure functions only: the worker (`worker.rs`) carries the decisions out.

use std::time::Duration;

use crate::config::RetrySettings;
use crate::db::reports::AttemptEnd;

/// Receives left (at most) when a handed-back message is replaced by a fresh copy.
pub(crate) const RENEW_WHEN_RECEIVES_LEFT: u32 = 2;

/// Seconds a message waits after a claim that could not reach the database (or found
/// its row locked) before it is received again.
pub(crate) const CLAIM_RETRY_DELAY_S: u32 = 5;

/// The limits the rules apply.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// `jobs.max_attempts`: failures that end a job.
    pub max_attempts: u32,
    /// `sqs.max_receive_count`: receives before SQS's own redrive.
    pub max_receive_count: u32,
    /// The queue's visibility timeout, in seconds.
    pub visibility_timeout_s: u32,
    /// FIFO queue: failures run again in place, to keep the group's order.
    pub fifo: bool,
    pub retry: RetrySettings,
    /// `fairness.max_in_flight_per_user` (0 = no cap), passed to the claim.
    pub max_in_flight_per_user: u32,
    /// `fairness.release_delay_s`: the shortest a job released at the cap waits.
    pub fair_release_delay_s: u32,
    /// `fairness.max_release_delay_s`: the longest a job released at the cap waits.
    pub fair_max_release_delay_s: u32,
    /// A job over its user's cap whose turn is at most this many seconds away waits in
    /// the process's waiting room instead of going back to SQS; 0 = never (FIFO queues,
    /// whose groups keep their order in the worker).
    pub wait_in_room_within_s: u32,
}

/// What a claim found, as far as the rules care.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimSeen {
    /// Ours to run: attempt number `attempt`, with `failures` counted so far (including
    /// a previous attempt whose worker was lost).
    Claimed { attempt: i32, failures: i32 },
    /// The job is terminal already: a duplicate delivery.
    AlreadyFinished,
    /// Another worker runs it right now.
    HeldElsewhere,
    /// No report with this id: a poison message.
    NotFound(uuid::Uuid),
    /// The claim did not commit (database away, row locked, writer overloaded).
    Unavailable,
    /// Not claimed: the job's user is at `fairness.max_in_flight_per_user`, with
    /// `ahead` of its queued jobs created before this one.
    UserAtCap { ahead: u32 },
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttemptResult {
    Completed {
        report_url: Option<String>,
        /// The stored file, recorded on the row with the completion.
        file: Option<crate::db::models::ReportFile>,
    },
    /// The generator failed (or panicked); `permanent` when no retry can help.
    Failed { error: String, permanent: bool },
    /// The host is in trouble, not the job; receives pause for `pause_s`.
    HostTrouble { error: String, pause_s: u32 },
    /// Shutdown's grace period ended while it ran.
    Interrupted,
    /// Someone cancelled the job while it ran (seen in a heartbeat's answer).
    Cancelled,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MessageAction {
    /// The job is settled: delete the message.
    Delete,
    /// Visible again after `delay_s`.
    Hide { delay_s: u32 },
    /// Replace it with a fresh copy delayed by `delay_s` (its receive count starts over).
    Renew { delay_s: u32 },
    /// Copy it to the DLQ with `reason`, then delete it.
    DeadLetter { reason: String },
    /// FIFO: keep holding it and run the job again here after `delay_s`.
    RunAgainAfter { delay_s: u32 },
    /// Keep it invisible in the process's waiting room until a slot of its user frees
    /// (see `waiting_room.rs`).
    WaitForSlot,
}

/// Whether the rest of a FIFO group may go on after this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Continue,
    /// Hand the rest back behind this message, with the same delay.
    Stop,
}

/// What to write and what to do with the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    /// The attempt's end to record (compare-and-set on the attempt), if any.
    pub end: Option<AttemptEnd>,
    pub message: MessageAction,
    pub group: Group,
}

/// Before running: run the job, or settle the message at once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimDecision {
    Run,
    Settle(Decision),
}

/// The decision after a claim; `run_estimate` is how long an attempt runs lately (it
/// sizes how long a job released at its user's cap stays away).
pub(crate) fn on_claim(
    claim: &ClaimSeen,
    receive_count: u32,
    run_estimate: Duration,
    limits: &Limits,
) -> ClaimDecision {
    let settle = |end, message, group| {
        ClaimDecision::Settle(Decision {
            end,
            message,
            group,
        })
    };
    match claim {
        ClaimSeen::Claimed { attempt, failures } if out_of_tries(*failures, limits) => settle(
            Some(AttemptEnd::GaveUp {
                error: format!(
                    "gave up at attempt {attempt}: {failures} earlier attempts failed or lost their worker"
                ),
            }),
            MessageAction::DeadLetter {
                reason: format!("{failures} failed attempts (workers lost mid-job)"),
            },
            Group::Continue,
        ),
        ClaimSeen::Claimed { .. } => ClaimDecision::Run,
        ClaimSeen::AlreadyFinished => settle(None, MessageAction::Delete, Group::Continue),
        // Keep the copy (if the holder dies, it still carries the job) but out of the
        // way for one visibility timeout; in FIFO the group waits behind it.
        ClaimSeen::HeldElsewhere => settle(
            None,
            hand_back(limits.visibility_timeout_s, receive_count, limits),
            Group::Stop,
        ),
        ClaimSeen::NotFound(id) => settle(
            None,
            MessageAction::DeadLetter {
                reason: format!("no report with id {id}"),
            },
            Group::Continue,
        ),
        ClaimSeen::Unavailable => settle(
            None,
            hand_back(CLAIM_RETRY_DELAY_S, receive_count, limits),
            Group::Stop,
        ),
        // Not a failure and nothing written: back about when its turn comes, so other
        // users' jobs go first. Each release is one more SQS receive; `hand_back` renews
        // the message before its receives run out, so the redrive never sees a capped job.
        ClaimSeen::UserAtCap { ahead } => {
            if may_wait_in_room(receive_count, limits)
                && turn_is_near(*ahead, run_estimate, limits)
            {
                return settle(None, MessageAction::WaitForSlot, Group::Stop);
            }
            let delay_s = capped_release_delay_s(*ahead, run_estimate, limits);
            settle(None, hand_back(delay_s, receive_count, limits), Group::Stop)
        }
    }
}

/// The decision after an attempt that had counted `failures` before it began.
pub(crate) fn after_attempt(
    result: &AttemptResult,
    failures: i32,
    receive_count: u32,
    limits: &Limits,
) -> Decision {
    match result {
        AttemptResult::Completed { report_url, file } => Decision {
            end: Some(AttemptEnd::Completed {
                report_url: report_url.clone(),
                file: file.clone(),
            }),
            message: MessageAction::Delete,
            group: Group::Continue,
        },
        AttemptResult::Failed {
            error,
            permanent: true,
        } => Decision {
            end: Some(AttemptEnd::Failed {
                error: error.clone(),
            }),
            message: MessageAction::DeadLetter {
                reason: format!("permanent error: {error}"),
            },
            group: Group::Continue,
        },
        AttemptResult::Failed { error, .. } => {
            let failures = failures.saturating_add(1);
            if out_of_tries(failures, limits) {
                return Decision {
                    end: Some(AttemptEnd::Failed {
                        error: error.clone(),
                    }),
                    message: MessageAction::DeadLetter {
                        reason: format!("failed {failures} times; last error: {error}"),
                    },
                    group: Group::Continue,
                };
            }
            let delay_s = backoff_s(&limits.retry, failures);
            let message = if limits.fifo {
                MessageAction::RunAgainAfter { delay_s }
            } else {
                hand_back(delay_s, receive_count, limits)
            };
            Decision {
                end: Some(AttemptEnd::Requeued {
                    error: error.clone(),
                }),
                message,
                group: Group::Stop,
            }
        }
        AttemptResult::HostTrouble { error, pause_s } => Decision {
            end: Some(AttemptEnd::Released {
                note: Some(format!("not counted: host trouble ({error})")),
            }),
            message: hand_back(*pause_s, receive_count, limits),
            group: Group::Stop,
        },
        AttemptResult::Interrupted => Decision {
            end: Some(AttemptEnd::Released { note: None }),
            message: hand_back(0, receive_count, limits),
            group: Group::Stop,
        },
        // Settled like a success: nothing counted, the message deleted, a FIFO group
        // goes on with its next job.
        AttemptResult::Cancelled => Decision {
            end: Some(AttemptEnd::Cancelled),
            message: MessageAction::Delete,
            group: Group::Continue,
        },
    }
}

/// The decision once the end write found a pending cancel and ended the job
/// `cancelled` instead of handing it back: settled, like a cancel seen in a heartbeat.
pub(crate) fn cancelled_at_end() -> Decision {
    Decision {
        end: None,
        message: MessageAction::Delete,
        group: Group::Continue,
    }
}

/// How long a job released at its user's cap stays away: about the time until the
/// user's slots reach it, `ahead × run_estimate / cap` seconds (its `ahead` queued jobs
/// created before it run `cap` at a time), rounded up and clamped to
/// `[release_delay_s, max_release_delay_s]`.
///
/// A busy user's backlog is many messages that each come back to be released again.
/// Brought back at a fixed rhythm (2 s, later doubling up to 10 s), a backlog of 3,750
/// jobs was ~375 receives, claims and visibility changes a second of which ~25 could
/// run, and that churn took the workers' and SQS's time from every other user. Sized by
/// the backlog, each message comes back about when its turn comes: the user's slots
/// still fill as they free (the jobs next in line come back after the shortest delay),
/// and the far end of the backlog stays away for up to the longest.
pub(crate) fn capped_release_delay_s(ahead: u32, run_estimate: Duration, limits: &Limits) -> u32 {
    let shortest = limits.fair_release_delay_s;
    let longest = longest_release_delay_s(limits);
    let turn_s = turn_in_s(ahead, run_estimate, limits);
    // Finite and ≥ 0 (a Duration's seconds over a positive cap); `as` saturates, and the
    // clamp bounds it.
    (turn_s.ceil() as u32).clamp(shortest, longest)
}

/// About how long until a capped job's turn: its `ahead` queued jobs run `cap` at a
/// time, each for about `run_estimate`.
fn turn_in_s(ahead: u32, run_estimate: Duration, limits: &Limits) -> f64 {
    // With the cap off no claim is `UserAtCap`; 0 counts as 1 so the division is defined.
    let cap = limits.max_in_flight_per_user.max(1);
    f64::from(ahead) * run_estimate.as_secs_f64() / f64::from(cap)
}

/// What the poller does with a received job of a user who has jobs waiting in its room:
/// that user was at the cap moments ago, so the job is kept out of the way without a
/// claim (no database round trip, no worker).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Screened {
    /// Claim it as usual (its message has few receives left: the worker's hand-back
    /// renews it; or waiting is off).
    Claim,
    /// Behind the user's waiting jobs in the room.
    Wait,
    /// Back to SQS for `delay_s`: the room holds the user's next jobs already.
    Release { delay_s: u32 },
}

/// Screens a received job whose user has `waiting` jobs in the room. With its turn
/// within [`Limits::wait_in_room_within_s`] (the `waiting` jobs run `cap` at a time), it
/// waits too. Otherwise its turn is further away than the longest release delay, so it
/// goes back to SQS for that long.
pub(crate) fn screen_for_waiting_user(
    waiting: usize,
    receive_count: u32,
    run_estimate: Duration,
    limits: &Limits,
) -> Screened {
    if !may_wait_in_room(receive_count, limits) {
        return Screened::Claim;
    }
    let ahead = u32::try_from(waiting).unwrap_or(u32::MAX);
    if turn_is_near(ahead, run_estimate, limits) {
        return Screened::Wait;
    }
    Screened::Release {
        delay_s: longest_release_delay_s(limits),
    }
}

/// Whether a capped job may wait in the process's waiting room at all: not when waiting
/// is off (FIFO), and not when its message is near its last receives — a hand-back then
/// renews it, while the room, when full, would hand it back once more as it is, and SQS's
/// redrive must never see a capped job.
fn may_wait_in_room(receive_count: u32, limits: &Limits) -> bool {
    let renews = matches!(
        hand_back(0, receive_count, limits),
        MessageAction::Renew { .. }
    );
    limits.wait_in_room_within_s > 0 && !renews
}

/// Whether a capped job's turn is within [`Limits::wait_in_room_within_s`].
fn turn_is_near(ahead: u32, run_estimate: Duration, limits: &Limits) -> bool {
    turn_in_s(ahead, run_estimate, limits) <= f64::from(limits.wait_in_room_within_s)
}

/// `fairness.max_release_delay_s`, never below `release_delay_s`.
fn longest_release_delay_s(limits: &Limits) -> u32 {
    limits
        .fair_max_release_delay_s
        .max(limits.fair_release_delay_s)
}

/// How far away a capped job's turn may be for it to wait in the process's waiting room:
/// as far as the longest release delay (`fairness.max_release_delay_s`). Held here, its
/// message costs a renewal every third of a visibility timeout (one batched call per ten
/// held messages); sent back, it would cost a receive, a claim and a release each time it
/// came back too early. Never in FIFO queues, whose workers keep each group's messages
/// in order themselves.
pub(crate) fn wait_in_room_within_s(fifo: bool, max_release_delay_s: u32) -> u32 {
    if fifo {
        0
    } else {
        max_release_delay_s
    }
}

/// Hands a message back to SQS to be received again after `delay_s`: hidden, or — when
/// it has few receives left before SQS's redrive — replaced by a fresh copy.
pub(crate) fn hand_back(delay_s: u32, receive_count: u32, limits: &Limits) -> MessageAction {
    let left = limits.max_receive_count.saturating_sub(receive_count);
    if left <= RENEW_WHEN_RECEIVES_LEFT {
        MessageAction::Renew { delay_s }
    } else {
        MessageAction::Hide { delay_s }
    }
}

fn out_of_tries(failures: i32, limits: &Limits) -> bool {
    i64::from(failures) >= i64::from(limits.max_attempts)
}

/// The delay before try `failures + 1`: `base × 2^(failures−1)`, capped.
pub(crate) fn backoff_s(retry: &RetrySettings, failures: i32) -> u32 {
    let exponent = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    retry
        .backoff_base_s
        .saturating_mul(1u32 << exponent)
        .min(retry.backoff_max_s)
}

/// How often a running job's message visibility and row are renewed.
pub(crate) fn beat_interval_s(visibility_timeout_s: u32) -> u32 {
    (visibility_timeout_s / 3).max(1)
}

/// How long a row's heartbeat may be silent before its job counts as lost: four beats,
/// so one slow or missed beat never lets a second worker take a live job.
pub(crate) fn stale_after_s(visibility_timeout_s: u32) -> i64 {
    i64::from(beat_interval_s(visibility_timeout_s)) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run estimate for claims whose decision does not depend on it.
    const RUN: Duration = Duration::from_secs(1);

    fn limits(fifo: bool) -> Limits {
        Limits {
            max_attempts: 3,
            max_receive_count: 10,
            visibility_timeout_s: 30,
            fifo,
            retry: RetrySettings {
                backoff_base_s: 2,
                backoff_max_s: 300,
            },
            max_in_flight_per_user: 0,
            fair_release_delay_s: 2,
            fair_max_release_delay_s: 10,
            wait_in_room_within_s: 0,
        }
    }

    fn failed(permanent: bool) -> AttemptResult {
        AttemptResult::Failed {
            error: "boom".into(),
            permanent,
        }
    }

    #[test]
    fn a_cancelled_attempt_ends_cancelled_and_its_message_is_deleted_uncounted() {
        for fifo in [false, true] {
            let decision = after_attempt(&AttemptResult::Cancelled, 2, 9, &limits(fifo));
            assert_eq!(
                decision,
                Decision {
                    end: Some(AttemptEnd::Cancelled),
                    message: MessageAction::Delete,
                    group: Group::Continue,
                },
                "fifo {fifo}"
            );
        }
    }

    #[test]
    fn a_fresh_claim_runs() {
        let claim = ClaimSeen::Claimed {
            attempt: 1,
            failures: 0,
        };
        assert_eq!(on_claim(&claim, 1, RUN, &limits(false)), ClaimDecision::Run);
    }

    #[test]
    fn a_claim_after_max_lost_workers_gives_up_and_dead_letters() {
        let claim = ClaimSeen::Claimed {
            attempt: 4,
            failures: 3,
        };
        let ClaimDecision::Settle(decision) = on_claim(&claim, 4, RUN, &limits(false)) else {
            panic!("must not run");
        };
        assert!(matches!(decision.end, Some(AttemptEnd::GaveUp { .. })));
        assert!(matches!(decision.message, MessageAction::DeadLetter { .. }));
    }

    #[test]
    fn a_duplicate_of_a_finished_job_is_deleted() {
        let decision = on_claim(&ClaimSeen::AlreadyFinished, 1, RUN, &limits(false));
        assert_eq!(
            decision,
            ClaimDecision::Settle(Decision {
                end: None,
                message: MessageAction::Delete,
                group: Group::Continue
            })
        );
    }

    #[test]
    fn a_duplicate_of_a_running_job_is_hidden_for_a_visibility_timeout_and_stops_the_group() {
        let ClaimDecision::Settle(decision) =
            on_claim(&ClaimSeen::HeldElsewhere, 1, RUN, &limits(true))
        else {
            panic!("must not run");
        };
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 30 });
        assert_eq!(decision.group, Group::Stop);
        assert_eq!(decision.end, None);
    }

    #[test]
    fn a_poison_message_is_dead_lettered_at_once() {
        let id = uuid::Uuid::new_v4();
        let ClaimDecision::Settle(decision) =
            on_claim(&ClaimSeen::NotFound(id), 1, RUN, &limits(false))
        else {
            panic!("must not run");
        };
        let MessageAction::DeadLetter { reason } = decision.message else {
            panic!("dead-lettered");
        };
        assert!(reason.contains(&id.to_string()), "{reason}");
    }

    fn capped(cap: u32) -> Limits {
        Limits {
            max_in_flight_per_user: cap,
            fair_max_release_delay_s: 300,
            ..limits(false)
        }
    }

    #[test]
    fn a_job_at_its_users_cap_goes_back_without_counting_and_stops_its_group() {
        let seen = ClaimSeen::UserAtCap { ahead: 0 };
        let ClaimDecision::Settle(decision) = on_claim(&seen, 1, RUN, &capped(5)) else {
            panic!("a capped job does not run");
        };
        assert_eq!(
            decision,
            Decision {
                end: None,
                message: MessageAction::Hide { delay_s: 2 },
                group: Group::Stop,
            }
        );
    }

    #[test]
    fn a_capped_job_near_the_end_of_its_receives_is_renewed_never_redriven() {
        let limits = capped(5);
        let seen = ClaimSeen::UserAtCap { ahead: 100 };
        let ClaimDecision::Settle(decision) =
            on_claim(&seen, limits.max_receive_count, RUN, &limits)
        else {
            panic!("a capped job does not run");
        };
        assert_eq!(decision.message, MessageAction::Renew { delay_s: 20 });
    }

    #[test]
    fn a_job_far_behind_its_users_backlog_stays_away_until_about_its_turn() {
        // 1,000 jobs ahead, 2 s each, 25 at a time: its turn is 80 s away.
        let seen = ClaimSeen::UserAtCap { ahead: 1_000 };
        let ClaimDecision::Settle(decision) =
            on_claim(&seen, 1, Duration::from_secs(2), &capped(25))
        else {
            panic!("a capped job does not run");
        };
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 80 });
    }

    #[test]
    fn a_capped_job_whose_turn_is_near_waits_in_the_room_and_a_far_one_goes_back() {
        let limits = Limits {
            wait_in_room_within_s: wait_in_room_within_s(false, 15),
            ..capped(5)
        };
        // 75 ahead, 1 s each, 5 at a time: 15 s away, within the longest delay.
        let near = on_claim(&ClaimSeen::UserAtCap { ahead: 75 }, 1, RUN, &limits);
        let ClaimDecision::Settle(decision) = near else {
            panic!("a capped job does not run");
        };
        assert_eq!(decision.message, MessageAction::WaitForSlot);
        assert_eq!(decision.end, None, "waiting is not an attempt");
        let far = on_claim(&ClaimSeen::UserAtCap { ahead: 76 }, 1, RUN, &limits);
        let ClaimDecision::Settle(decision) = far else {
            panic!("a capped job does not run");
        };
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 16 });
    }

    fn with_room() -> Limits {
        Limits {
            wait_in_room_within_s: 15,
            ..capped(5)
        }
    }

    #[test]
    fn a_job_of_a_waiting_user_joins_the_room_while_its_turn_is_near() {
        // 75 waiting, 1 s each, 5 at a time: 15 s.
        assert_eq!(
            screen_for_waiting_user(75, 1, RUN, &with_room()),
            Screened::Wait
        );
    }

    #[test]
    fn a_job_behind_a_full_line_goes_back_for_the_longest_delay() {
        let limits = Limits {
            fair_max_release_delay_s: 15,
            ..with_room()
        };
        for receives in [1, 2, 5] {
            assert_eq!(
                screen_for_waiting_user(76, receives, RUN, &limits),
                Screened::Release { delay_s: 15 },
                "{receives}"
            );
        }
    }

    #[test]
    fn a_job_near_its_last_receives_or_without_a_room_is_claimed() {
        let limits = with_room();
        let last = limits.max_receive_count - RENEW_WHEN_RECEIVES_LEFT;
        assert_eq!(
            screen_for_waiting_user(0, last, RUN, &limits),
            Screened::Claim
        );
        assert_eq!(
            screen_for_waiting_user(0, 1, RUN, &capped(5)),
            Screened::Claim
        );
    }

    #[test]
    fn fifo_jobs_never_wait_in_the_room() {
        assert_eq!(wait_in_room_within_s(true, 300), 0);
        assert_eq!(wait_in_room_within_s(false, 300), 300);
        // Even the job next in line: with no room, it goes back to SQS.
        let next_in_line = on_claim(&ClaimSeen::UserAtCap { ahead: 0 }, 1, RUN, &capped(5));
        let ClaimDecision::Settle(decision) = next_in_line else {
            panic!("a capped job does not run");
        };
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 2 });
    }

    #[test]
    fn a_capped_job_near_its_last_receives_is_renewed_rather_than_held() {
        let limits = Limits {
            wait_in_room_within_s: 15,
            ..capped(5)
        };
        let seen = ClaimSeen::UserAtCap { ahead: 0 };
        let ClaimDecision::Settle(decision) =
            on_claim(&seen, limits.max_receive_count - 2, RUN, &limits)
        else {
            panic!("a capped job does not run");
        };
        assert_eq!(decision.message, MessageAction::Renew { delay_s: 2 });
    }

    #[test]
    fn the_delay_is_the_time_until_the_users_slots_reach_the_job_rounded_up() {
        let limits = capped(4);
        let run = Duration::from_millis(1_500);
        assert_eq!(capped_release_delay_s(10, run, &limits), 4, "3.75 s");
        assert_eq!(capped_release_delay_s(40, run, &limits), 15);
        assert_eq!(capped_release_delay_s(41, run, &limits), 16, "15.4 s");
    }

    #[test]
    fn a_job_next_in_line_comes_back_after_the_shortest_delay() {
        let limits = capped(4);
        for ahead in [0, 1, 5] {
            assert_eq!(capped_release_delay_s(ahead, RUN, &limits), 2, "{ahead}");
        }
        let instant = Duration::ZERO;
        assert_eq!(capped_release_delay_s(1_000, instant, &limits), 2);
    }

    #[test]
    fn no_backlog_keeps_a_job_away_longer_than_the_longest_delay() {
        let mut limits = capped(1);
        let hour = Duration::from_secs(3_600);
        assert_eq!(capped_release_delay_s(1_000, hour, &limits), 300);
        assert_eq!(
            capped_release_delay_s(u32::MAX, Duration::MAX, &limits),
            300
        );
        limits.fair_max_release_delay_s = 10;
        assert_eq!(capped_release_delay_s(1_000, RUN, &limits), 10);
        // A cap of 0 (off) cannot release a job; were it asked, no division by zero.
        limits.max_in_flight_per_user = 0;
        assert_eq!(capped_release_delay_s(5, RUN, &limits), 5);
    }

    #[test]
    fn a_claim_that_cannot_commit_is_retried_without_counting() {
        let ClaimDecision::Settle(decision) =
            on_claim(&ClaimSeen::Unavailable, 2, RUN, &limits(false))
        else {
            panic!("must not run");
        };
        assert_eq!(decision.end, None);
        assert_eq!(
            decision.message,
            MessageAction::Hide {
                delay_s: CLAIM_RETRY_DELAY_S
            }
        );
    }

    #[test]
    fn completion_deletes_the_message_and_lets_the_group_go_on() {
        let result = AttemptResult::Completed {
            report_url: None,
            file: None,
        };
        let decision = after_attempt(&result, 0, 1, &limits(true));
        assert_eq!(decision.message, MessageAction::Delete);
        assert_eq!(decision.group, Group::Continue);
        assert!(matches!(decision.end, Some(AttemptEnd::Completed { .. })));
    }

    #[test]
    fn a_failure_with_tries_left_is_requeued_with_backoff() {
        let decision = after_attempt(&failed(false), 1, 2, &limits(false));
        assert!(matches!(decision.end, Some(AttemptEnd::Requeued { .. })));
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 4 });
    }

    #[test]
    fn the_last_allowed_failure_ends_failed_and_dead_letters_whatever_the_receive_count() {
        for receive_count in [1, 3, 9, 40] {
            let decision = after_attempt(&failed(false), 2, receive_count, &limits(false));
            assert!(matches!(decision.end, Some(AttemptEnd::Failed { .. })));
            assert!(matches!(decision.message, MessageAction::DeadLetter { .. }));
        }
    }

    #[test]
    fn a_permanent_error_fails_at_once() {
        let decision = after_attempt(&failed(true), 0, 1, &limits(false));
        assert!(matches!(decision.end, Some(AttemptEnd::Failed { .. })));
        assert!(matches!(decision.message, MessageAction::DeadLetter { .. }));
    }

    #[test]
    fn a_fifo_failure_runs_again_in_place_to_keep_the_group_order() {
        let decision = after_attempt(&failed(false), 0, 1, &limits(true));
        assert_eq!(
            decision.message,
            MessageAction::RunAgainAfter { delay_s: 2 }
        );
        assert!(matches!(decision.end, Some(AttemptEnd::Requeued { .. })));
    }

    #[test]
    fn host_trouble_and_shutdown_release_without_counting() {
        let trouble = AttemptResult::HostTrouble {
            error: "Too many open files".into(),
            pause_s: 8,
        };
        let decision = after_attempt(&trouble, 2, 3, &limits(false));
        assert!(matches!(
            decision.end,
            Some(AttemptEnd::Released { note: Some(_) })
        ));
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 8 });
        let decision = after_attempt(&AttemptResult::Interrupted, 2, 3, &limits(false));
        assert_eq!(decision.end, Some(AttemptEnd::Released { note: None }));
        assert_eq!(decision.message, MessageAction::Hide { delay_s: 0 });
        assert_eq!(decision.group, Group::Stop);
    }

    #[test]
    fn a_message_near_the_redrive_count_is_renewed_instead_of_hidden() {
        let l = limits(false);
        assert_eq!(hand_back(5, 7, &l), MessageAction::Hide { delay_s: 5 });
        assert_eq!(hand_back(5, 8, &l), MessageAction::Renew { delay_s: 5 });
        assert_eq!(hand_back(5, 10, &l), MessageAction::Renew { delay_s: 5 });
        assert_eq!(hand_back(5, 25, &l), MessageAction::Renew { delay_s: 5 });
    }

    #[test]
    fn backoff_doubles_per_failure_and_is_capped() {
        let retry = RetrySettings {
            backoff_base_s: 2,
            backoff_max_s: 10,
        };
        assert_eq!(backoff_s(&retry, 1), 2);
        assert_eq!(backoff_s(&retry, 2), 4);
        assert_eq!(backoff_s(&retry, 3), 8);
        assert_eq!(backoff_s(&retry, 4), 10);
        assert_eq!(backoff_s(&retry, 60), 10);
        assert_eq!(backoff_s(&retry, 0), 2);
    }

    #[test]
    fn a_row_is_stale_only_after_four_missed_beats() {
        assert_eq!(beat_interval_s(30), 10);
        assert_eq!(stale_after_s(30), 40);
        assert_eq!(stale_after_s(6), 8);
    }
}
