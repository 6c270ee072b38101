//! Supervision, the health endpoints and metrics, against real PostgreSQL and LocalStack.

use crate::common;

use std::time::Duration;

use common::app::{spawn_app, wait_until, AppOptions, TestApp};
use common::proxy::SqsProxy;
use reportd::config::SimulateSettings;
use serde_json::Value;

fn zero_work() -> SimulateSettings {
    SimulateSettings {
        skip_generator: true,
        ..SimulateSettings::default()
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[actix_web::test]
async fn a_generator_that_panics_once_restarts_its_worker_and_the_job_still_completes() {
    let app = spawn_app(AppOptions {
        workers: 1,
        simulate: SimulateSettings {
            panic_first_attempts: 1,
            ..zero_work()
        },
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(1).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    let (status, health) = app.get_json("/health").await;
    let worker = health["actors"]
        .as_array()
        .and_then(|actors| actors.iter().find(|a| a["name"] == "worker-0"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(worker["restarts"], 1, "{health}");
    assert!(
        worker["lastRestartCause"]
            .as_str()
            .is_some_and(|c| c.contains("panicked")),
        "{worker}"
    );
    assert_eq!(worker["state"], "running");
    assert_eq!(status, 200, "{health}");
    assert_eq!(
        app.get_json("/health/live").await.0,
        200,
        "the process is alive"
    );
    assert_eq!(metric(&app, "reportd_jobs_retried_total").await, 1.0);
    app.stop().await;
}

#[actix_web::test]
async fn an_sqs_outage_turns_health_and_ready_503_and_they_recover_without_a_restart() {
    let proxy = SqsProxy::start("127.0.0.1:4566".into()).await;
    let app = spawn_app(AppOptions {
        sqs_endpoint: Some(proxy.endpoint()),
        simulate: zero_work(),
        ..AppOptions::default()
    })
    .await;
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    proxy.cut();
    let id = app.submit_ok(2).await;
    wait_until(
        "/health/ready to answer 503",
        Duration::from_secs(20),
        || async { app.get_json("/health/ready").await.0 == 503 },
    )
    .await;
    // Within a few poll cycles the poller reports its failing receives.
    let poller_of = |health: &Value| {
        health["actors"]
            .as_array()
            .and_then(|actors| actors.iter().find(|a| a["name"] == "poller"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    wait_until(
        "/health to name the poller's error",
        Duration::from_secs(20),
        || async {
            let (status, health) = app.get_json("/health").await;
            let poller = poller_of(&health);
            status == 503
                && poller["consecutiveErrors"].as_u64().is_some_and(|n| n >= 1)
                && poller["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("ReceiveMessage"))
        },
    )
    .await;
    // Liveness does not depend on SQS: the process is up and its loop ticks.
    assert_eq!(app.get_json("/health/live").await.0, 200);
    proxy.restore();
    wait_until(
        "/health to answer 200 again",
        Duration::from_secs(40),
        || async { app.get_json("/health").await.0 == 200 },
    )
    .await;
    assert_eq!(app.get_json("/health/ready").await.0, 200);
    app.wait_for_status(id, "completed", Duration::from_secs(60))
        .await;
    app.stop().await;
}

#[actix_web::test]
async fn a_locked_table_fails_writes_fast_and_retryably_without_wedging_the_writer() {
    let app = spawn_app(AppOptions {
        simulate: zero_work(),
        ..AppOptions::default()
    })
    .await;
    let mut locker = common::pg_connect(&app.settings.database.url).await;
    let transaction = locker.transaction().await.expect("begin");
    transaction
        .batch_execute("LOCK TABLE report_queue IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let body = serde_json::json!({"userId": 1, "startDate": "2024-01-01", "endDate": "2024-01-02"});
    let started = std::time::Instant::now();
    let (status, error) = app.submit(&body).await;
    assert_eq!(
        status, 503,
        "retryable error while the table is locked: {error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("lock timeout")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed fast (lock_timeout), not after the 60 s of a wedged writer"
    );
    let (live, body_live) = app.get_json("/health/live").await;
    assert_eq!(live, 200, "the writer is not stuck: {body_live}");
    transaction.rollback().await.expect("unlock");
    let (status, _) = app.submit(&body).await;
    assert_eq!(status, 202, "writes go through once the lock is gone");
    wait_until("/health to recover", Duration::from_secs(20), || async {
        app.get_json("/health").await.0 == 200
    })
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn after_n_jobs_the_metrics_counters_equal_n() {
    let app = spawn_app(AppOptions {
        simulate: zero_work(),
        ..AppOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for user in 1..=7 {
        ids.push(app.submit_ok(user).await);
    }
    for id in &ids {
        app.wait_for_status(*id, "completed", Duration::from_secs(30))
            .await;
    }
    assert_eq!(metric(&app, "reportd_jobs_accepted_total").await, 7.0);
    assert_eq!(metric(&app, "reportd_jobs_completed_total").await, 7.0);
    assert_eq!(metric(&app, "reportd_jobs_failed_total").await, 0.0);
    assert_eq!(
        metric(&app, "reportd_job_duration_seconds_count").await,
        7.0
    );
    assert_eq!(
        metric(&app, "reportd_job_queue_wait_seconds_count").await,
        7.0
    );
    assert_eq!(metric(&app, "reportd_jobs_in_flight").await, 0.0);
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("reportd_sqs_calls_total{operation=\"ReceiveMessage\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "reportd_http_requests_total{method=\"POST\",route=\"/reports\",status=\"202\"} 7"
        ),
        "{text}"
    );
    assert!(text.contains("reportd_status_batch_size_count"));
    app.stop().await;
}

/// The running job's id as `/health` shows it to this request, once a worker holds one.
async fn health_job(app: &TestApp, token: Option<&str>) -> Value {
    let mut request = app.http.get(app.url("/health"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let health: Value = request
        .send()
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("JSON");
    health["actors"]
        .as_array()
        .and_then(|actors| actors.iter().find(|a| a["kind"] == "ReportWorker"))
        .map(|worker| worker["job"].clone())
        .unwrap_or(Value::Null)
}

#[actix_web::test]
async fn with_tokens_health_shows_job_ids_and_error_text_only_to_token_holders() {
    let app = spawn_app(AppOptions {
        tokens: vec!["s3cret".into()],
        workers: 1,
        simulate: SimulateSettings {
            duration_ms: Some([4_000, 4_000]),
            ..zero_work()
        },
        ..AppOptions::default()
    })
    .await;
    let response = app
        .http
        .post(app.url("/reports"))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"userId": 1, "startDate": "2024-01-01", "endDate": "2024-01-01"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.expect("JSON")["id"].clone();
    wait_until(
        "a worker to hold the job",
        Duration::from_secs(20),
        || async { health_job(&app, Some("s3cret")).await == id },
    )
    .await;
    assert_eq!(
        health_job(&app, None).await,
        Value::Null,
        "no token: no job id"
    );
    assert_eq!(health_job(&app, Some("wrong")).await, Value::Null);
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200, "a probe still reads the state: {health}");
    assert!(health["redacted"].is_string(), "{health}");
    app.stop().await;
}
