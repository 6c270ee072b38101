//! The consumer (PollerActor → ReportWorker pool → StatusActor) against real PostgreSQL
//! and LocalStack SQS, including crashes and signals of real `reportd` processes.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::app::{spawn_app, spawn_process, test_settings, wait_until, AppOptions, TestApp};
use common::jobs::{
    count_by_status, on_free_port as on_port, queue_depth as depth, runs_in_order,
    zero_work as simulate, Recorder,
};
use reportd::config::{Role, SimulateSettings};
use serde_json::Value;
use uuid::Uuid;

/// Every message on the DLQ, with its attributes (received with a short visibility).
async fn dlq_messages(app: &TestApp) -> Vec<aws_sdk_sqs::types::Message> {
    let output = app
        .queue
        .client()
        .receive_message()
        .queue_url(&app.queue.dlq_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .visibility_timeout(1)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive from the DLQ");
    output.messages.unwrap_or_default()
}

#[actix_web::test]
async fn a_job_runs_once_and_its_message_is_deleted() {
    let app = spawn_app(AppOptions {
        simulate: simulate(None),
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(3).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 1);
    assert!(record["startedAt"].is_string() && record["finishedAt"].is_string());
    let queue_url = app.queue.queue_url.clone();
    wait_until(
        "the main queue to be empty",
        Duration::from_secs(15),
        || async { depth(&app, &queue_url).await == 0 },
    )
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn the_same_id_sent_twice_is_processed_once_and_the_duplicate_deleted() {
    let app = spawn_app(AppOptions {
        simulate: simulate(Some([1500, 1500])),
        visibility_timeout_s: 6,
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(3).await;
    app.queue
        .send_batch(&[reportd::queue::OutgoingMessage::for_report(id, None, 0)])
        .await
        .expect("duplicate sent");
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let queue_url = app.queue.queue_url.clone();
    wait_until(
        "both copies to be gone from the queue",
        Duration::from_secs(30),
        || async { depth(&app, &queue_url).await == 0 },
    )
    .await;
    assert_eq!(
        app.report(id).await["attempts"],
        1,
        "processed once: {record}"
    );
    assert!(
        dlq_messages(&app).await.is_empty(),
        "nothing went to the DLQ"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_job_longer_than_the_visibility_timeout_is_never_started_twice() {
    let app = spawn_app(AppOptions {
        simulate: simulate(Some([12_000, 12_000])),
        visibility_timeout_s: 6,
        workers: 2,
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(9).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(45))
        .await;
    assert_eq!(
        record["attempts"], 1,
        "a second worker started it: {record}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_job_that_fails_twice_then_succeeds_completes_with_three_attempts() {
    let app = spawn_app(AppOptions {
        simulate: SimulateSettings {
            fail_first_attempts: 2,
            ..simulate(None)
        },
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(4).await;
    // In between, the failure is visible: back in the queue with its error.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_retry_state = false;
    while Instant::now() < deadline && !saw_retry_state {
        let record = app.report(id).await;
        saw_retry_state = record["status"] == "in-queue" && record["lastError"].is_string();
        if record["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        saw_retry_state,
        "never saw in-queue with lastError between attempts"
    );
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(record["attempts"], 3, "{record}");
    app.stop().await;
}

#[actix_web::test]
async fn a_job_that_always_fails_ends_failed_with_its_message_in_the_dlq() {
    let app = spawn_app(AppOptions {
        simulate: SimulateSettings {
            fail_first_attempts: 100,
            ..simulate(None)
        },
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(4).await;
    let record = app
        .wait_for_status(id, "failed", Duration::from_secs(40))
        .await;
    assert_eq!(record["attempts"], 3, "{record}");
    assert!(
        record["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("simulated failure")),
        "{record}"
    );
    // reportd copies the message to the DLQ with the reason at the final failure.
    let mut moved = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while moved.is_empty() && Instant::now() < deadline {
        moved = dlq_messages(&app).await;
    }
    assert_eq!(moved.len(), 1, "one message in the DLQ");
    assert_eq!(
        moved[0].body(),
        Some(format!("{{\"id\":\"{id}\"}}").as_str())
    );
    let queue_url = app.queue.queue_url.clone();
    wait_until(
        "the main queue to be empty",
        Duration::from_secs(10),
        || async { depth(&app, &queue_url).await == 0 },
    )
    .await;
    assert_eq!(
        app.report(id).await["attempts"],
        3,
        "no attempt after the last receive"
    );
    app.stop().await;
}

#[actix_web::test]
async fn poison_messages_go_to_the_dlq_on_their_first_receive_with_the_reason() {
    let app = spawn_app(AppOptions {
        simulate: simulate(None),
        visibility_timeout_s: 60,
        ..AppOptions::default()
    })
    .await;
    let unknown = Uuid::new_v4();
    for body in [
        "not json".to_string(),
        "{\"x\":1}".to_string(),
        format!("{{\"id\":\"{unknown}\"}}"),
    ] {
        app.queue
            .client()
            .send_message()
            .queue_url(&app.queue.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send poison");
    }
    let mut reasons: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reasons.len() < 3 && Instant::now() < deadline {
        for message in dlq_messages(&app).await {
            let reason = message
                .message_attributes()
                .and_then(|a| a.get("reportd_poison_reason"))
                .and_then(|v| v.string_value())
                .unwrap_or("")
                .to_string();
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
    }
    // Well within one 60 s visibility timeout, so no second receive happened.
    assert_eq!(reasons.len(), 3, "reasons: {reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains(&unknown.to_string())),
        "{reasons:?}"
    );
    assert!(reasons.iter().all(|r| !r.is_empty()));
    let queue_url = app.queue.queue_url.clone();
    wait_until(
        "the main queue to be empty",
        Duration::from_secs(10),
        || async { depth(&app, &queue_url).await == 0 },
    )
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn fifo_jobs_of_one_user_run_in_order_and_different_users_overlap() {
    let (recorder, runs) = Recorder::new(Duration::from_millis(300));
    let app = spawn_app(AppOptions {
        fifo: true,
        workers: 4,
        generator: Some(recorder),
        ..AppOptions::default()
    })
    .await;
    let mut user_1 = Vec::new();
    let mut user_2 = Vec::new();
    for _ in 0..5 {
        user_1.push(app.submit_ok(1).await);
    }
    for _ in 0..5 {
        user_2.push(app.submit_ok(2).await);
    }
    for id in user_1.iter().chain(&user_2) {
        app.wait_for_status(*id, "completed", Duration::from_secs(60))
            .await;
    }
    let runs = runs_in_order(&runs);
    let of = |ids: &[Uuid]| -> Vec<(Uuid, Instant, Instant)> {
        let mut mine: Vec<_> = runs
            .iter()
            .filter(|r| ids.contains(&r.0))
            .cloned()
            .collect();
        mine.sort_by_key(|r| r.1);
        mine
    };
    let first = of(&user_1);
    assert_eq!(
        first.iter().map(|r| r.0).collect::<Vec<_>>(),
        user_1,
        "user 1's jobs ran in submit order"
    );
    assert!(
        first.windows(2).all(|w| w[0].2 <= w[1].1),
        "user 1's jobs never overlapped"
    );
    let second = of(&user_2);
    assert_eq!(second.iter().map(|r| r.0).collect::<Vec<_>>(), user_2);
    let overlap = first
        .iter()
        .any(|a| second.iter().any(|b| a.1 < b.2 && b.1 < a.2));
    assert!(overlap, "jobs of two users ran in parallel");
    app.stop().await;
}

#[actix_web::test]
async fn the_csv_report_matches_an_independent_computation() {
    let app = spawn_app(AppOptions::default()).await;
    let client = common::pg_connect(&app.settings.database.url).await;
    // Three days of activity for user 77, one event outside the range, one of another user.
    let events: [(i64, &str, i64); 6] = [
        (77, "2024-05-01T08:00:00Z", 100),
        (77, "2024-05-01T23:59:00Z", 250),
        (77, "2024-05-03T12:00:00Z", 5),
        (77, "2024-05-04T00:00:00Z", 7),
        (77, "2024-06-01T00:00:00Z", 1000),
        (78, "2024-05-02T00:00:00Z", 42),
    ];
    for (user, at, amount) in events {
        client
            .execute(
                "INSERT INTO user_activity (user_id, occurred_at, kind, amount_cents) VALUES ($1, $2::text::timestamptz, 'purchase', $3)",
                &[&user, &at, &amount],
            )
            .await
            .expect("insert activity");
    }
    let (status, body) = app
        .submit(
            &serde_json::json!({"userId": 77, "startDate": "2024-05-01", "endDate": "2024-05-04"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id: Uuid = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(
        record["reportUrl"],
        Value::String(format!("http://reportd.test:8080/reports/{id}/file"))
    );
    let response = app
        .http
        .get(app.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status().as_u16(), 200);
    let csv = response.text().await.expect("csv");
    let expected =
        "day,events,amount_cents\r\n2024-05-01,2,350\r\n2024-05-03,1,5\r\n2024-05-04,1,7\r\n";
    assert_eq!(csv, expected);
    assert!(app.output_dir.join(format!("{id}.csv")).exists());
    app.stop().await;
}

#[actix_web::test]
async fn the_file_of_a_report_that_is_not_completed_is_404() {
    let app = spawn_app(AppOptions {
        roles: vec![Role::Api],
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(1).await;
    let (status, body) = app.get_json(&format!("/reports/{id}/file")).await;
    assert_eq!(status, 404, "{body}");
    app.stop().await;
}

/// An in-test API process plus settings for worker processes sharing its database and queue.
async fn api_with_worker_settings(
    simulate: SimulateSettings,
    visibility_timeout_s: u32,
    grace_s: u64,
) -> (TestApp, reportd::config::Settings, Arc<tempfile::TempDir>) {
    let api = spawn_app(AppOptions {
        roles: vec![Role::Api],
        visibility_timeout_s,
        ..AppOptions::default()
    })
    .await;
    let (mut worker, tmp) = test_settings(&AppOptions {
        roles: vec![Role::Worker],
        workers: 8,
        simulate,
        visibility_timeout_s,
        grace_s,
        database_url: Some(api.settings.database.url.clone()),
        queue_name: Some(api.settings.sqs.queue_name.clone()),
        ..AppOptions::default()
    })
    .await;
    worker.database.create_if_missing = false;
    (api, worker, tmp)
}

#[actix_web::test]
async fn two_worker_processes_share_200_jobs_and_complete_each_exactly_once() {
    let (api, worker, tmp) = api_with_worker_settings(simulate(Some([10, 40])), 30, 5).await;
    let first = spawn_process(&on_port(&worker), tmp.path(), "worker-a").await;
    let second = spawn_process(&on_port(&worker), tmp.path(), "worker-b").await;
    let mut ids = Vec::new();
    for chunk in 0..20 {
        let submits = (0..10).map(|n| api.submit_ok(chunk * 10 + n + 1));
        ids.extend(futures_util::future::join_all(submits).await);
    }
    assert_eq!(ids.len(), 200);
    wait_until(
        "all 200 jobs to complete",
        Duration::from_secs(120),
        || async { count_by_status(&api, "completed").await == 200 },
    )
    .await;
    let client = common::pg_connect(&api.settings.database.url).await;
    let not_once: i64 = client
        .query_one("SELECT count(*) FROM report_queue WHERE attempts <> 1", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(not_once, 0, "every job ran exactly once");
    let done_by = |p: &common::app::ChildProcess| p.log_text().matches("job completed").count();
    let (a, b) = (done_by(&first), done_by(&second));
    assert_eq!(a + b, 200, "each completion logged once (a = {a}, b = {b})");
    assert!(a > 0 && b > 0, "both processes worked (a = {a}, b = {b})");
    assert!(first.terminate(Duration::from_secs(30)).success());
    assert!(second.terminate(Duration::from_secs(30)).success());
    api.stop().await;
}

#[actix_web::test]
async fn sigterm_mid_job_releases_it_and_another_process_completes_it() {
    let (api, worker, tmp) = api_with_worker_settings(simulate(Some([8000, 8000])), 120, 1).await;
    let first = spawn_process(&on_port(&worker), tmp.path(), "worker-a").await;
    let id = api.submit_ok(11).await;
    api.wait_for_status(id, "in-progress", Duration::from_secs(20))
        .await;
    let status = first.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let record = api.report(id).await;
    assert_eq!(
        record["status"], "in-queue",
        "released at shutdown: {record}"
    );
    let mut quick = worker.clone();
    quick.simulate = simulate(Some([200, 200]));
    let second = spawn_process(&on_port(&quick), tmp.path(), "worker-b").await;
    // Released with visibility 0: well before the 120 s visibility timeout.
    let record = api
        .wait_for_status(id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(second.terminate(Duration::from_secs(30)).success());
    api.stop().await;
}

#[actix_web::test]
async fn kill_9_mid_job_is_completed_by_another_process_after_the_visibility_timeout() {
    let (api, worker, tmp) = api_with_worker_settings(simulate(Some([6000, 6000])), 6, 1).await;
    let first = spawn_process(&on_port(&worker), tmp.path(), "worker-a").await;
    let id = api.submit_ok(12).await;
    api.wait_for_status(id, "in-progress", Duration::from_secs(20))
        .await;
    first.kill_hard();
    let mut quick = worker.clone();
    quick.simulate = simulate(Some([200, 200]));
    let second = spawn_process(&on_port(&quick), tmp.path(), "worker-b").await;
    let record = api
        .wait_for_status(id, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(second.terminate(Duration::from_secs(30)).success());
    api.stop().await;
}

#[actix_web::test]
async fn a_postgres_outage_pauses_receives_so_queued_jobs_are_not_dead_lettered() {
    let direct = common::fresh_database().await;
    let proxy = common::proxy::SqsProxy::start("127.0.0.1:5432".into()).await;
    let name = direct.rsplit('/').next().unwrap_or_default().to_string();
    let app = spawn_app(AppOptions {
        database_url: Some(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            proxy.port()
        )),
        workers: 1,
        visibility_timeout_s: 6,
        simulate: simulate(Some([1500, 1500])),
        ..AppOptions::default()
    })
    .await;
    let ids = vec![
        app.submit_ok(1).await,
        app.submit_ok(2).await,
        app.submit_ok(3).await,
    ];
    app.wait_for_status(ids[0], "in-progress", Duration::from_secs(20))
        .await;
    proxy.cut();
    // Long enough for three 5 s claim retries, i.e. for the DLQ, were receives not paused.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        dlq_messages(&app).await.is_empty(),
        "no job went to the DLQ during the outage"
    );
    proxy.restore();
    for id in &ids {
        let record = app
            .wait_for_status(*id, "completed", Duration::from_secs(60))
            .await;
        assert!(
            record["attempts"].as_i64().is_some_and(|a| a <= 2),
            "{record}"
        );
    }
    assert!(dlq_messages(&app).await.is_empty());
    app.stop().await;
}

#[actix_web::test]
async fn a_second_signal_exits_at_once_and_json_logs_carry_the_job_span() {
    let (api, mut worker, tmp) =
        api_with_worker_settings(simulate(Some([20_000, 20_000])), 60, 30).await;
    worker.log.format = reportd::config::LogFormat::Json;
    let mut process = spawn_process(&on_port(&worker), tmp.path(), "worker-json").await;
    let id = api.submit_ok(31).await;
    api.wait_for_status(id, "in-progress", Duration::from_secs(20))
        .await;
    process.signal("TERM");
    wait_until(
        "the first signal to start the shutdown",
        Duration::from_secs(10),
        || {
            let log = process.log_text();
            async move { log.contains("shutting down") }
        },
    )
    .await;
    process.signal("TERM");
    // Far sooner than the 30 s grace period the first signal granted.
    let status = process.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", process.log_text());
    let log = process.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.is_empty() && lines.len() == log.lines().count(),
        "every line is JSON:\n{log}"
    );
    let job_line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job claimed" || l["message"] == "job claimed");
    let job_line = job_line.unwrap_or_else(|| panic!("no 'job claimed' line:\n{log}"));
    assert_eq!(
        job_line["span"]["report_id"],
        id.to_string().as_str(),
        "{job_line}"
    );
    assert!(job_line["span"]["message_id"].is_string(), "{job_line}");
    api.stop().await;
}
