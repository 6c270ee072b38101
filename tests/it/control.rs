//! Job control (issue 12): cancel from any process, `maxRuntimeS` and `notAfter`, against
//! real PostgreSQL, LocalStack SQS and, where another process runs the job, a real
//! `reportd` process.

use crate::common;

use std::time::{Duration, Instant};

use common::app::{spawn_app, spawn_process, test_settings, wait_until, AppOptions, TestApp};
use common::jobs::{on_free_port, queue_depth, zero_work};
use reportd::config::{Role, SimulateSettings};
use serde_json::{json, Value};
use uuid::Uuid;

async fn cancel(app: &TestApp, id: Uuid, body: Option<Value>) -> (u16, Value) {
    let mut request = app.http.post(app.url(&format!("/reports/{id}/cancel")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("POST cancel");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An api-only process, and worker-only options sharing its database and queues.
async fn api_and_worker_options(worker: AppOptions) -> (TestApp, AppOptions) {
    let api = spawn_app(AppOptions {
        roles: vec![Role::Api],
        visibility_timeout_s: worker.visibility_timeout_s,
        ..AppOptions::default()
    })
    .await;
    let worker = AppOptions {
        roles: vec![Role::Worker],
        database_url: Some(api.settings.database.url.clone()),
        queue_name: Some(api.settings.sqs.queue_name.clone()),
        ..worker
    };
    (api, worker)
}

#[actix_web::test]
async fn a_waiting_job_cancelled_ends_at_once_answers_the_same_again_and_never_runs() {
    let (api, worker) = api_and_worker_options(AppOptions {
        simulate: zero_work(None),
        ..AppOptions::default()
    })
    .await;
    let id = api.submit_ok(3).await;
    let (status, body) = cancel(&api, id, Some(json!({"reason": "changed my mind"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["cancelReason"], "changed my mind");
    assert!(body["finishedAt"].is_string(), "{body}");
    let (status, again) = cancel(&api, id, None).await;
    assert_eq!((status, &again["status"]), (200, &json!("cancelled")));
    assert_eq!(
        again["cancelReason"], "changed my mind",
        "the first reason stays"
    );

    // A worker receives its message, finds the job cancelled and deletes the message.
    let worker = spawn_app(worker).await;
    wait_until(
        "the message to be deleted",
        Duration::from_secs(20),
        || async { queue_depth(&api, &api.queue.queue_url.clone()).await == 0 },
    )
    .await;
    let record = api.report(id).await;
    assert_eq!(
        (record["status"].clone(), record["attempts"].clone()),
        (json!("cancelled"), json!(0))
    );

    // A finished job cannot be cancelled.
    let done = api.submit_ok(4).await;
    api.wait_for_status(done, "completed", Duration::from_secs(20))
        .await;
    let (status, body) = cancel(&api, done, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_cancellable");
    worker.stop().await;
    api.stop().await;
}

#[actix_web::test]
async fn bad_cancel_requests_name_what_is_wrong() {
    let api = spawn_app(AppOptions {
        roles: vec![Role::Api],
        ..AppOptions::default()
    })
    .await;
    let id = api.submit_ok(5).await;
    let (status, body) = cancel(&api, Uuid::new_v4(), None).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (404, &json!("id")),
        "{body}"
    );
    let (status, body) = cancel(&api, id, Some(json!({"reason": 7}))).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("reason")),
        "{body}"
    );
    let (status, body) = cancel(&api, id, Some(json!({"why": "x"}))).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("why")),
        "{body}"
    );
    let response = api
        .http
        .post(api.url(&format!("/reports/{id}/cancel")))
        .header("content-type", "text/plain")
        .body("reason=x")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 415);
    assert_eq!(
        api.report(id).await["status"],
        "in-queue",
        "nothing changed"
    );
    api.stop().await;
}

#[actix_web::test]
async fn a_running_job_cancelled_from_another_process_stops_within_a_heartbeat() {
    // Visibility timeout 6 s: the worker's heartbeat beats every 2 s.
    let (api, worker) = api_and_worker_options(AppOptions {
        workers: 1,
        visibility_timeout_s: 6,
        simulate: SimulateSettings {
            duration_ms: Some([60_000, 60_000]),
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    let (settings, tmp) = test_settings(&worker).await;
    let mut settings = on_free_port(&settings);
    settings.database.create_if_missing = false;
    let process = spawn_process(&settings, tmp.path(), "cancel-worker").await;
    let id = api.submit_ok(6).await;
    api.wait_for_status(id, "in-progress", Duration::from_secs(30))
        .await;

    let asked = Instant::now();
    let (status, body) = cancel(&api, id, Some(json!({"reason": "wrong range"}))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "in-progress");
    assert!(body["cancelRequestedAt"].is_string(), "{body}");
    let record = api
        .wait_for_status(id, "cancelled", Duration::from_secs(20))
        .await;
    let took = asked.elapsed();
    // One beat (2 s) plus the writer's flush and the answer's way back.
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(record["failures"], 0, "a cancel is no failure: {record}");
    assert_eq!(record["cancelReason"], "wrong range");
    wait_until(
        "the message to be deleted",
        Duration::from_secs(20),
        || async { queue_depth(&api, &api.queue.queue_url.clone()).await == 0 },
    )
    .await;
    let written: Vec<_> = std::fs::read_dir(&settings.report.output_dir)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "no partial report: {written:?}");
    assert_eq!(api.report(id).await["attempts"], 1, "it never ran again");
    assert!(process.terminate(Duration::from_secs(30)).success());
    api.stop().await;
}

#[actix_web::test]
async fn an_attempt_longer_than_max_runtime_s_fails_and_three_of_them_fail_the_job() {
    let app = spawn_app(AppOptions {
        simulate: zero_work(Some([10_000, 10_000])),
        ..AppOptions::default()
    })
    .await;
    let (status, body) = app
        .submit(&json!({"userId": 7, "startDate": "2024-01-01", "endDate": "2024-01-02", "maxRuntimeS": 2}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id: Uuid = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    let record = app
        .wait_for_status(id, "failed", Duration::from_secs(60))
        .await;
    assert_eq!(
        (record["attempts"].clone(), record["failures"].clone()),
        (json!(3), json!(3)),
        "{record}"
    );
    assert_eq!(record["maxRuntimeS"], 2);
    assert!(
        record["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("timed out after 2 s")),
        "{record}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_job_not_started_by_not_after_is_cancelled_as_expired_and_never_runs() {
    let (api, worker) = api_and_worker_options(AppOptions {
        simulate: zero_work(None),
        ..AppOptions::default()
    })
    .await;
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let (status, body) = api
        .submit(&json!({"userId": 8, "startDate": "2024-01-01", "endDate": "2024-01-02", "notAfter": past}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id: Uuid = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    // The workers start only now, after notAfter.
    let worker = spawn_app(worker).await;
    let record = api
        .wait_for_status(id, "cancelled", Duration::from_secs(20))
        .await;
    assert_eq!(record["cancelReason"], "expired", "{record}");
    assert_eq!(record["attempts"], 0, "never run: {record}");
    worker.stop().await;
    api.stop().await;
}

#[actix_web::test]
async fn progress_rises_while_a_job_runs_carried_by_heartbeats_only() {
    // Visibility timeout 6 s: a heartbeat every 2 s over a 7 s job.
    let app = spawn_app(AppOptions {
        workers: 1,
        visibility_timeout_s: 6,
        simulate: zero_work(Some([7_000, 7_000])),
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(9).await;
    let mut readings: Vec<(u64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        let response = app
            .http
            .get(app.url(&format!("/reports/{id}")))
            .send()
            .await
            .expect("GET");
        let retry_after = response.headers().get("retry-after").cloned();
        let record: Value = response.json().await.expect("JSON");
        if record["status"] == "completed" {
            assert!(retry_after.is_none(), "no Retry-After once terminal");
            break record;
        }
        assert!(
            retry_after.is_some(),
            "Retry-After while {}",
            record["status"]
        );
        if let (Some(percent), Some(at)) = (
            record["progress"]["percent"].as_u64(),
            record["progress"]["updatedAt"].as_str(),
        ) {
            if readings.last().is_none_or(|(_, last)| last != at) {
                readings.push((percent, at.to_string()));
            }
        }
        assert!(Instant::now() < deadline, "not completed: {record}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(readings.len() >= 2, "progress seen rising: {readings:?}");
    assert!(
        readings.windows(2).all(|w| w[0].0 < w[1].0),
        "each reading further on: {readings:?}"
    );
    // One write per heartbeat at most: 7 s of work, a beat every 2 s.
    assert!(
        readings.len() <= 4,
        "written more often than the heartbeat: {readings:?}"
    );
    assert_eq!(done["progress"]["percent"], 100, "{done}");
    assert_eq!(done["progress"]["stage"], "simulating work");
    app.stop().await;
}

/// One server-sent event: its type, id and JSON data.
#[derive(Debug)]
struct Event {
    kind: String,
    id: String,
    data: Value,
    /// When the event arrived.
    at: chrono::DateTime<chrono::Utc>,
}

/// Reads events from an SSE response until it ends (or `limit` passes).
async fn read_events(response: reqwest::Response, limit: Duration) -> Vec<Event> {
    read_events_until(response, limit, |_| false).await
}

/// Reads events from an SSE response until `enough` says so, it ends, or `limit` passes.
async fn read_events_until(
    response: reqwest::Response,
    limit: Duration,
    enough: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let mut reader = EventReader::new(response);
    reader.until(limit, enough).await;
    reader.events
}

/// An SSE response read a piece at a time.
struct EventReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<actix_web::web::Bytes>>,
    pending: String,
    events: Vec<Event>,
}

impl EventReader {
    fn new(response: reqwest::Response) -> Self {
        use futures_util::StreamExt;
        Self {
            body: response.bytes_stream().boxed(),
            pending: String::new(),
            events: Vec::new(),
        }
    }

    /// Reads on until `enough` says so of every event so far, the stream ends, or `limit`
    /// passes.
    async fn until(&mut self, limit: Duration, enough: impl Fn(&[Event]) -> bool) {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        while !enough(&self.events) {
            let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, self.body.next()).await
            else {
                return;
            };
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = self.pending.find("\n\n") {
                self.events.extend(parse_event(&self.pending[..end]));
                self.pending.drain(..end + 2);
            }
        }
    }
}

/// One event block; `None` for a comment (keep-alive).
fn parse_event(block: &str) -> Option<Event> {
    let field = |name: &str| {
        block
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    Some(Event {
        kind: field("event")?,
        id: field("id").unwrap_or_default(),
        data: serde_json::from_str(&field("data")?).ok()?,
        at: chrono::Utc::now(),
    })
}

#[actix_web::test]
async fn a_subscriber_sees_every_status_in_order_then_the_stream_ends_and_a_resume_misses_nothing()
{
    let (api, worker) = api_and_worker_options(AppOptions {
        workers: 1,
        visibility_timeout_s: 6,
        simulate: zero_work(Some([5_000, 5_000])),
        ..AppOptions::default()
    })
    .await;
    let id = api.submit_ok(10).await;
    let url = api.url(&format!("/reports/{id}/events"));
    let response = api.http.get(&url).send().await.expect("GET events");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("text/event-stream"))));
    let reading = tokio::spawn(read_events(response, Duration::from_secs(40)));
    let worker = spawn_app(worker).await;
    let events = reading.await.expect("reader");
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "status")
        .filter_map(|e| e.data["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["in-queue", "in-progress", "completed"],
        "{events:?}"
    );
    // The terminal event reaches the client within 1 s of the commit it reports.
    let completed = events
        .iter()
        .find(|e| e.data["status"] == "completed")
        .expect("completed");
    let committed: chrono::DateTime<chrono::Utc> = completed.data["finishedAt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("finishedAt");
    let delay = completed.at - committed;
    eprintln!(
        "completed event {} ms after its commit",
        delay.num_milliseconds()
    );
    assert!(delay < chrono::Duration::seconds(1), "{delay:?}");
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == "progress")
        .filter_map(|e| e.data["percent"].as_u64())
        .collect();
    assert!(!progress.is_empty(), "progress events: {events:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id.parse().ok()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");

    // Resuming from an early event brings the current (terminal) state, then the end.
    let first = &events[0].id;
    let response = api
        .http
        .get(&url)
        .header("Last-Event-ID", first.as_str())
        .send()
        .await
        .expect("resume");
    let resumed = read_events(response, Duration::from_secs(10)).await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].data["status"], "completed");
    // Resuming from the last event of a finished report: 204, so an EventSource stops.
    let last = &events[events.len() - 1].id;
    let response = api
        .http
        .get(&url)
        .header("Last-Event-ID", last.as_str())
        .send()
        .await
        .expect("resume");
    assert_eq!(response.status().as_u16(), 204);
    worker.stop().await;
    api.stop().await;
}

/// The statuses `events` tell of one report, in order.
fn statuses_of(events: &[Event], id: Uuid) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "status" && e.data["id"] == json!(id))
        .filter_map(|e| e.data["status"].as_str().map(str::to_string))
        .collect()
}

#[actix_web::test]
async fn the_stream_of_all_reports_tells_each_change_of_the_chosen_user_and_resumes_from_an_id() {
    let (api, worker) = api_and_worker_options(AppOptions {
        workers: 2,
        visibility_timeout_s: 6,
        simulate: zero_work(Some([4_000, 4_000])),
        ..AppOptions::default()
    })
    .await;
    let open = |query: &str| api.http.get(api.url(&format!("/events{query}"))).send();
    let response = open("?userId=7001").await.expect("GET /events");
    assert_eq!(response.status().as_u16(), 200);
    let (mine, theirs) = (api.submit_ok(7001).await, api.submit_ok(7002).await);
    let mut reader = EventReader::new(response);
    // A state shorter than one look of the feed may be skipped (the next event tells
    // the latest): the worker starts once the waiting state has been told.
    let told = |status: &'static str| {
        move |events: &[Event]| statuses_of(events, mine).iter().any(|s| s == status)
    };
    reader
        .until(Duration::from_secs(10), told("in-queue"))
        .await;
    let worker = spawn_app(worker).await;
    reader
        .until(Duration::from_secs(40), told("completed"))
        .await;
    let events = reader.events;
    let done = told("completed");
    assert_eq!(
        statuses_of(&events, mine),
        ["in-queue", "in-progress", "completed"],
        "{events:?}"
    );
    assert!(
        statuses_of(&events, theirs).is_empty(),
        "filtered: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "progress" && e.data["reportId"] == json!(mine)),
        "progress events name their report: {events:?}"
    );

    // From the first event's id, every later change comes again (the filter still holds).
    let response = api
        .http
        .get(api.url("/events?userId=7001"))
        .header("Last-Event-ID", events[0].id.as_str())
        .send()
        .await
        .expect("resume");
    let resumed = read_events_until(response, Duration::from_secs(10), done).await;
    assert!(
        statuses_of(&resumed, mine).ends_with(&["completed".to_string()]),
        "{resumed:?}"
    );
    assert!(statuses_of(&resumed, theirs).is_empty(), "{resumed:?}");

    // An id from before anything this process keeps: a reset, then live events.
    let response = api
        .http
        .get(api.url("/events"))
        .header("Last-Event-ID", "1")
        .send()
        .await
        .expect("resume from long ago");
    let opening = read_events_until(response, Duration::from_secs(10), |e| !e.is_empty()).await;
    assert_eq!(
        opening.first().map(|e| e.kind.as_str()),
        Some("reset"),
        "{opening:?}"
    );

    let (status, body) = api.get_json("/events?status=done").await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("status")),
        "{body}"
    );
    worker.stop().await;
    api.stop().await;
}
