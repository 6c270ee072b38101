//! The waiting room: jobs over their user's cap (`fairness.max_in_flight_per_user`)
//! whose turn is near wait in this process, their messages held invisible, instead of
//! going back to SQS.
//!
//! Sent back to SQS, a job next in its user's line returns after a whole-second delay,
//! in a clump with the others released in the same second; the user's slots stay empty
//! until it does, and every job that finds them full again is one more receive, claim
//! and release, paid by the workers every other user waits for. Held here, the job is
//! tried again the moment one of its user's jobs ends in this process (its slot freed),
//! or, for slots freed by other processes of the fleet, at least every
//! [`RETRY_EVERY`]. Each user's line is ordered by how many of the user's queued jobs
//! were ahead of the job when it was capped, so the oldest goes first.
//!
//! The poller owns the room and keeps its messages invisible; a pure structure, tested
//! here.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::queue::ReceivedMessage;

/// How often a user's line is tried when no job of that user ended here: slots freed by
/// other processes of the fleet are found within this.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Longest a message stays in the room before it goes back to SQS (and, received again,
/// is claimed and admitted again): well inside SQS's 12 h limit on keeping one receipt
/// invisible, whatever the run estimate said about its turn.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(3_600);

/// Most jobs the room holds at once (all users): each is a held message and a little
/// memory; beyond it, a capped job goes back to SQS until about its turn.
pub(crate) const MAX_WAITING: usize = 5_000;

/// A job a worker found over its user's cap, handed to the room.
#[derive(Debug)]
pub(crate) struct CappedJob {
    pub message: ReceivedMessage,
    pub user_id: i64,
    /// The user's queued jobs ahead of it.
    pub ahead: u32,
}

/// A job waiting for a slot of its user.
#[derive(Debug)]
struct Waiting {
    message: ReceivedMessage,
    /// The user's queued jobs ahead of it when it was capped: its place in the line.
    ahead: u32,
    /// When its message turns visible unless made invisible again.
    invisible_until: Instant,
    /// When it entered the room.
    held_since: Instant,
}

/// One user's waiting jobs.
#[derive(Debug)]
struct Line {
    waiting: VecDeque<Waiting>,
    /// Jobs of this user that ended here since the line was last tried: a slot each.
    freed: usize,
    /// When the line was last tried (or opened).
    last_try: Instant,
}

/// Jobs over their user's cap, held until a slot of their user frees.
#[derive(Debug, Default)]
pub(crate) struct WaitingRoom {
    lines: HashMap<i64, Line>,
    len: usize,
}

impl WaitingRoom {
    /// Jobs waiting now.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Jobs of `user` waiting now.
    pub(crate) fn waiting(&self, user: i64) -> usize {
        self.lines.get(&user).map_or(0, |line| line.waiting.len())
    }

    /// Whether another job fits ([`MAX_WAITING`]).
    pub(crate) fn has_room(&self) -> bool {
        self.len < MAX_WAITING
    }

    /// Takes a capped job into its user's line, its message invisible until
    /// `invisible_until` (the caller checks [`Self::has_room`] first).
    pub(crate) fn admit(&mut self, job: CappedJob, now: Instant, invisible_until: Instant) {
        let CappedJob {
            message,
            user_id,
            ahead,
        } = job;
        let line = self.lines.entry(user_id).or_insert_with(|| Line {
            waiting: VecDeque::new(),
            freed: 0,
            last_try: now,
        });
        // After every job with as many or fewer ahead: the line keeps the user's order.
        let place = line.waiting.partition_point(|w| w.ahead <= ahead);
        line.waiting.insert(
            place,
            Waiting {
                message,
                ahead,
                invisible_until,
                held_since: now,
            },
        );
        self.len += 1;
    }

    /// One of `user`'s jobs ended in this process: its slot may go to the user's next
    /// waiting job.
    pub(crate) fn slot_freed(&mut self, user: i64) {
        if let Some(line) = self.lines.get_mut(&user) {
            line.freed = (line.freed + 1).min(line.waiting.len());
        }
    }

    /// The next job to try, taken out of the room: first the head of a line whose user
    /// freed a slot here, else the head of a line not tried for [`RETRY_EVERY`].
    pub(crate) fn next_to_try(&mut self, now: Instant) -> Option<ReceivedMessage> {
        let user = self
            .lines
            .iter()
            .find(|(_, line)| line.freed > 0)
            .or_else(|| {
                self.lines
                    .iter()
                    .find(|(_, line)| now.saturating_duration_since(line.last_try) >= RETRY_EVERY)
            })
            .map(|(user, _)| *user)?;
        let line = self.lines.get_mut(&user)?;
        line.freed = line.freed.saturating_sub(1);
        line.last_try = now;
        let next = line.waiting.pop_front();
        if line.waiting.is_empty() {
            self.lines.remove(&user);
        }
        let next = next?;
        self.len -= 1;
        Some(next.message)
    }

    /// Receipt handles of the messages that turn visible before `now + margin`, each
    /// counted as invisible until `renewed_until` (the caller renews them).
    pub(crate) fn due_for_renewal(
        &mut self,
        now: Instant,
        margin: Duration,
        renewed_until: Instant,
    ) -> Vec<String> {
        self.lines
            .values_mut()
            .flat_map(|line| line.waiting.iter_mut())
            .filter(|w| w.invisible_until <= now + margin)
            .map(|w| {
                w.invisible_until = renewed_until;
                w.message.receipt_handle.clone()
            })
            .collect()
    }

    /// The messages held for [`MAX_HOLD`], taken out (to go back to SQS).
    pub(crate) fn take_overdue(&mut self, now: Instant) -> Vec<ReceivedMessage> {
        let held_long = |w: &Waiting| now.saturating_duration_since(w.held_since) >= MAX_HOLD;
        let mut overdue = Vec::new();
        // Rebuilt only when it holds an overdue job: this runs every second.
        for line in self
            .lines
            .values_mut()
            .filter(|l| l.waiting.iter().any(held_long))
        {
            let (keep, out): (VecDeque<Waiting>, VecDeque<Waiting>) =
                line.waiting.drain(..).partition(|w| !held_long(w));
            line.waiting = keep;
            line.freed = line.freed.min(line.waiting.len());
            overdue.extend(out.into_iter().map(|w| w.message));
        }
        self.lines.retain(|_, line| !line.waiting.is_empty());
        self.len -= overdue.len();
        overdue
    }

    /// Every waiting message, taken out (shutdown hands them back).
    pub(crate) fn empty_out(&mut self) -> Vec<ReceivedMessage> {
        self.len = 0;
        self.lines
            .drain()
            .flat_map(|(_, line)| line.waiting.into_iter().map(|w| w.message))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(user_id: i64, handle: &str, ahead: u32) -> CappedJob {
        let message = ReceivedMessage {
            message_id: handle.into(),
            receipt_handle: handle.into(),
            body: String::new(),
            receive_count: 1,
            group_id: None,
            user_id: Some(user_id),
        };
        CappedJob {
            message,
            user_id,
            ahead,
        }
    }

    fn handle(message: Option<ReceivedMessage>) -> Option<String> {
        message.map(|m| m.receipt_handle)
    }

    fn room_with(jobs: &[(i64, &str, u32)], now: Instant) -> WaitingRoom {
        let mut room = WaitingRoom::default();
        let until = now + Duration::from_secs(30);
        for (user, name, ahead) in jobs {
            room.admit(capped(*user, name, *ahead), now, until);
        }
        room
    }

    #[test]
    fn nothing_is_tried_before_a_slot_frees_or_the_retry_interval_passes() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "a", 0)], now);
        assert_eq!(handle(room.next_to_try(now)), None);
        assert_eq!(room.len(), 1);
    }

    #[test]
    fn a_freed_slot_goes_to_the_job_with_the_fewest_ahead_of_that_user() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "late", 9), (2, "other", 0), (1, "early", 3)], now);
        room.slot_freed(1);
        assert_eq!(handle(room.next_to_try(now)).as_deref(), Some("early"));
        assert_eq!(handle(room.next_to_try(now)), None, "one slot, one try");
        assert_eq!(room.len(), 2);
    }

    #[test]
    fn jobs_with_the_same_place_keep_their_arrival_order() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "first", 2), (1, "second", 2)], now);
        room.slot_freed(1);
        room.slot_freed(1);
        assert_eq!(handle(room.next_to_try(now)).as_deref(), Some("first"));
        assert_eq!(handle(room.next_to_try(now)).as_deref(), Some("second"));
    }

    #[test]
    fn a_slot_freed_by_a_user_with_no_waiting_job_is_not_kept() {
        let now = Instant::now();
        let mut room = WaitingRoom::default();
        room.slot_freed(1);
        let until = now + Duration::from_secs(30);
        room.admit(capped(1, "a", 0), now, until);
        assert_eq!(handle(room.next_to_try(now)), None);
    }

    #[test]
    fn freed_slots_count_at_most_the_jobs_waiting() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "a", 0)], now);
        room.slot_freed(1);
        room.slot_freed(1);
        assert!(room.next_to_try(now).is_some());
        let until = now + Duration::from_secs(30);
        room.admit(capped(1, "b", 0), now, until);
        assert_eq!(handle(room.next_to_try(now)), None);
    }

    #[test]
    fn a_line_is_tried_after_the_retry_interval_for_slots_freed_elsewhere() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "a", 0), (1, "b", 1)], now);
        let later = now + RETRY_EVERY;
        assert_eq!(handle(room.next_to_try(later)).as_deref(), Some("a"));
        assert_eq!(handle(room.next_to_try(later)), None, "tried just now");
        assert_eq!(
            handle(room.next_to_try(later + RETRY_EVERY)).as_deref(),
            Some("b")
        );
        assert_eq!(room.len(), 0);
    }

    #[test]
    fn only_messages_about_to_turn_visible_are_renewed() {
        let now = Instant::now();
        let mut room = WaitingRoom::default();
        let soon = now + Duration::from_secs(5);
        let later = now + Duration::from_secs(25);
        room.admit(capped(1, "soon", 0), now, soon);
        room.admit(capped(1, "later", 1), now, later);
        let renewed_until = now + Duration::from_secs(30);
        let margin = Duration::from_secs(10);
        assert_eq!(
            room.due_for_renewal(now, margin, renewed_until),
            vec!["soon"]
        );
        assert!(
            room.due_for_renewal(now, margin, renewed_until).is_empty(),
            "renewed once"
        );
    }

    #[test]
    fn the_room_is_full_at_its_bound() {
        let now = Instant::now();
        let mut room = WaitingRoom::default();
        let until = now + Duration::from_secs(30);
        for i in 0..MAX_WAITING {
            assert!(room.has_room());
            room.admit(capped(1, &i.to_string(), 0), now, until);
        }
        assert!(!room.has_room());
    }

    #[test]
    fn a_message_held_for_the_longest_hold_is_taken_out() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "old", 0)], now);
        let later = now + Duration::from_secs(60);
        room.admit(capped(1, "new", 1), later, later + Duration::from_secs(30));
        assert!(room.take_overdue(later).is_empty());
        let out: Vec<String> = room
            .take_overdue(now + MAX_HOLD)
            .into_iter()
            .map(|m| m.receipt_handle)
            .collect();
        assert_eq!(out, vec!["old"]);
        assert_eq!((room.len(), room.waiting(1)), (1, 1));
    }

    #[test]
    fn the_room_counts_each_users_waiting_jobs() {
        let now = Instant::now();
        let room = room_with(&[(1, "a", 0), (1, "b", 1), (2, "c", 0)], now);
        assert_eq!(
            (room.waiting(1), room.waiting(2), room.waiting(3)),
            (2, 1, 0)
        );
    }

    #[test]
    fn emptying_out_returns_every_message() {
        let now = Instant::now();
        let mut room = room_with(&[(1, "a", 0), (2, "b", 0)], now);
        let mut out: Vec<String> = room
            .empty_out()
            .into_iter()
            .map(|m| m.receipt_handle)
            .collect();
        out.sort();
        assert_eq!(out, vec!["a", "b"]);
        assert_eq!(room.len(), 0);
    }
}
