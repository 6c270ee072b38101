//! The reconciler, redrive and retry against real PostgreSQL and LocalStack SQS: every
//! job that is not finished keeps a live message, and every re-send is sent once.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::app::{spawn_app, wait_until, AppOptions, TestApp};
use futures_util::future::BoxFuture;
use reportd::config::{Role, SimulateSettings};
use reportd::db::reconcile::PASS_LOCK_KEY;
use reportd::queue::{message_body, SqsQueue};
use reportd::report::{GeneratedReport, GeneratorError, JobContext, ReportGenerator};
use serde_json::{json, Value};
use uuid::Uuid;

fn quick_jobs() -> AppOptions {
    AppOptions {
        simulate: SimulateSettings {
            skip_generator: true,
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    }
}

/// A database and queues made before any reportd process starts, so that a test can put
/// rows and messages in place for the process's first reconciler pass.
async fn prepared(prefix: &str) -> (String, String, SqsQueue) {
    common::require_sqs().await;
    let database_url = common::migrated_database().await;
    let queue_name = common::unique_queue_name(prefix);
    let settings = common::sqs_settings(&queue_name, false);
    let client = reportd::queue::build_client(&settings).await;
    reportd::queue::provision::ensure_queues(&client, &settings)
        .await
        .expect("queues created");
    let queue = SqsQueue::connect(client, &settings)
        .await
        .expect("queues exist");
    (database_url, queue_name, queue)
}

/// Inserts a report row in `status` whose message SQS accepted a minute ago.
async fn insert_row(database_url: &str, id: Uuid, status: &str) {
    let client = common::pg_connect(database_url).await;
    let payload = json!({"userId": 7, "startDate": "2024-01-01T00:00:00Z", "endDate": "2024-01-31T00:00:00Z"});
    client
        .execute(
            "INSERT INTO report_queue (id, payload, status, user_id, enqueued_at) \
             VALUES ($1::text::uuid, $2::text::jsonb, $3, 7, now() - interval '1 minute')",
            &[&id.to_string(), &payload.to_string(), &status],
        )
        .await
        .expect("insert report row");
}

/// Sets columns of one report's row.
async fn update_row(database_url: &str, id: Uuid, set: &str) {
    let client = common::pg_connect(database_url).await;
    client
        .execute(
            &format!("UPDATE report_queue SET {set} WHERE id = $1::text::uuid"),
            &[&id.to_string()],
        )
        .await
        .expect("update report row");
}

async fn send_generation(database_url: &str, id: Uuid) -> i32 {
    let client = common::pg_connect(database_url).await;
    client
        .query_one(
            "SELECT send_generation FROM report_queue WHERE id = $1::text::uuid",
            &[&id.to_string()],
        )
        .await
        .expect("select generation")
        .get(0)
}

/// Whether the row's current message was marked sent in the last `seconds`.
async fn sent_within(database_url: &str, id: Uuid, seconds: f64) -> bool {
    let client = common::pg_connect(database_url).await;
    client
        .query_one(
            "SELECT coalesce(enqueued_at > now() - $2 * interval '1 second', false) \
             FROM report_queue WHERE id = $1::text::uuid",
            &[&id.to_string(), &seconds],
        )
        .await
        .expect("select enqueued_at")
        .get(0)
}

async fn put_in_dlq(queue: &SqsQueue, id: Uuid) {
    queue
        .client()
        .send_message()
        .queue_url(&queue.dlq_url)
        .message_body(message_body(id))
        .send()
        .await
        .expect("send to the DLQ");
}

async fn dlq_report_ids(app: &TestApp) -> Vec<String> {
    let (status, body) = app.get_json("/dlq").await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["reportId"].as_str().map(str::to_string))
        .collect()
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

/// Holds the reconciler's pass lock on its own connection until dropped, so that no
/// reconciler pass (and no DLQ watcher) runs while a test sets up or checks something.
async fn hold_pass_lock(database_url: &str) -> tokio_postgres::Client {
    let client = common::pg_connect(database_url).await;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&PASS_LOCK_KEY])
        .await
        .expect("take the pass lock");
    client
}

async fn release_pass_lock(client: tokio_postgres::Client) {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&PASS_LOCK_KEY])
        .await
        .expect("release the pass lock");
}

#[actix_web::test]
async fn an_unfinished_job_whose_message_sqs_dead_lettered_behind_reportds_back_completes() {
    let (database_url, queue_name, queue) = prepared("rec-dlq").await;
    // In-queue, sent a minute ago; its only message is in the DLQ, as after SQS's redrive.
    let id = Uuid::new_v4();
    insert_row(&database_url, id, "in-queue").await;
    put_in_dlq(&queue, id).await;
    let app = spawn_app(AppOptions {
        database_url: Some(database_url.clone()),
        queue_name: Some(queue_name),
        ..quick_jobs()
    })
    .await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(record["attempts"], 1, "{record}");
    assert_eq!(send_generation(&database_url, id).await, 1);
    assert!(
        dlq_report_ids(&app).await.is_empty(),
        "the DLQ copy was deleted"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_job_sqs_keeps_dead_lettering_is_failed_and_its_message_stays_in_the_dlq() {
    let (database_url, queue_name, queue) = prepared("rec-cap").await;
    let id = Uuid::new_v4();
    insert_row(&database_url, id, "in-queue").await;
    update_row(&database_url, id, "send_generation = 10").await;
    put_in_dlq(&queue, id).await;
    let app = spawn_app(AppOptions {
        database_url: Some(database_url.clone()),
        queue_name: Some(queue_name),
        ..quick_jobs()
    })
    .await;
    let record = app
        .wait_for_status(id, "failed", Duration::from_secs(30))
        .await;
    assert_eq!(
        record["lastError"],
        "SQS dead-lettered its message 10 times; stopped re-sending"
    );
    assert_eq!(
        dlq_report_ids(&app).await,
        vec![id.to_string()],
        "left for a person"
    );
    assert_eq!(send_generation(&database_url, id).await, 10, "not re-sent");
    app.stop().await;
}

#[actix_web::test]
async fn an_in_progress_job_whose_worker_vanished_without_a_message_gets_a_new_one_and_completes() {
    let (database_url, queue_name, _queue) = prepared("rec-lost").await;
    // Claimed once, then silent for longer than 3 visibility timeouts + 30 s (6 s here),
    // and no message anywhere: its worker died and SQS lost track of it.
    let id = Uuid::new_v4();
    insert_row(&database_url, id, "in-progress").await;
    update_row(
        &database_url,
        id,
        "attempts = 1, started_at = now() - interval '60 seconds', \
         updated_at = now() - interval '49 seconds'",
    )
    .await;
    let app = spawn_app(AppOptions {
        database_url: Some(database_url.clone()),
        queue_name: Some(queue_name),
        visibility_timeout_s: 6,
        ..quick_jobs()
    })
    .await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(send_generation(&database_url, id).await, 1);
    app.stop().await;
}

#[actix_web::test]
async fn redrive_all_leaves_a_message_its_scan_did_not_see_and_that_reports_row_failed() {
    let app = spawn_app(quick_jobs()).await;
    let database_url = app.settings.database.url.clone();
    let _lock = hold_pass_lock(&database_url).await;
    let (seen, unseen) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [seen, unseen] {
        insert_row(&database_url, id, "failed").await;
        update_row(
            &database_url,
            id,
            "attempts = 3, failures = 3, finished_at = now()",
        )
        .await;
        put_in_dlq(&app.queue, id).await;
    }
    // `unseen` stands for a message that arrives after the redrive's scan: hidden now.
    hide_in_dlq(&app.queue, unseen, 8).await;

    let (status, report) = post(&app, "/dlq/redrive", json!({"all": true})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], json!([seen.to_string()]), "{report}");
    assert!(report.get("moveTask").is_none(), "{report}");
    assert_eq!(app.report(unseen).await["status"], "failed");
    // The redrive sent `seen` itself (no reconciler pass can run): it completes.
    let record = app
        .wait_for_status(seen, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 4, "{record}");
    assert_eq!(send_generation(&database_url, seen).await, 1);

    let key = unseen.to_string();
    wait_until(
        "the unseen message to be visible in the DLQ again",
        Duration::from_secs(30),
        || async { dlq_report_ids(&app).await == vec![key.clone()] },
    )
    .await;
    assert_eq!(app.report(unseen).await["status"], "failed");
    assert_eq!(send_generation(&database_url, unseen).await, 0);
    app.stop().await;
}

/// Receives from the DLQ until `id`'s message is hidden for `seconds`; releases others.
async fn hide_in_dlq(queue: &SqsQueue, id: Uuid, seconds: i32) {
    let body = message_body(id);
    for _ in 0..20 {
        let output = queue
            .client()
            .receive_message()
            .queue_url(&queue.dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(seconds)
            .send()
            .await
            .expect("receive from the DLQ");
        let mut hidden = false;
        for message in output.messages.unwrap_or_default() {
            if message.body() == Some(body.as_str()) {
                hidden = true;
            } else if let Some(handle) = message.receipt_handle() {
                queue
                    .client()
                    .change_message_visibility()
                    .queue_url(&queue.dlq_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .expect("release");
            }
        }
        if hidden {
            return;
        }
    }
    panic!("{id}'s message never showed up in the DLQ");
}

#[actix_web::test]
async fn redrive_leaves_the_message_of_a_completed_report_and_says_so() {
    let app = spawn_app(quick_jobs()).await;
    let database_url = app.settings.database.url.clone();
    let _lock = hold_pass_lock(&database_url).await;
    let id = Uuid::new_v4();
    insert_row(&database_url, id, "completed").await;
    put_in_dlq(&app.queue, id).await;
    let (status, report) = post(&app, "/dlq/redrive", json!({"ids": [id.to_string()]})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["moved"], json!([]), "{report}");
    assert_eq!(report["skipped"][0]["reportId"], id.to_string().as_str());
    assert_eq!(report["skipped"][0]["status"], "completed");
    assert_eq!(dlq_report_ids(&app).await, vec![id.to_string()]);
    app.stop().await;
}

/// Counts every message on the main queue by the report id in its body (each received
/// once, hidden for the rest of the test).
async fn drain_main_queue(queue: &SqsQueue) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    loop {
        let messages = queue
            .receive(10, 1, Some(300))
            .await
            .expect("receive from the main queue");
        if messages.is_empty() {
            return counts;
        }
        for message in messages {
            *counts.entry(message.body).or_default() += 1;
        }
    }
}

async fn unsent_rows(database_url: &str, older_than_s: f64) -> i64 {
    let client = common::pg_connect(database_url).await;
    client
        .query_one(
            "SELECT count(*) FROM report_queue WHERE enqueued_at IS NULL \
             AND updated_at < now() - $1 * interval '1 second'",
            &[&older_than_s],
        )
        .await
        .expect("count")
        .get(0)
}

/// What [`GateProxy`] does with SQS traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gate {
    Open,
    /// SQS is away: connections are refused and open ones closed.
    Cut,
    /// Every chunk a client sends waits this long before it is forwarded.
    Slow(Duration),
}

/// A TCP proxy in front of LocalStack that can cut SQS off or slow every call down.
struct GateProxy {
    port: u16,
    gate: Arc<tokio::sync::watch::Sender<Gate>>,
}

impl GateProxy {
    async fn start() -> Self {
        let upstream = common::sqs_endpoint()
            .trim_start_matches("http://")
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let gate = Arc::new(tokio::sync::watch::channel(Gate::Open).0);
        let state = gate.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *state.borrow() == Gate::Cut {
                    continue;
                }
                tokio::spawn(forward(inbound, upstream.clone(), state.subscribe()));
            }
        });
        Self { port, gate }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }
}

async fn forward(
    inbound: tokio::net::TcpStream,
    upstream: String,
    mut gate: tokio::sync::watch::Receiver<Gate>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let delays = gate.clone();
    let requests = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let gate = *delays.borrow();
            if let Gate::Slow(delay) = gate {
                tokio::time::sleep(delay).await;
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let answers = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
        _ = gate.wait_for(|g| *g == Gate::Cut) => {}
    }
}

#[actix_web::test]
async fn two_api_processes_send_each_report_exactly_once_after_an_sqs_outage() {
    let proxy = GateProxy::start().await;
    let api_only = AppOptions {
        roles: vec![Role::Api],
        sqs_endpoint: Some(proxy.endpoint()),
        ..AppOptions::default()
    };
    let first = spawn_app(api_only.clone()).await;
    let database_url = first.settings.database.url.clone();
    let queue_name = first.settings.sqs.queue_name.clone();
    let second = spawn_app(AppOptions {
        database_url: Some(database_url.clone()),
        queue_name: Some(queue_name.clone()),
        ..api_only
    })
    .await;
    proxy.set(Gate::Cut);
    // While the test holds the pass lock, both processes skip their passes every second.
    let lock = hold_pass_lock(&database_url).await;
    let submits = (0..50).flat_map(|n| [first.submit_ok(n + 1), second.submit_ok(n + 1)]);
    let ids = futures_util::future::join_all(submits).await;
    wait_until(
        "every report to be due for the reconciler, unsent",
        Duration::from_secs(30),
        || async { unsent_rows(&database_url, 11.0).await == 100 },
    )
    .await;
    // SQS comes back slow: a pass's sends take seconds, longer than the pause between
    // passes, so the two processes' next passes would overlap if nothing kept them apart.
    proxy.set(Gate::Slow(Duration::from_millis(1500)));
    release_pass_lock(lock).await;
    wait_until(
        "every report to be marked as sent",
        Duration::from_secs(60),
        || async { unsent_rows(&database_url, 0.0).await == 0 },
    )
    .await;
    let direct = common::sqs_settings(&queue_name, false);
    let direct = SqsQueue::connect(reportd::queue::build_client(&direct).await, &direct)
        .await
        .expect("queues exist");
    let counts = drain_main_queue(&direct).await;
    for id in &ids {
        assert_eq!(
            counts.get(&message_body(*id)).copied().unwrap_or(0),
            1,
            "report {id} sent once; all counts: {counts:?}"
        );
    }
    assert_eq!(counts.len(), 100, "{counts:?}");
    proxy.set(Gate::Open);
    first.stop().await;
    second.stop().await;
}

/// Fails every job's first attempt for good, and completes the later ones.
struct FailsFirstAttemptForGood;

impl ReportGenerator for FailsFirstAttemptForGood {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        Box::pin(async move {
            if job.attempt == 1 {
                Err(GeneratorError::Permanent("bad on the first try".into()))
            } else {
                Ok(GeneratedReport::default())
            }
        })
    }
}

#[actix_web::test]
async fn a_fifo_report_retried_right_after_its_first_send_failed_for_good_completes() {
    let app = spawn_app(AppOptions {
        fifo: true,
        generator: Some(Arc::new(FailsFirstAttemptForGood)),
        ..AppOptions::default()
    })
    .await;
    let id = app.submit_ok(3).await;
    app.wait_for_status(id, "failed", Duration::from_secs(30))
        .await;
    // Well inside FIFO's 5-minute deduplication window of the first send.
    let (status, body) = post(&app, &format!("/reports/{id}/retry"), json!(null)).await;
    assert_eq!(status, 202, "{body}");
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    assert_eq!(send_generation(&app.settings.database.url, id).await, 1);
    app.stop().await;
}

#[actix_web::test]
async fn retry_resends_a_stranded_in_progress_report_and_refuses_a_live_one() {
    let app = spawn_app(AppOptions {
        roles: vec![Role::Api],
        ..AppOptions::default()
    })
    .await;
    let database_url = app.settings.database.url.clone();
    // Keeps the reconciler from re-sending the stranded row before the retry does.
    let _lock = hold_pass_lock(&database_url).await;
    let (stranded, live) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [stranded, live] {
        insert_row(&database_url, id, "in-progress").await;
        update_row(&database_url, id, "attempts = 1, started_at = now()").await;
    }
    // Three visibility timeouts (30 s) and 30 s more without a heartbeat.
    update_row(
        &database_url,
        stranded,
        "updated_at = now() - interval '121 seconds'",
    )
    .await;

    let (status, body) = post(&app, &format!("/reports/{live}/retry"), json!(null)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_retryable");
    assert_eq!(body["error"]["field"], "id");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("in-progress")),
        "{body}"
    );

    let (status, body) = post(&app, &format!("/reports/{stranded}/retry"), json!(null)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["status"], "in-queue",
        "an operator's retry starts over: {body}"
    );
    assert_eq!(send_generation(&database_url, stranded).await, 1);
    let messages = app
        .queue
        .receive(10, 5, Some(60))
        .await
        .expect("receive from the main queue");
    let bodies: Vec<String> = messages.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, vec![message_body(stranded)], "one new message");
    wait_until(
        "the new message to be marked as sent",
        Duration::from_secs(10),
        || async { sent_within(&database_url, stranded, 30.0).await },
    )
    .await;
    // A second retry right after is refused: the row was just touched.
    let (status, _) = post(&app, &format!("/reports/{stranded}/retry"), json!(null)).await;
    assert_eq!(status, 409);
    app.stop().await;
}
