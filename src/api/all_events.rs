//! `GET /events`: every report's status and progress changes as server-sent events, for
//! dashboards, filtered by status and user.
//!
//! One feed per api process, running only while someone listens (and a minute after, so
//! a reconnect can resume). It never scans the table: each look reads, through indexes,
//! the reports created since its last look, those finished since, and the running ones
//! (as many as the fleet has worker slots), plus by id the ones that stopped running
//! without finishing (handed back for a retry). "Since its last look" is exact, not a
//! guess with a margin: the look starts by reading the *write horizon*, the start of the
//! oldest transaction still open in the database. Every write stamped before it is
//! committed and visible to the reads that follow; writes stamped after it are read
//! again next time, and a row's state seen before is not told twice.
//!
//! An event's id is the horizon of the look that saw it (microseconds). A client that
//! reconnects with it as `Last-Event-ID` is sent again every buffered event of a change
//! written at or after that time — at least once: a change can come twice, never not at
//! all while the process's buffer reaches back that far; when it does not, the stream
//! opens with `event: reset` (reload the list with `GET /reports`, then follow).
//!
//! Not seen: a failed report put back in the queue by hand (`POST /reports/{id}/retry`,
//! a redrive) shows up when it runs again, not when it is re-queued.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest};
use actix_web_lab::sse;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::error::ApiError;
use super::events::{kind_between, last_event_id, Kind, KEEP_ALIVE};
use super::{input, AppState};
use crate::db::models::{JobStatus, ReportRecord};
use crate::db::{self, reports, DbPool};

/// How often the feed looks: an event reaches clients within this (plus the writer's
/// flush) of its commit.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// How long the feed keeps looking after its last subscriber left, so that a client
/// reconnecting within it resumes without loss.
const LINGER: Duration = Duration::from_secs(60);

/// Events kept for resuming: at most this many, and none older than [`BUFFER_FOR`].
const BUFFER_EVENTS: usize = 10_000;
const BUFFER_FOR: Duration = Duration::from_secs(300);

/// Events a subscriber may fall behind by before it is dropped (it reconnects and
/// resumes from the buffer); it can never slow the feed.
const SUBSCRIBER_BACKLOG: usize = 4_096;

/// How long a new subscriber waits for a stopped feed's first look.
const START_WAIT: Duration = Duration::from_secs(5);

/// The longest open transaction the horizon waits for (see [`reports::write_horizon`]).
const HORIZON_MAX_LAG_S: i32 = 60;

/// One change, as every subscriber gets it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FeedEvent {
    /// The SSE id: the horizon of the look that saw the change, in microseconds.
    seen_at: i64,
    /// When the row was last written, in microseconds: what resuming compares.
    written_at: i64,
    kind: Kind,
    status: String,
    user_id: Option<i64>,
    data: String,
}

impl FeedEvent {
    fn new(kind: Kind, row: &ReportRecord, seen_at: i64, link_ttl_s: Option<u64>) -> Self {
        let data = match kind {
            Kind::Status => super::reports::record_json(row, link_ttl_s),
            Kind::Progress => json!({ "reportId": row.id, "progress": row.progress }),
        };
        Self {
            seen_at,
            written_at: row.updated_at.timestamp_micros(),
            kind,
            status: row.status.clone(),
            user_id: row.user_id,
            data: data.to_string(),
        }
    }

    fn to_sse(&self) -> sse::Event {
        sse::Data::new(self.data.clone())
            .event(self.kind.name())
            .id(self.seen_at.to_string())
            .into()
    }
}

/// What the feed knows between looks: the pure part, tested without a database.
#[derive(Debug, Default)]
struct FeedState {
    /// The horizon of the last look; `None` while the feed is stopped.
    horizon: Option<DateTime<Utc>>,
    /// Rows whose state was told (or learnt at start), while a look may read them again;
    /// the running ones among them are what ran at the last look.
    known: HashMap<Uuid, Arc<ReportRecord>>,
    /// Recent events, oldest first, for resuming.
    buffer: VecDeque<(Instant, Arc<FeedEvent>)>,
    /// Every change written at or after this (microseconds) is in `buffer`.
    covered_since: Option<i64>,
    /// What a status event's report says of its file link's expiry.
    link_ttl_s: Option<u64>,
}

impl FeedState {
    /// The first look: learns what runs now, tells nothing.
    fn start(&mut self, horizon: DateTime<Utc>, running: Vec<ReportRecord>) {
        self.known = running
            .into_iter()
            .map(|row| (row.id, Arc::new(row)))
            .collect();
        self.horizon = Some(horizon);
        self.covered_since = Some(horizon.timestamp_micros());
    }

    fn stop(&mut self) {
        *self = Self {
            link_ttl_s: self.link_ttl_s,
            ..Self::default()
        };
    }

    /// Ids that ran at the last look and are in none of this look's reads.
    fn stopped_running(&self, read: &[ReportRecord]) -> Vec<Uuid> {
        let read: HashSet<Uuid> = read.iter().map(|row| row.id).collect();
        self.known
            .values()
            .filter(|row| row.status == JobStatus::InProgress.as_str() && !read.contains(&row.id))
            .map(|row| row.id)
            .collect()
    }

    /// Takes in one look's rows: the events to tell, in the order seen.
    fn apply(&mut self, horizon: DateTime<Utc>, rows: Vec<ReportRecord>) -> Vec<FeedEvent> {
        let seen_at = horizon.timestamp_micros();
        let mut events = Vec::new();
        for row in rows {
            let before = self.known.get(&row.id);
            if before.is_some_and(|b| row.updated_at < b.updated_at) {
                continue; // an older read of a row seen newer already
            }
            if let Some(kind) = kind_between(before.map(Arc::as_ref), &row) {
                events.push(FeedEvent::new(kind, &row, seen_at, self.link_ttl_s));
            }
            self.known.insert(row.id, Arc::new(row));
        }
        // A row no look reads again needs no memory: not running, and created and
        // finished (if at all) before the horizon.
        self.known.retain(|_, row| {
            row.status == JobStatus::InProgress.as_str()
                || row.created_at >= horizon
                || row.finished_at.is_some_and(|at| at >= horizon)
        });
        self.horizon = Some(horizon);
        events
    }

    /// Keeps `event` for resuming, forgetting the oldest past the buffer's bounds.
    fn remember(&mut self, event: Arc<FeedEvent>, now: Instant) {
        self.buffer.push_back((now, event));
        while self.buffer.len() > BUFFER_EVENTS
            || self
                .buffer
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > BUFFER_FOR)
        {
            let Some((_, gone)) = self.buffer.pop_front() else {
                break;
            };
            // Changes written up to the forgotten one's time may be gone with it.
            let after_gone = gone.written_at.saturating_add(1);
            self.covered_since = self.covered_since.map(|at| at.max(after_gone));
        }
    }

    /// What a client resuming from `from` (an event id it got) is owed, or `None` when
    /// the buffer does not reach back that far.
    fn replay_from(&self, from: i64) -> Option<Vec<Arc<FeedEvent>>> {
        if self.covered_since.is_none_or(|covered| from < covered) {
            return None;
        }
        Some(
            self.buffer
                .iter()
                .filter(|(_, event)| event.written_at >= from)
                .map(|(_, event)| event.clone())
                .collect(),
        )
    }
}

/// The process's feed of every report's changes.
#[derive(Clone)]
pub(crate) struct AllReportsFeed {
    state: Arc<Mutex<FeedState>>,
    sender: broadcast::Sender<Arc<FeedEvent>>,
    wake: Arc<Notify>,
    /// Whether the feed has looked once since it (re)started: from then on, every change
    /// committed is told.
    started: Arc<watch::Sender<bool>>,
    streams: Arc<Semaphore>,
}

impl AllReportsFeed {
    /// A feed whose streams take their slots from `streams` (shared with the
    /// per-report streams); `link_ttl_s` as for [`super::reports::record_json`].
    pub(crate) fn new(streams: Arc<Semaphore>, link_ttl_s: Option<u64>) -> Self {
        let state = FeedState {
            link_ttl_s,
            ..FeedState::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            sender: broadcast::channel(SUBSCRIBER_BACKLOG).0,
            wake: Arc::new(Notify::new()),
            started: Arc::new(watch::channel(false).0),
            streams,
        }
    }

    /// Sleeps until someone subscribes, then looks every [`POLL_EVERY`] while someone
    /// listens and for [`LINGER`] after the last one left, then sleeps again.
    pub(crate) async fn run(self, pool: DbPool) {
        let mut idle_since: Option<Instant> = None;
        // The feed starts stopped: a process nobody has subscribed to yet reads nothing
        // (the linger is for reconnects, not for a process that just started).
        self.wake.notified().await;
        loop {
            if self.sender.receiver_count() == 0 {
                let idle = *idle_since.get_or_insert_with(Instant::now);
                if idle.elapsed() >= LINGER && self.stop_if_unwatched() {
                    self.wake.notified().await;
                    idle_since = None;
                    continue;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(POLL_EVERY).await;
            if let Err(e) = self.look(&pool).await {
                tracing::warn!(error = %e, "event feed: cannot read the reports' changes");
            }
        }
    }

    /// Stops when nobody listens, checked under the lock a subscriber takes: one that
    /// arrives meanwhile either keeps the feed going or finds it stopped, never a feed
    /// that forgets under its feet what it was promised.
    fn stop_if_unwatched(&self) -> bool {
        let mut state = super::events::lock(&self.state);
        let unwatched = self.sender.receiver_count() == 0;
        if unwatched {
            state.stop();
            self.started.send_replace(false);
        }
        unwatched
    }

    async fn look(&self, pool: &DbPool) -> Result<(), db::DbError> {
        let mut conn = db::connection(pool).await?;
        let horizon = reports::write_horizon(&mut conn, HORIZON_MAX_LAG_S).await?;
        let since = super::events::lock(&self.state).horizon;
        let Some(since) = since else {
            let running = reports::running(&mut conn).await?;
            super::events::lock(&self.state).start(horizon, running);
            self.started.send_replace(true);
            return Ok(());
        };
        let mut rows = reports::created_since(&mut conn, since).await?;
        rows.extend(reports::finished_since(&mut conn, since).await?);
        rows.extend(reports::running(&mut conn).await?);
        let stopped = super::events::lock(&self.state).stopped_running(&rows);
        if !stopped.is_empty() {
            rows.extend(reports::find_many(&mut conn, &stopped).await?);
        }
        let mut state = super::events::lock(&self.state);
        let now = Instant::now();
        for event in state.apply(horizon, rows) {
            let event = Arc::new(event);
            state.remember(event.clone(), now);
            // No receiver is no error: the feed lingers for reconnects.
            let _ = self.sender.send(event);
        }
        Ok(())
    }

    /// A new subscriber: what it is owed from `resume_from` (or a reset when that is
    /// out of reach), and its receiver of what comes next — taken together, so nothing
    /// falls between the two. Returns once the feed is looking (at most [`START_WAIT`]):
    /// every change committed after that is told.
    async fn subscribe(
        &self,
        resume_from: Option<i64>,
    ) -> (Opening, broadcast::Receiver<Arc<FeedEvent>>) {
        let subscribed = self.subscribe_now(resume_from);
        let mut started = self.started.subscribe();
        // A feed that cannot reach the database yet still gives a stream: its events
        // begin when the database answers.
        let _ = tokio::time::timeout(START_WAIT, started.wait_for(|looking| *looking)).await;
        subscribed
    }

    fn subscribe_now(
        &self,
        resume_from: Option<i64>,
    ) -> (Opening, broadcast::Receiver<Arc<FeedEvent>>) {
        let state = super::events::lock(&self.state);
        let opening = match resume_from {
            None => Opening::Live,
            Some(from) => match state.replay_from(from) {
                Some(events) => Opening::Replay(events),
                None => Opening::Reset,
            },
        };
        let receiver = self.sender.subscribe();
        drop(state);
        self.wake.notify_one();
        (opening, receiver)
    }
}

/// How a stream begins.
enum Opening {
    /// Nothing to resume: live events only.
    Live,
    /// The buffered events owed to a resuming client, then live ones.
    Replay(Vec<Arc<FeedEvent>>),
    /// The client's last event is beyond the buffer: it must reload, then follow.
    Reset,
}

/// Which events a subscriber wants.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct EventFilter {
    statuses: Vec<String>,
    user_id: Option<i64>,
}

impl EventFilter {
    fn wants(&self, event: &FeedEvent) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&event.status))
            && self.user_id.is_none_or(|user| event.user_id == Some(user))
    }
}

/// `status` (one or more statuses, comma-separated) and `userId`, naming the one at fault.
fn parse_filter(query: &str) -> Result<EventFilter, ApiError> {
    let mut filter = EventFilter::default();
    for (key, value) in input::query_pairs(query, &["status", "userId"])? {
        match key.as_str() {
            "status" => {
                for name in value.split(',') {
                    let status = JobStatus::parse(name.trim()).ok_or_else(|| {
                        ApiError::invalid(
                            "status",
                            format!("status must be a comma-separated list of in-queue, in-progress, completed, failed, cancelled; got {name:?}"),
                        )
                    })?;
                    filter.statuses.push(status.as_str().to_string());
                }
            }
            _ => {
                let user = value.parse::<i64>().ok().filter(|user| *user > 0);
                filter.user_id = Some(user.ok_or_else(|| {
                    ApiError::invalid(
                        "userId",
                        format!("userId must be a positive integer; got {value:?}"),
                    )
                })?);
            }
        }
    }
    Ok(filter)
}

/// One subscriber's stream: its opening, then live events that pass its filter, until
/// it falls [`SUBSCRIBER_BACKLOG`] events behind (then it ends: the client reconnects
/// and resumes).
fn event_stream(
    opening: Opening,
    receiver: broadcast::Receiver<Arc<FeedEvent>>,
    filter: EventFilter,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = sse::Event> {
    let (reset, replay) = match opening {
        Opening::Live => (None, Vec::new()),
        Opening::Replay(events) => (None, events),
        Opening::Reset => (Some(reset_event()), Vec::new()),
    };
    let live =
        futures_util::stream::unfold((receiver, permit), |(mut receiver, permit)| async move {
            // A lagging receiver is dropped: the stream ends, the client resumes.
            let event = receiver.recv().await.ok()?;
            Some((event, (receiver, permit)))
        });
    let wanted = futures_util::stream::iter(replay)
        .chain(live)
        .filter(move |event| std::future::ready(filter.wants(event)))
        .map(|event| event.to_sse());
    futures_util::stream::iter(reset).chain(wanted)
}

fn reset_event() -> sse::Event {
    let data = json!({
        "reason": "this process's events do not reach back to Last-Event-ID: reload with GET /reports, then follow this stream"
    });
    sse::Data::new(data.to_string()).event("reset").into()
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "reports",
    operation_id = "allEvents",
    summary = "Every report's status and progress changes as server-sent events",
    description = "`text/event-stream` for dashboards: `event: status` (data: the report as \
        `GET /reports/{id}` shows it) when a report is submitted, starts, is handed back or \
        finishes; `event: progress` (data: `{reportId, progress}`) on a new progress reading; a \
        comment every 15 s. Live changes only: every change committed after the response's \
        headers is told; load the current list with `GET /reports`. \
        Resuming with `Last-Event-ID` sends again every change since that event (a change can \
        come twice); when this process's buffer (5 minutes, 10,000 events) does not reach back \
        that far, the stream opens with `event: reset`. A failed report re-queued by hand shows \
        up when it runs again.",
    params(
        ("status" = Option<String>, Query, description = "Only reports now in these statuses (comma-separated)"),
        ("userId" = Option<i64>, Query, description = "Only this user's reports", minimum = 1),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id received, to resume"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream",
            body = super::schemas::ReportEvent),
        (status = 400, description = "A bad or unknown query parameter (`field` names it)", body = super::error::ErrorBody),
        super::schemas::ReadErrors,
    ),
    security(("bearer" = []))
)]
/// `GET /events`.
pub(crate) async fn all_events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<
    sse::Sse<
        futures_util::stream::BoxStream<'static, Result<sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    let filter = parse_filter(req.query_string())?;
    let feed = &state.all_feed;
    let permit = feed.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable("this process serves as many event streams as it can; retry later")
    })?;
    let (opening, receiver) = feed.subscribe(last_event_id(&req)).await;
    let events = event_stream(opening, receiver, filter, permit)
        .map(Ok)
        .boxed();
    Ok(sse::Sse::from_stream(events).with_keep_alive(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::events::tests::row;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    fn with_id(mut row: ReportRecord, id: u128) -> ReportRecord {
        row.id = Uuid::from_u128(id);
        row
    }

    #[test]
    fn a_new_row_is_told_once_however_often_a_look_reads_it() {
        let mut state = FeedState::default();
        state.start(at(0), Vec::new());
        let queued = with_id(row("in-queue", 0, None, at(1)), 1);
        let told = state.apply(at(1), vec![queued.clone(), queued.clone()]);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].kind, Kind::Status);
        assert!(
            state.apply(at(2), vec![queued]).is_empty(),
            "read again below the next horizon"
        );
    }

    #[test]
    fn running_rows_tell_their_start_and_each_new_reading() {
        let mut state = FeedState::default();
        state.start(at(0), Vec::new());
        let running = with_id(row("in-progress", 1, None, at(1)), 1);
        let moved = with_id(row("in-progress", 1, Some("t1"), at(2)), 1);
        assert_eq!(
            state.apply(at(1), vec![running.clone()])[0].kind,
            Kind::Status
        );
        assert_eq!(
            state.apply(at(2), vec![moved.clone()])[0].kind,
            Kind::Progress
        );
        assert!(
            state.apply(at(3), vec![moved, running]).is_empty(),
            "no going back"
        );
    }

    #[test]
    fn a_row_that_stopped_running_unseen_is_looked_up_by_id() {
        let mut state = FeedState::default();
        let running = with_id(row("in-progress", 1, None, at(0)), 7);
        state.start(at(0), vec![running]);
        assert_eq!(state.stopped_running(&[]), vec![Uuid::from_u128(7)]);
        let mut handed_back = with_id(row("in-queue", 1, None, at(1)), 7);
        handed_back.created_at = at(-100);
        let told = state.apply(at(1), vec![handed_back.clone()]);
        assert_eq!((told.len(), told[0].status.as_str()), (1, "in-queue"));
        assert!(state.stopped_running(&[]).is_empty());
        assert!(
            state.known.is_empty(),
            "an old queued row is no longer read"
        );
    }

    #[test]
    fn resuming_replays_changes_written_since_the_id_or_asks_for_a_reset() {
        let mut state = FeedState::default();
        state.start(at(0), Vec::new());
        let now = Instant::now();
        for (id, second) in [(1, 1), (2, 2), (3, 3)] {
            let queued = with_id(row("in-queue", 0, None, at(second)), id);
            for event in state.apply(at(second), vec![queued]) {
                state.remember(Arc::new(event), now);
            }
        }
        let replay = state.replay_from(at(2).timestamp_micros());
        assert_eq!(replay.map(|events| events.len()), Some(2));
        assert!(state.replay_from(at(-1).timestamp_micros()).is_none());
    }

    #[test]
    fn a_full_buffer_forgets_the_oldest_and_no_longer_covers_their_time() {
        let mut state = FeedState::default();
        state.start(at(0), Vec::new());
        let now = Instant::now();
        for i in 0..=BUFFER_EVENTS {
            let queued = with_id(row("in-queue", 0, None, at(1)), i as u128);
            let event = FeedEvent::new(Kind::Status, &queued, at(1).timestamp_micros(), None);
            state.remember(Arc::new(event), now);
        }
        assert_eq!(state.buffer.len(), BUFFER_EVENTS);
        assert!(state.replay_from(at(1).timestamp_micros()).is_none());
    }

    #[test]
    fn the_filter_takes_statuses_and_a_user_and_names_bad_values() {
        let filter = parse_filter("status=completed,failed&userId=42").expect("valid");
        assert_eq!(filter.statuses, ["completed", "failed"]);
        assert_eq!(filter.user_id, Some(42));
        for (query, field) in [
            ("status=done", "status"),
            ("userId=x", "userId"),
            ("user=1", "user"),
        ] {
            let error = parse_filter(query).expect_err(query);
            assert_eq!(error.field.as_deref(), Some(field), "{query}");
        }
    }
}
