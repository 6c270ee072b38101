//! Fleet scale and PostgreSQL upkeep (issue 15): retention, the upkeep figures in
//! `/metrics` and `/health`, the CSV generator's query timeout, the per-user submit rate.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::app::{spawn_app, wait_until, AppOptions, TestApp};
use reportd::config::Settings;
use reportd::db::models::JobStatus;
use reportd::metrics::Metrics;
use reportd::retention::{PassOutcome, Pruner, PRUNE_LOCK_KEY};
use reportd::storage::ReportStore;
use serde_json::Value;
use uuid::Uuid;

/// Settings for a pruner over `url` with files in `dir`.
fn retention_settings(url: &str, dir: &std::path::Path, batch: u32) -> Settings {
    let mut settings = Settings::default();
    settings.database.url = url.to_string();
    settings.report.output_dir = dir.to_path_buf();
    settings.retention.completed_days = 30;
    settings.retention.failed_days = 90;
    settings.retention.cancelled_days = 7;
    settings.retention.batch = batch;
    settings.validate().expect("valid settings");
    settings
}

/// Inserts a row with `status`, finished `finished_days_ago` days ago (None: not
/// finished), with a file named after it in `dir` when `file` is set.
async fn insert_row(
    db: &tokio_postgres::Client,
    status: &str,
    finished_days_ago: Option<i32>,
    file: Option<&std::path::Path>,
) -> Uuid {
    let id = Uuid::new_v4();
    let key = file.map(|_| format!("{id}.csv"));
    if let (Some(dir), Some(key)) = (file, &key) {
        std::fs::write(dir.join(key), b"day,events,amount_cents\n").expect("write a file");
    }
    db.execute(
        "INSERT INTO report_queue (id, payload, status, created_at, finished_at, file_key, enqueued_at) \
         VALUES ($1::text::uuid, '{}'::jsonb, $2, now() - interval '400 days', \
                 now() - make_interval(days => $3), $4, now())",
        &[&id.to_string(), &status, &finished_days_ago, &key],
    )
    .await
    .expect("insert a row");
    id
}

async fn exists(db: &tokio_postgres::Client, id: Uuid) -> bool {
    let row = db
        .query_one(
            "SELECT count(*) FROM report_queue WHERE id = $1::text::uuid",
            &[&id.to_string()],
        )
        .await
        .expect("count");
    row.get::<_, i64>(0) == 1
}

#[actix_web::test]
async fn the_pruner_deletes_expired_finished_rows_and_their_files_and_nothing_else() {
    let url = common::migrated_database().await;
    let db = common::pg_connect(&url).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    // Batches of 2: the 4 expired completed rows take three batches.
    let settings = retention_settings(&url, dir, 2);
    let old_completed = [
        insert_row(&db, "completed", Some(40), Some(dir)).await,
        insert_row(&db, "completed", Some(31), Some(dir)).await,
        insert_row(&db, "completed", Some(365), Some(dir)).await,
        // Its file is gone already (an earlier pass crashed after deleting it): fine.
        insert_row(&db, "completed", Some(45), None).await,
    ];
    let old_failed = insert_row(&db, "failed", Some(100), None).await;
    let old_cancelled = insert_row(&db, "cancelled", Some(8), None).await;
    let kept = [
        insert_row(&db, "completed", Some(29), Some(dir)).await,
        insert_row(&db, "failed", Some(40), None).await,
        insert_row(&db, "cancelled", Some(6), None).await,
        insert_row(&db, "in-queue", None, None).await,
        insert_row(&db, "in-progress", None, None).await,
    ];
    // A webhook delivery of an expired report goes with it.
    db.execute(
        "INSERT INTO webhook_deliveries (id, report_id, endpoint, event, payload, retry_until) \
         VALUES ($1::text::uuid, $2::text::uuid, 'https://example.test/hook', 'report.completed', '{}'::jsonb, now())",
        &[&Uuid::new_v4().to_string(), &old_completed[0].to_string()],
    )
    .await
    .expect("insert a delivery");

    let store = Arc::new(ReportStore::open(&settings).await);
    let metrics = Metrics::new();
    let pruner = Pruner::new(&settings, store, metrics.clone()).expect("a pruner");
    let outcome = pruner.prune_once().await.expect("a pass");
    assert_eq!(
        outcome,
        PassOutcome::Pruned(vec![
            (JobStatus::Completed, 4),
            (JobStatus::Failed, 1),
            (JobStatus::Cancelled, 1),
        ])
    );
    for id in old_completed.iter().chain([&old_failed, &old_cancelled]) {
        assert!(!exists(&db, *id).await, "{id} expired and is deleted");
        assert!(
            !dir.join(format!("{id}.csv")).exists(),
            "{id}'s file is deleted"
        );
    }
    for id in &kept {
        assert!(exists(&db, *id).await, "{id} is kept");
    }
    assert!(
        dir.join(format!("{}.csv", kept[0])).exists(),
        "a kept report keeps its file"
    );
    let deliveries: i64 = db
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        deliveries, 0,
        "the expired report's deliveries went with it"
    );
    let pruned = |status: &str| {
        metrics
            .upkeep
            .rows_pruned
            .with_label_values(&[status])
            .get()
    };
    assert_eq!(
        (pruned("completed"), pruned("failed"), pruned("cancelled")),
        (4, 1, 1)
    );
    let again = pruner.prune_once().await.expect("a second pass");
    assert_eq!(again.total(), 0, "nothing left to prune");
    common::drop_database(&url).await;
}

#[actix_web::test]
async fn a_pruner_skips_its_turn_while_another_holds_the_lock_and_two_never_delete_twice() {
    let url = common::migrated_database().await;
    let mut db = common::pg_connect(&url).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let settings = retention_settings(&url, tmp.path(), 3);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(insert_row(&db, "completed", Some(60), Some(tmp.path())).await);
    }
    let store = Arc::new(ReportStore::open(&settings).await);
    let (metrics_a, metrics_b) = (Metrics::new(), Metrics::new());
    let a = Pruner::new(&settings, store.clone(), metrics_a.clone()).expect("pruner a");
    let b = Pruner::new(&settings, store, metrics_b.clone()).expect("pruner b");

    // Another pruner's batch holds the lock: this one deletes nothing.
    let holder = db.transaction().await.expect("begin");
    holder
        .execute("SELECT pg_advisory_xact_lock($1)", &[&PRUNE_LOCK_KEY])
        .await
        .expect("take the prune lock");
    assert_eq!(a.prune_once().await.expect("a pass"), PassOutcome::Skipped);
    holder.commit().await.expect("commit");
    let db = common::pg_connect(&url).await;
    for id in &ids {
        assert!(
            exists(&db, *id).await,
            "nothing deleted while the lock was held"
        );
    }

    // Two at once: between them every row is deleted, and counted, exactly once.
    let (one, two) = futures_util::join!(a.prune_once(), b.prune_once());
    let deleted = one.expect("pass a").total() + two.expect("pass b").total();
    assert_eq!(deleted, 20);
    let counted = metrics_a
        .upkeep
        .rows_pruned
        .with_label_values(&["completed"])
        .get()
        + metrics_b
            .upkeep
            .rows_pruned
            .with_label_values(&["completed"])
            .get();
    assert_eq!(counted, 20);
    for id in &ids {
        assert!(!exists(&db, *id).await);
    }
    common::drop_database(&url).await;
}

async fn metrics_text(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[actix_web::test]
async fn a_worker_process_prunes_in_the_background_and_reports_the_queue_table() {
    let url = common::migrated_database().await;
    let db = common::pg_connect(&url).await;
    // Waiting for an hour (already sent, so the reconciler leaves it alone).
    db.execute(
        "INSERT INTO report_queue (id, payload, status, created_at, updated_at, enqueued_at) \
         VALUES ($1::text::uuid, '{}'::jsonb, 'in-queue', now() - interval '1 hour', now(), now())",
        &[&Uuid::new_v4().to_string()],
    )
    .await
    .expect("insert a waiting row");
    let app = spawn_app(AppOptions {
        database_url: Some(url.clone()),
        adjust: Some(|settings| {
            settings.retention.completed_days = 1;
            settings.retention.interval_s = 1;
        }),
        ..AppOptions::default()
    })
    .await;
    std::fs::create_dir_all(&app.output_dir).expect("output dir");
    let old = insert_row(&db, "completed", Some(2), Some(&app.output_dir)).await;
    let fresh = insert_row(&db, "completed", Some(0), Some(&app.output_dir)).await;
    wait_until(
        "the expired report is pruned",
        Duration::from_secs(15),
        || async { !exists(&db, old).await },
    )
    .await;
    assert!(exists(&db, fresh).await);
    assert!(!app.output_dir.join(format!("{old}.csv")).exists());
    // The figures are read every 15 s in the background (the first read may fail on a
    // busy machine): wait for a reading rather than for a fixed time.
    wait_until("a queue-table reading", Duration::from_secs(40), || async {
        let (_, health) = app.get_json("/health").await;
        health["queueTable"]["oldestWaitingS"].is_number()
    })
    .await;
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(&text, "reportd_rows_pruned_total{status=\"completed\"}"),
        Some(1.0)
    );
    let oldest = metric(&text, "reportd_db_oldest_waiting_seconds").expect("oldest waiting");
    assert!((3500.0..3700.0).contains(&oldest), "{oldest}");
    assert!(
        metric(&text, "reportd_db_rows{status=\"in-queue\"}").is_some(),
        "{text}"
    );
    assert!(
        metric(&text, "reportd_db_dead_tuple_ratio").is_some(),
        "{text}"
    );
    assert!(metric(&text, "reportd_db_last_vacuum_timestamp_seconds").is_some());
    let (_, health) = app.get_json("/health").await;
    let table = &health["queueTable"];
    assert_eq!(table["rowsByStatus"]["in-queue"], 1, "{health}");
    assert_eq!(table["rowsCountedUpTo"], 10_000);
    assert!(
        table["oldestWaitingS"].as_f64().is_some_and(|s| s > 3500.0),
        "{table}"
    );
    assert!(table["deadTupleRatio"].is_number(), "{table}");
    app.stop().await;
    common::drop_database(&url).await;
}

#[actix_web::test]
async fn a_generator_query_past_query_timeout_s_fails_the_attempt_saying_so() {
    let app = spawn_app(AppOptions {
        max_attempts: 1,
        adjust: Some(|settings| settings.report.query_timeout_s = 1),
        ..AppOptions::default()
    })
    .await;
    // A lock held on the table makes the generator's read wait past the timeout.
    let mut db = common::pg_connect(&app.settings.database.url).await;
    let holder = db.transaction().await.expect("begin");
    holder
        .batch_execute("LOCK TABLE user_activity IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock user_activity");
    let id = app.submit_ok(7).await;
    let report = app
        .wait_for_status(id, "failed", Duration::from_secs(30))
        .await;
    holder.rollback().await.expect("release");
    let error = report["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("report.query_timeout_s (1 s)"),
        "lastError: {error}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_user_over_the_submit_rate_gets_429_with_retry_after_and_nothing_is_written() {
    let app = spawn_app(AppOptions {
        adjust: Some(|settings| settings.api.submit_rate_per_user = 2),
        ..AppOptions::default()
    })
    .await;
    app.submit_ok(5).await;
    app.submit_ok(5).await;
    let response = app
        .http
        .post(app.url("/reports"))
        .json(&serde_json::json!({"userId": 5, "startDate": "2024-01-01", "endDate": "2024-01-31"}))
        .send()
        .await
        .expect("POST /reports");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["field"], "userId", "{body}");
    app.submit_ok(6).await;
    let db = common::pg_connect(&app.settings.database.url).await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM report_queue WHERE user_id = 5", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2, "the refused submit wrote nothing");
    tokio::time::sleep(Duration::from_millis(600)).await;
    app.submit_ok(5).await;
    app.stop().await;
}

/// `n_tup_upd` and `n_tup_hot_upd` of `report_queue`.
async fn update_counts(db: &tokio_postgres::Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'report_queue'",
            &[],
        )
        .await
        .expect("pg_stat_user_tables");
    (row.get(0), row.get(1))
}

/// Drains 2,000 zero-work jobs against a fresh database whose `report_queue` has
/// `fillfactor` and returns (updates, HOT updates, the table's pages).
async fn drain_2000(fillfactor: u32) -> (i64, i64, i64) {
    let url = common::migrated_database().await;
    let db = common::pg_connect(&url).await;
    db.batch_execute(&format!(
        "ALTER TABLE report_queue SET (fillfactor = {fillfactor})"
    ))
    .await
    .expect("set fillfactor");
    let app = spawn_app(AppOptions {
        database_url: Some(url.clone()),
        workers: 8,
        simulate: reportd::config::SimulateSettings {
            skip_generator: true,
            ..Default::default()
        },
        ..AppOptions::default()
    })
    .await;
    for user in 0..2000 {
        app.submit_ok(user % 50 + 1).await;
    }
    wait_until("2,000 jobs complete", Duration::from_secs(300), || async {
        common::jobs::count_by_status(&app, "completed").await == 2000
    })
    .await;
    app.stop().await;
    // Backends flush their table statistics when idle (at most every 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (updates, hot) = update_counts(&db).await;
    let pages: i64 = db
        .query_one(
            "SELECT (pg_relation_size('report_queue') / current_setting('block_size')::int)::bigint",
            &[],
        )
        .await
        .expect("pages")
        .get(0);
    common::drop_database(&url).await;
    (updates, hot, pages)
}

/// Not a CI test (`--ignored`): measures the HOT-update share of a 2,000-job drain with
/// the default fillfactor and with 80, for the README's figures.
#[actix_web::test]
#[ignore = "a measurement, run by hand: cargo test --test it -- --ignored upkeep::measure"]
async fn measure_hot_updates_over_a_2000_job_drain() {
    for fillfactor in [100, 80] {
        let (updates, hot, pages) = drain_2000(fillfactor).await;
        println!(
            "fillfactor {fillfactor}: {updates} updates, {hot} HOT ({:.1} %), {pages} pages",
            100.0 * hot as f64 / updates.max(1) as f64
        );
    }
}

/// Ten heartbeat rounds (reportd's touch: `updated_at` and `progress`) over 2,000
/// running rows at `fillfactor`, with the HOT migration's indexes or (`before`) with it
/// undone; returns (updates, HOT updates). Not a CI test: see below.
async fn heartbeats_2000(fillfactor: u32, before: bool) -> (i64, i64) {
    let url = common::migrated_database().await;
    let db = common::pg_connect(&url).await;
    if before {
        db.batch_execute(include_str!(
            "../../migrations/2026-12-04-000009_hot_updates_and_fairness/down.sql"
        ))
        .await
        .expect("the migration undone");
    }
    db.batch_execute(&format!(
        "ALTER TABLE report_queue SET (fillfactor = {fillfactor}); \
         INSERT INTO report_queue (id, payload, status, attempts, enqueued_at, user_id) \
         SELECT gen_random_uuid(), '{{}}'::jsonb, 'in-progress', 1, now(), g % 50 \
         FROM generate_series(1, 2000) AS g"
    ))
    .await
    .expect("2,000 running rows");
    let before = flushed_update_counts(&db).await;
    for _ in 0..10 {
        db.batch_execute(
            "UPDATE report_queue SET updated_at = clock_timestamp(), progress = progress \
             WHERE status = 'in-progress'",
        )
        .await
        .expect("a heartbeat round");
    }
    let after = flushed_update_counts(&db).await;
    common::drop_database(&url).await;
    (after.0 - before.0, after.1 - before.1)
}

/// This session's table counters, flushed and read afresh (PostgreSQL 15+).
async fn flushed_update_counts(db: &tokio_postgres::Client) -> (i64, i64) {
    db.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush");
    db.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .expect("clear snapshot");
    update_counts(db).await
}

/// Not a CI test (`--ignored`): the HOT share of heartbeats at fillfactor 100 and 80
/// (the migration's), for the README's figures.
#[actix_web::test]
#[ignore = "a measurement, run by hand: cargo test --test it -- --ignored upkeep::measure"]
async fn measure_hot_heartbeats_over_2000_running_rows() {
    for (before, fillfactor) in [(true, 100), (true, 80), (false, 100), (false, 80)] {
        let (updates, hot) = heartbeats_2000(fillfactor, before).await;
        let indexes = if before {
            "before 000009"
        } else {
            "after 000009"
        };
        println!(
            "heartbeats, {indexes}, fillfactor {fillfactor}: {updates} updates, {hot} HOT ({:.1} %)",
            100.0 * hot as f64 / updates.max(1) as f64
        );
    }
}

/// Whether `key` is in `bucket`.
async fn object_exists(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => true,
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => false,
        Err(e) => panic!("HeadObject {bucket}/{key}: {e:?}"),
    }
}

#[actix_web::test]
async fn with_the_s3_backend_the_pruner_deletes_the_expired_reports_objects() {
    common::require_s3().await;
    let bucket = common::unique_bucket_name("prune");
    let storage = common::s3_storage(&bucket);
    let s3 = reportd::storage::s3::build_client(&storage).await;
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    let url = common::migrated_database().await;
    let db = common::pg_connect(&url).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut settings = retention_settings(&url, tmp.path(), 500);
    settings.storage = storage;
    let old = insert_row(&db, "completed", Some(40), None).await;
    let fresh = insert_row(&db, "completed", Some(1), None).await;
    for id in [old, fresh] {
        let key = format!("{id}.csv");
        db.execute(
            "UPDATE report_queue SET file_key = $2 WHERE id = $1::text::uuid",
            &[&id.to_string(), &key],
        )
        .await
        .expect("set file_key");
        s3.put_object()
            .bucket(&bucket)
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"day\n"))
            .send()
            .await
            .expect("PutObject");
    }
    let store = Arc::new(ReportStore::open(&settings).await);
    let pruner = Pruner::new(&settings, store, Metrics::new()).expect("a pruner");
    let outcome = pruner.prune_once().await.expect("a pass");
    assert_eq!(outcome.total(), 1, "{outcome:?}");
    assert!(!exists(&db, old).await);
    assert!(
        !object_exists(&s3, &bucket, &format!("{old}.csv")).await,
        "the expired object is deleted"
    );
    assert!(exists(&db, fresh).await);
    assert!(
        object_exists(&s3, &bucket, &format!("{fresh}.csv")).await,
        "a kept report keeps its object"
    );
    common::drop_database(&url).await;
}
