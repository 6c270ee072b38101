//! Dead-letter operations against real PostgreSQL and LocalStack SQS.

use crate::common;

use std::time::Duration;

use common::app::{spawn_app, wait_until, AppOptions, TestApp};
use reportd::config::SimulateSettings;
use serde_json::{json, Value};
use uuid::Uuid;

/// Every job fails its first three attempts: out of receives, then in the DLQ.
fn fails_three_times() -> AppOptions {
    AppOptions {
        simulate: SimulateSettings {
            fail_first_attempts: 3,
            skip_generator: true,
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    }
}

async fn dlq_items(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get_json("/dlq").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the DLQ lists `count` items matching `pred`; returns them.
async fn wait_for_dlq(app: &TestApp, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let items: Vec<Value> = dlq_items(app)
            .await
            .into_iter()
            .filter(|i| pred(i))
            .collect();
        if !items.is_empty() {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what} in the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn failed_job_in_dlq(app: &TestApp) -> Uuid {
    let id = app.submit_ok(21).await;
    app.wait_for_status(id, "failed", Duration::from_secs(40))
        .await;
    let key = id.to_string();
    let listed = wait_for_dlq(app, "the failed job", |i| i["reportId"] == key.as_str()).await;
    assert_eq!(listed[0]["reportStatus"], "failed");
    assert_eq!(listed[0]["attempts"], 3);
    assert!(
        listed[0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("simulated failure")),
        "{}",
        listed[0]
    );
    id
}

#[actix_web::test]
async fn a_job_failed_three_times_is_listed_redriven_by_id_and_completes_with_attempts_from_both_rounds(
) {
    let app = spawn_app(fails_three_times()).await;
    let id = failed_job_in_dlq(&app).await;
    // Listing does not consume: it is still there.
    assert!(dlq_items(&app)
        .await
        .iter()
        .any(|i| i["reportId"] == id.to_string().as_str()));
    let (status, report) = post(&app, "/dlq/redrive", json!({"ids": [id.to_string()]})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], json!([id.to_string()]));
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(
        record["attempts"], 4,
        "three failed attempts, then one that worked: {record}"
    );
    wait_until("the DLQ to be empty", Duration::from_secs(20), || async {
        dlq_items(&app).await.is_empty()
    })
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn redrive_all_moves_failed_jobs_and_leaves_poison_messages_in_the_dlq() {
    let app = spawn_app(fails_three_times()).await;
    app.queue
        .client()
        .send_message()
        .queue_url(&app.queue.queue_url)
        .message_body("not json")
        .send()
        .await
        .expect("send poison");
    let poison = wait_for_dlq(&app, "the poison message", |i| {
        i["poisonReason"].is_string()
    })
    .await;
    assert!(
        poison[0]["poisonReason"]
            .as_str()
            .is_some_and(|r| r.contains("body")),
        "{}",
        poison[0]
    );
    assert!(poison[0]["reportId"].is_null());
    let poison_id = poison[0]["messageId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = failed_job_in_dlq(&app).await;

    let (status, report) = post(&app, "/dlq/redrive", json!({"all": true})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], json!([id.to_string()]), "{report}");
    assert_eq!(report["skippedPoison"], json!([poison_id]), "{report}");
    app.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let left = dlq_items(&app).await;
    assert_eq!(left.len(), 1, "only the poison message is left: {left:?}");
    assert_eq!(left[0]["messageId"], poison_id.as_str());

    // Discarding it by message id empties the DLQ; a second discard finds nothing.
    let response = app
        .http
        .delete(app.url(&format!("/dlq/{poison_id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 204);
    assert!(dlq_items(&app).await.is_empty());
    let response = app
        .http
        .delete(app.url(&format!("/dlq/{poison_id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 404);
    app.stop().await;
}

#[actix_web::test]
async fn redrive_all_without_poison_sends_a_new_message_and_the_job_completes() {
    let app = spawn_app(fails_three_times()).await;
    let id = failed_job_in_dlq(&app).await;
    let (status, report) = post(&app, "/dlq/redrive", json!({"all": true})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], json!([id.to_string()]));
    assert_eq!(report["skipped"], json!([]), "{report}");
    assert!(dlq_items(&app).await.is_empty(), "the DLQ copy was deleted");
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(record["attempts"], 4, "{record}");
    app.stop().await;
}

#[actix_web::test]
async fn retry_requeues_a_failed_report_and_answers_409_for_a_completed_one() {
    let app = spawn_app(fails_three_times()).await;
    let id = app.submit_ok(5).await;
    app.wait_for_status(id, "failed", Duration::from_secs(40))
        .await;
    let (status, body) = post(&app, &format!("/reports/{id}/retry"), json!(null)).await;
    assert_eq!(status, 202, "{body}");
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 4);
    let (status, body) = post(&app, &format!("/reports/{id}/retry"), json!(null)).await;
    assert_eq!(status, 409, "a completed report is not retried: {body}");
    assert_eq!(body["error"]["code"], "not_retryable");
    assert_eq!(body["error"]["field"], "id");
    let (status, _) = post(
        &app,
        &format!("/reports/{}/retry", Uuid::new_v4()),
        json!(null),
    )
    .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[actix_web::test]
async fn bad_redrive_requests_name_the_field() {
    let app = spawn_app(AppOptions::default()).await;
    for (body, field) in [
        (json!({}), "ids"),
        (json!({"ids": "abc"}), "ids"),
        (json!({"all": "yes"}), "all"),
        (json!({"every": true}), "every"),
        (json!([1]), "body"),
    ] {
        let (status, answer) = post(&app, "/dlq/redrive", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
    }
    let (status, answer) = app.get_json("/dlq?limit=0").await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "limit");
    app.stop().await;
}

#[actix_web::test]
async fn a_redrive_posted_as_a_form_or_plain_text_is_refused_with_415() {
    // A cross-site form can send text/plain or a form encoding, never application/json:
    // with no token configured, this is what keeps a web page from redriving the DLQ.
    let app = spawn_app(AppOptions::default()).await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = app
            .http
            .post(app.url("/dlq/redrive"))
            .header("Content-Type", content_type)
            .body("{\"all\":true}")
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status().as_u16(), 415, "{content_type}");
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let oversized = format!("{{\"ids\": [\"{}\"]}}", "x".repeat(300 * 1024));
    let response = app
        .http
        .post(app.url("/dlq/redrive"))
        .header("Content-Type", "application/json")
        .body(oversized)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 413);
    app.stop().await;
}

#[actix_web::test]
async fn the_dlq_cli_lists_and_purges_with_confirmation() {
    let app = spawn_app(AppOptions::default()).await;
    app.queue
        .client()
        .send_message()
        .queue_url(&app.queue.dlq_url)
        .message_body("{\"id\":\"not-a-uuid\"}")
        .send()
        .await
        .expect("send to DLQ");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, app.settings.to_redacted_toml()).expect("config");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_reportd"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run reportd")
    };
    let listed = run(&["dlq", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("not-a-uuid"));
    let refused = run(&["dlq", "purge"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    let purged = run(&["dlq", "purge", "--yes"]);
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );
    wait_until("the DLQ to be empty", Duration::from_secs(20), || async {
        dlq_items(&app).await.is_empty()
    })
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn ten_concurrent_listings_of_a_one_message_dlq_each_see_the_message() {
    let app = spawn_app(AppOptions::default()).await;
    app.queue
        .client()
        .send_message()
        .queue_url(&app.queue.dlq_url)
        .message_body("not json")
        .send()
        .await
        .expect("send to the DLQ");
    wait_for_dlq(&app, "the message", |_| true).await;
    let listings = futures_util::future::join_all((0..10).map(|_| dlq_items(&app))).await;
    for (index, items) in listings.iter().enumerate() {
        assert_eq!(items.len(), 1, "listing {index} saw {items:?}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_repeated_limit_on_the_dlq_listing_is_refused_by_name() {
    let app = spawn_app(AppOptions::default()).await;
    let (status, body) = app.get_json("/dlq?limit=1&limit=2").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "limit");
    app.stop().await;
}
