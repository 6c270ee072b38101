//! `GET /reports/{id}/events`: a report's status and progress as server-sent events.
//!
//! Any api process can serve any report, whichever process runs it: one feed per process
//! reads the rows that have subscribers every [`POLL_EVERY`] (one statement by primary
//! key for all of them, none while nobody listens) and publishes what changed. Chosen
//! over `LISTEN/NOTIFY`: the StatusActor's batched commits would need a trigger or a
//! notify per write on the hottest path, while a shared read costs one indexed query per
//! quarter second per api process, whatever the number of subscribers.
//!
//! Each subscriber holds a `watch` receiver: it sees the latest state, so a slow client
//! skips intermediate states instead of queueing them, and it can never slow the feed,
//! let alone the workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest};
use actix_web_lab::sse;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::db::models::ReportRecord;
use crate::db::{self, reports, DbPool};

/// How often the feed reads the watched rows: status events reach clients within this
/// (plus the writer's flush) of their commit.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// A comment line this often keeps proxies from closing an idle stream.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Most event streams one process serves at once. Each holds a connection for as long as
/// its report runs; past this a client gets 503, so streams can never take every
/// connection slot from health probes and submits.
const MAX_STREAMS: usize = 5_000;

/// What a subscriber is told about: the row as the feed last read it.
type Snapshot = Option<Arc<ReportRecord>>;

/// The process's feed of watched reports.
#[derive(Clone)]
pub(crate) struct ReportFeed {
    watched: Arc<Mutex<HashMap<Uuid, watch::Sender<Snapshot>>>>,
    streams: Arc<tokio::sync::Semaphore>,
}

impl Default for ReportFeed {
    fn default() -> Self {
        Self {
            watched: Arc::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }
}

impl ReportFeed {
    /// The slots every event stream of this process takes one of (see [`MAX_STREAMS`]).
    pub(crate) fn stream_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.streams.clone()
    }

    /// Watches one report: its current row first, then every change the feed sees.
    fn subscribe(&self, record: ReportRecord) -> watch::Receiver<Snapshot> {
        let mut watched = lock(&self.watched);
        let sender = watched
            .entry(record.id)
            .or_insert_with(|| watch::channel(None).0);
        sender.send_if_modified(|current| replace_if_newer(current, record));
        sender.subscribe()
    }

    /// Reads the watched rows every [`POLL_EVERY`] until the process stops; drops the
    /// reports nobody listens to any more.
    pub(crate) async fn run(self, pool: DbPool) {
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let ids: Vec<Uuid> = {
                let mut watched = lock(&self.watched);
                watched.retain(|_, sender| sender.receiver_count() > 0);
                watched.keys().copied().collect()
            };
            if ids.is_empty() {
                continue;
            }
            match read(&pool, &ids).await {
                Ok(rows) => self.publish(rows),
                Err(e) => {
                    tracing::warn!(error = %e, "report feed: cannot read the watched reports")
                }
            }
        }
    }

    fn publish(&self, rows: Vec<ReportRecord>) {
        let watched = lock(&self.watched);
        for row in rows {
            if let Some(sender) = watched.get(&row.id) {
                sender.send_if_modified(|current| replace_if_newer(current, row));
            }
        }
    }
}

async fn read(pool: &DbPool, ids: &[Uuid]) -> Result<Vec<ReportRecord>, db::DbError> {
    let mut conn = db::connection(pool).await?;
    Ok(reports::find_many(&mut conn, ids).await?)
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stores `row` when it is not older than the snapshot and says something new (status,
/// attempt or progress); true then. A subscriber's own read and the feed's can race: the
/// older of the two must not take the state back.
fn replace_if_newer(current: &mut Snapshot, row: ReportRecord) -> bool {
    let changed = current
        .as_ref()
        .is_none_or(|seen| row.updated_at >= seen.updated_at && state_key(seen) != state_key(&row));
    if changed {
        *current = Some(Arc::new(row));
    }
    changed
}

/// What makes an event: the status, the attempt, and the progress reading's time.
fn state_key(row: &ReportRecord) -> (String, i32, Option<String>) {
    (row.status.clone(), row.attempts, progress_time(row))
}

fn progress_time(row: &ReportRecord) -> Option<String> {
    row.progress
        .as_ref()
        .and_then(|p| p.get("updatedAt"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// An event's id: the row's `updated_at` in microseconds, which only grows. A client
/// that reconnects with it as `Last-Event-ID` gets the current state only if the row
/// changed since.
fn event_id(row: &ReportRecord) -> i64 {
    row.updated_at.timestamp_micros()
}

/// The two kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The status or the attempt changed; the data is the report as `GET /reports/{id}`
    /// shows it.
    Status,
    /// A new progress reading; the data is the reading.
    Progress,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Progress => "progress",
        }
    }
}

/// What moving from `before` to `now` is worth telling: a status event when the status
/// or attempt changed, else a progress event when a new reading came, else nothing.
pub(super) fn kind_between(before: Option<&ReportRecord>, now: &ReportRecord) -> Option<Kind> {
    let status_changed =
        before.is_none_or(|b| (&b.status, b.attempts) != (&now.status, now.attempts));
    if status_changed {
        return Some(Kind::Status);
    }
    let progress_changed = before.is_some_and(|b| progress_time(b) != progress_time(now));
    (progress_changed && now.progress.is_some()).then_some(Kind::Progress)
}

/// The event for moving from `before` to `now`; a status event's report shows a file
/// link's expiry from `link_ttl_s` (see [`super::reports::record_json`]).
fn events_between(
    before: Option<&ReportRecord>,
    now: &ReportRecord,
    link_ttl_s: Option<u64>,
) -> Option<sse::Event> {
    let kind = kind_between(before, now)?;
    let data = match kind {
        Kind::Status => super::reports::record_json(now, link_ttl_s),
        Kind::Progress => now.progress.clone().unwrap_or(Value::Null),
    };
    let id = event_id(now).to_string();
    Some(
        sse::Data::new(data.to_string())
            .event(kind.name())
            .id(id)
            .into(),
    )
}

/// The stream of one subscriber: the current state unless `Last-Event-ID` says the
/// client has it, then every change, ending after the terminal status.
fn event_stream(
    mut changes: watch::Receiver<Snapshot>,
    resumed_at: Option<i64>,
    permit: tokio::sync::OwnedSemaphorePermit,
    link_ttl_s: Option<u64>,
) -> impl Stream<Item = sse::Event> {
    let first = changes.borrow_and_update().clone();
    // A resumed client already has every state up to its last event's.
    let sent = first
        .clone()
        .filter(|row| resumed_at.is_some_and(|at| at >= event_id(row)));
    let opening = match (&first, &sent) {
        (Some(row), None) => events_between(None, row, link_ttl_s),
        _ => None,
    };
    let finished = first.as_ref().is_some_and(|row| row.is_terminal());
    // The permit lives in the stream's state: the slot frees when the stream ends or
    // the client goes away.
    let rest = futures_util::stream::unfold(
        (changes, first, finished, permit),
        move |(mut changes, mut last, finished, permit)| async move {
            if finished || changes.changed().await.is_err() {
                return None;
            }
            let now = changes.borrow_and_update().clone()?;
            let event = events_between(last.as_deref(), &now, link_ttl_s);
            let finished = now.is_terminal();
            last = Some(now);
            Some((event, (changes, last, finished, permit)))
        },
    )
    .filter_map(|event| async move { event });
    futures_util::stream::iter(opening).chain(rest)
}

/// An event stream, or 204 for a client that has a finished report's last state.
type EventsAnswer = actix_web::Either<
    sse::Sse<
        futures_util::stream::BoxStream<'static, Result<sse::Event, std::convert::Infallible>>,
    >,
    actix_web::HttpResponse,
>;

#[utoipa::path(
    get,
    path = "/reports/{id}/events",
    tag = "reports",
    operation_id = "reportEvents",
    summary = "A report's status and progress as server-sent events",
    description = "`text/event-stream`: `event: status` (data: the report as `GET /reports/{id}` \
        shows it) on every status or attempt change, starting with the current state; \
        `event: progress` (data: the progress reading) on every new reading; a comment every \
        15 s; the stream ends after the terminal status. Each event's `id` can be sent back \
        as `Last-Event-ID` on reconnect: the current state comes again only if it changed since.",
    params(
        ("id" = Uuid, Path, description = "The report's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id received, to resume; \
            an id this stream did not send counts as none"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream",
            body = super::schemas::ReportEvent),
        (status = 204, description = "The report is finished and `Last-Event-ID` names its last state: nothing more will come"),
        (status = 400, description = "`id` is not a UUID", body = super::error::ErrorBody),
        super::schemas::ReadErrors,
        (status = 404, description = "No report with this id", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /reports/{id}/events`.
pub(crate) async fn report_events(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<EventsAnswer, ApiError> {
    let record = super::reports::find_report(&state, super::reports::parse_id(&path)?).await?;
    let resumed_at = last_event_id(&req);
    if record.is_terminal() && resumed_at.is_some_and(|at| at >= event_id(&record)) {
        // The client has the last state there will be: 204 tells an EventSource to stop
        // reconnecting (a 200 that closes at once would bring it back every few seconds).
        return Ok(actix_web::Either::Right(
            actix_web::HttpResponse::NoContent().finish(),
        ));
    }
    let permit = state.feed.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "this process serves {MAX_STREAMS} event streams already; retry later or poll GET /reports/{{id}}"
        ))
    })?;
    let changes = state.feed.subscribe(record);
    let link_ttl_s = state.store.link_ttl_s();
    let events = event_stream(changes, resumed_at, permit, link_ttl_s)
        .map(Ok)
        .boxed();
    Ok(actix_web::Either::Left(
        sse::Sse::from_stream(events).with_keep_alive(KEEP_ALIVE),
    ))
}

/// The `Last-Event-ID` header, when it is an id this endpoint gives out (microseconds).
/// It is only a hint for resuming: anything else counts as none, so the client gets the
/// current state, as on a first connect (what the SSE specification expects of a server
/// that does not know the id).
pub(super) fn last_event_id(req: &HttpRequest) -> Option<i64> {
    req.headers()
        .get("Last-Event-ID")?
        .to_str()
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    pub(in crate::api) fn row(
        status: &str,
        attempts: i32,
        progress_at: Option<&str>,
        updated_at: DateTime<Utc>,
    ) -> ReportRecord {
        ReportRecord {
            id: Uuid::nil(),
            payload: serde_json::json!({}),
            status: status.into(),
            report_url: None,
            attempts,
            last_error: None,
            idempotency_key: None,
            request_hash: None,
            user_id: None,
            created_at: updated_at,
            updated_at,
            started_at: None,
            finished_at: None,
            enqueued_at: None,
            failures: 0,
            send_generation: 0,
            cancel_requested_at: None,
            cancel_reason: None,
            max_runtime_s: None,
            not_after: None,
            progress: progress_at.map(|at| serde_json::json!({"percent": 5, "updatedAt": at})),
            file: Default::default(),
        }
    }

    #[test]
    fn a_status_or_attempt_change_is_a_status_event_and_a_new_reading_a_progress_event() {
        let at = Utc::now();
        let queued = row("in-queue", 0, None, at);
        let running = row("in-progress", 1, None, at);
        let moved = row("in-progress", 1, Some("2026-11-28T12:00:01Z"), at);
        let retried = row("in-progress", 2, Some("2026-11-28T12:00:01Z"), at);
        assert_eq!(kind_between(None, &queued), Some(Kind::Status));
        assert_eq!(kind_between(Some(&queued), &running), Some(Kind::Status));
        assert_eq!(kind_between(Some(&running), &moved), Some(Kind::Progress));
        assert_eq!(kind_between(Some(&moved), &retried), Some(Kind::Status));
        assert_eq!(
            kind_between(Some(&moved), &moved),
            None,
            "a heartbeat alone says nothing"
        );
    }

    #[test]
    fn only_a_row_that_says_something_new_replaces_the_snapshot() {
        let at = Utc::now();
        let mut snapshot: Snapshot = None;
        assert!(replace_if_newer(
            &mut snapshot,
            row("in-queue", 0, None, at)
        ));
        let later = at + chrono::Duration::seconds(1);
        assert!(
            !replace_if_newer(&mut snapshot, row("in-queue", 0, None, later)),
            "updated_at alone (a heartbeat) is no news"
        );
        assert!(replace_if_newer(
            &mut snapshot,
            row("in-progress", 1, None, later)
        ));
        assert!(
            !replace_if_newer(&mut snapshot, row("in-queue", 0, None, at)),
            "an older read never takes the state back"
        );
    }
}
