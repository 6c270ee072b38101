//! Webhooks (issue 13): signatures checked by the Standard Webhooks reference library
//! (a Python receiver), retries with one `webhook-id`, delivery after a kill -9, the
//! SSRF guard, 410 and redeliver. Receivers listen on 127.0.0.1 only; no test sends a
//! request anywhere else.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reportd::config::{Role, Settings, WebhookSettings};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::app::{spawn_app, test_settings, wait_until, AppOptions, ChildProcess, TestApp};
use crate::common::jobs::{job_rows, on_free_port, zero_work};
use crate::common::pg_connect;

/// The signing secret of these tests, and a second one for rotation.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi10d2VudHktZm91cg==";

/// Webhooks on, quick pacing, loopback receivers allowed.
fn webhook_settings(endpoints: Vec<String>) -> WebhookSettings {
    WebhookSettings {
        secret: Some(SECRET.into()),
        endpoints,
        allow_http: true,
        allow_private: true,
        poll_ms: 100,
        first_retry_ms: 200,
        timeout_ms: 2_000,
        ..WebhookSettings::default()
    }
}

/// The receiver's Python: the virtualenv `scripts/dev-services` makes with the pinned
/// `standardwebhooks`. Missing, the test fails and says how to get it.
fn receiver_python() -> PathBuf {
    if let Some(path) = std::env::var_os("REPORTD_TEST_WEBHOOK_PYTHON") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("REPORTD_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("reportd")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/reportd")))
        .expect("HOME or REPORTD_CACHE_DIR");
    let python = cache.join("webhooks-venv/bin/python");
    assert!(
        python.exists(),
        "the webhook receiver's virtualenv is missing at {}: run scripts/dev-services \
         (or set REPORTD_TEST_WEBHOOK_PYTHON)",
        python.display()
    );
    python
}

/// `scripts/webhooks/receiver.py` on 127.0.0.1: verifies with `standardwebhooks` and
/// answers the scripted statuses.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts one on `port` (0: any) with `secret`, answering `answers` in turn.
    fn start(secret: &str, answers: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("requests.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/webhooks/receiver.py");
        let mut child = Command::new(receiver_python())
            .args([script, "--secret", secret, "--answers", answers])
            .args(["--port", &port.to_string(), "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("receiver stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("receiver's first line");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// What it received, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_until(&format!("{n} webhook requests"), timeout, || async {
            self.requests().len() >= n
        })
        .await;
        self.requests()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn webhook_app(settings: WebhookSettings) -> TestApp {
    spawn_app(AppOptions {
        simulate: zero_work(None),
        webhooks: Some(settings),
        ..AppOptions::default()
    })
    .await
}

async fn submit_with_callback(app: &TestApp, callback: Option<&str>) -> (u16, Value) {
    let mut body = json!({"userId": 7, "startDate": "2024-01-01", "endDate": "2024-01-31"});
    if let Some(url) = callback {
        body["callbackUrl"] = json!(url);
    }
    app.submit(&body).await
}

fn id_of(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an id")
}

async fn deliveries(app: &TestApp, id: Uuid) -> Vec<Value> {
    let (status, body) = app.get_json(&format!("/reports/{id}/webhooks")).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the report's only delivery satisfies `done`; returns it.
async fn wait_for_delivery(
    app: &TestApp,
    id: Uuid,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let items = deliveries(app, id).await;
        if let [only] = items.as_slice() {
            if done(only) {
                return only.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no delivery {what} within 30 s: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn a_standardwebhooks_receiver_verifies_a_completed_reports_webhook() {
    // Rotation: reportd signs with both secrets; this receiver holds only the new one.
    let receiver = Receiver::start(NEXT_SECRET, "200", 0);
    let mut settings = webhook_settings(Vec::new());
    settings.secrets = vec![NEXT_SECRET.into()];
    let app = webhook_app(settings).await;
    let (status, body) = submit_with_callback(&app, Some(&receiver.url())).await;
    assert_eq!(status, 202, "{body}");
    let id = id_of(&body);
    let report = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let requests = receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    let request = &requests[0];
    assert_eq!(
        request["verified"], true,
        "standardwebhooks refused it: {request}"
    );
    let signatures = request["signature"].as_str().unwrap_or_default();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    let payload: Value =
        serde_json::from_str(request["body"].as_str().unwrap_or("")).expect("JSON body");
    assert_eq!(payload["type"], "report.completed");
    assert_eq!(payload["timestamp"], report["finishedAt"]);
    // The report as GET /reports/{id} serves it.
    let data = payload["data"].as_object().expect("data");
    let served = report.as_object().expect("report");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        served.keys().collect::<Vec<_>>()
    );
    for key in [
        "id",
        "status",
        "payload",
        "attempts",
        "createdAt",
        "finishedAt",
    ] {
        assert_eq!(data[key], served[key], "{key}");
    }
    let delivery = wait_for_delivery(&app, id, "delivered", |d| d["state"] == "delivered").await;
    assert_eq!(delivery["id"], request["id"]);
    assert_eq!(delivery["endpoint"], receiver.url());
    assert_eq!(delivery["event"], "report.completed");
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["lastStatusCode"], 200);
    assert!(delivery["deliveredAt"].is_string(), "{delivery}");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.unwrap_or_default();
    assert!(
        text.contains("reportd_webhook_deliveries_total{outcome=\"delivered\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("reportd_webhook_delivery_seconds_count 1"),
        "{text}"
    );
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["webhooks"], json!({"backlog": 0}), "{health}");
    app.stop().await;
}

#[actix_web::test]
async fn a_receiver_answering_500_twice_gets_three_tries_with_one_webhook_id() {
    let receiver = Receiver::start(SECRET, "500,500,200", 0);
    // A fleet-wide endpoint this time, no callbackUrl.
    let app = webhook_app(webhook_settings(vec![receiver.url()])).await;
    let id = app.submit_ok(3).await;
    let delivery = wait_for_delivery(&app, id, "delivered", |d| d["state"] == "delivered").await;
    assert_eq!(delivery["attempts"], 3, "{delivery}");
    assert_eq!(delivery["lastStatusCode"], 200);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for request in &requests {
        assert_eq!(request["id"], delivery["id"], "{requests:?}");
        assert_eq!(request["verified"], true, "{request}");
    }
    let statuses: Vec<&Value> = requests.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [&json!(500), &json!(500), &json!(200)]);
    app.stop().await;
}

/// A worker process with webhooks on, on a free port: the secret goes into its config
/// file (`spawn_process` writes the redacted form, which has none).
async fn spawn_webhook_worker(
    settings: &Settings,
    dir: &std::path::Path,
    name: &str,
) -> ChildProcess {
    let settings = on_free_port(settings);
    let config = dir.join(format!("{name}.toml"));
    let text = settings
        .to_redacted_toml()
        .replace("\"<redacted>\"", &format!("\"{SECRET}\""));
    std::fs::write(&config, text).expect("write config");
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_reportd"))
        .args(["--config", config.to_str().unwrap_or_default(), "serve"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info,reportd=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start reportd");
    let process = ChildProcess {
        child,
        address: format!("http://{}", settings.server.bind),
        log,
    };
    let http = reqwest::Client::new();
    wait_until(
        &format!("{name} to answer /health/live"),
        Duration::from_secs(60),
        || async {
            http.get(format!("{}/health/live", process.address))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    process
}

#[actix_web::test]
async fn a_receiver_down_while_the_worker_is_killed_gets_the_event_after_the_restart() {
    let port = crate::common::app::free_port();
    let endpoint = format!("http://127.0.0.1:{port}/hook");
    let mut webhooks = webhook_settings(vec![endpoint.clone()]);
    webhooks.first_retry_ms = 500;
    let api = spawn_app(AppOptions {
        roles: vec![Role::Api],
        webhooks: Some(webhooks.clone()),
        ..AppOptions::default()
    })
    .await;
    let (mut worker, tmp) = test_settings(&AppOptions {
        roles: vec![Role::Worker],
        simulate: zero_work(None),
        database_url: Some(api.settings.database.url.clone()),
        queue_name: Some(api.settings.sqs.queue_name.clone()),
        webhooks: Some(webhooks),
        ..AppOptions::default()
    })
    .await;
    worker.database.create_if_missing = false;
    let first = spawn_webhook_worker(&worker, tmp.path(), "worker-a").await;
    let id = api.submit_ok(5).await;
    api.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    // Recorded, and one try against the receiver that is not there yet has failed (a
    // claimed try counts in `attempts` before its outcome is known: wait for the error).
    let delivery = wait_for_delivery(&api, id, "tried", |d| {
        d["lastError"].is_string() && d["state"] == "pending"
    })
    .await;
    assert!(
        delivery["attempts"].as_i64().unwrap_or(0) >= 1,
        "{delivery}"
    );
    first.kill_hard();
    let receiver = Receiver::start(SECRET, "200", port);
    let second = spawn_webhook_worker(&worker, tmp.path(), "worker-b").await;
    let requests = receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    assert_eq!(requests[0]["id"], delivery["id"]);
    assert_eq!(requests[0]["verified"], true, "{:?}", requests[0]);
    wait_for_delivery(&api, id, "delivered", |d| d["state"] == "delivered").await;
    second.kill_hard();
    api.stop().await;
}

#[actix_web::test]
async fn callbacks_to_loopback_hosts_are_refused_when_private_addresses_are_not_allowed() {
    let mut settings = webhook_settings(Vec::new());
    settings.allow_private = false;
    let app = webhook_app(settings).await;
    // Port 9 (discard): nothing is ever sent there; the check refuses before any request.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://0.0.0.0:9/hook",
    ] {
        let (status, body) = submit_with_callback(&app, Some(url)).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["field"], "callbackUrl", "{url}: {body}");
    }
    let (status, body) = submit_with_callback(&app, Some("ftp://example.com/hook")).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("callbackUrl")),
        "{body}"
    );
    assert!(
        job_rows(&app).await.is_empty(),
        "a refused submission wrote a row"
    );
    let client = pg_connect(&app.settings.database.url).await;
    let deliveries: i64 = client
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(deliveries, 0);
    app.stop().await;
}

#[actix_web::test]
async fn a_callback_needs_webhooks_on() {
    let app = spawn_app(AppOptions {
        simulate: zero_work(None),
        ..AppOptions::default()
    })
    .await;
    let (status, body) = submit_with_callback(&app, Some("https://example.com/hook")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "callbackUrl");
    // Off, a finished report records nothing and /health shows no backlog.
    let id = app.submit_ok(1).await;
    app.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert!(deliveries(&app, id).await.is_empty());
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["webhooks"], Value::Null, "{health}");
    app.stop().await;
}

#[actix_web::test]
async fn a_410_stops_retries_and_redeliver_sends_again_with_the_same_id() {
    let receiver = Receiver::start(SECRET, "410,200", 0);
    let app = webhook_app(webhook_settings(Vec::new())).await;
    let (status, body) = submit_with_callback(&app, Some(&receiver.url())).await;
    assert_eq!(status, 202, "{body}");
    let id = id_of(&body);
    let stopped = wait_for_delivery(&app, id, "stopped", |d| d["state"] == "stopped").await;
    assert_eq!(stopped["attempts"], 1);
    assert_eq!(stopped["lastStatusCode"], 410);
    let response = app
        .http
        .post(app.url(&format!("/reports/{id}/webhooks/redeliver")))
        .send()
        .await
        .expect("redeliver");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["items"][0]["id"], stopped["id"], "{body}");
    let delivered = wait_for_delivery(&app, id, "delivered", |d| d["state"] == "delivered").await;
    assert_eq!(delivered["id"], stopped["id"]);
    assert_eq!(delivered["attempts"], 1);
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        2,
        "a stopped delivery was retried: {requests:?}"
    );
    assert!(
        requests.iter().all(|r| r["id"] == stopped["id"]),
        "{requests:?}"
    );
    let (status, _) = app
        .get_json(&format!("/reports/{}/webhooks", Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[actix_web::test]
async fn a_fleet_endpoint_that_resolves_to_loopback_is_refused_at_delivery_time() {
    // Endpoints are checked when sent to, not only when configured: the receiver is up,
    // but no request may reach it.
    let receiver = Receiver::start(SECRET, "200", 0);
    let mut settings = webhook_settings(vec![receiver.url()]);
    settings.allow_private = false;
    settings.retry_for_s = 1;
    let app = webhook_app(settings).await;
    let id = app.submit_ok(9).await;
    let gave_up = wait_for_delivery(&app, id, "given up", |d| d["state"] == "gave_up").await;
    let error = gave_up["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("127.0.0.1"),
        "{gave_up}"
    );
    assert_eq!(gave_up["lastStatusCode"], Value::Null);
    assert!(receiver.requests().is_empty(), "{:?}", receiver.requests());
    app.stop().await;
}

#[actix_web::test]
async fn an_expired_report_sends_report_cancelled() {
    let receiver = Receiver::start(SECRET, "204", 0);
    let app = webhook_app(webhook_settings(Vec::new())).await;
    // Not started by its notAfter: the claim ends it `cancelled` (reason `expired`).
    let body = json!({"userId": 4, "startDate": "2024-01-01", "endDate": "2024-01-31",
        "notAfter": "2020-01-01T00:00:00Z", "callbackUrl": receiver.url()});
    let (status, body) = app.submit(&body).await;
    assert_eq!(status, 202, "{body}");
    let id = id_of(&body);
    app.wait_for_status(id, "cancelled", Duration::from_secs(30))
        .await;
    let requests = receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    assert_eq!(requests[0]["verified"], true, "{:?}", requests[0]);
    let payload: Value =
        serde_json::from_str(requests[0]["body"].as_str().unwrap_or("")).expect("JSON body");
    assert_eq!(payload["type"], "report.cancelled");
    assert_eq!(payload["data"]["cancelReason"], "expired");
    let delivery = wait_for_delivery(&app, id, "delivered", |d| d["state"] == "delivered").await;
    assert_eq!(delivery["lastStatusCode"], 204);
    app.stop().await;
}
