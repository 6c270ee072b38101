//! A job's fate under real operations (issue 10): deploys, FIFO groups, row locks and
//! host trouble never strand, dead-letter or fail a job that did nothing wrong. Real
//! PostgreSQL, LocalStack SQS, and real `reportd` processes where deploys are the point.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::app::{spawn_app, spawn_process, test_settings, wait_until, AppOptions};
use common::jobs::{
    count_by_status, job_rows as rows, on_free_port as on_port, queue_depth as depth,
    runs_in_order, zero_work as simulate, Recorder,
};
use futures_util::future::BoxFuture;
use reportd::config::{Role, SimulateSettings};
use reportd::report::{GeneratedReport, GeneratorError, JobContext, ReportGenerator};
use uuid::Uuid;

#[actix_web::test]
async fn a_job_survives_six_rolling_deploys_of_its_worker_and_completes_uncounted() {
    // The tightest receive budget the config allows: one failure ends a job, and SQS's
    // redrive would take the message on its 7th receive. Six shutdowns in a row are six
    // receives; none may count, and the message must never reach the DLQ.
    let api = spawn_app(AppOptions {
        roles: vec![Role::Api],
        visibility_timeout_s: 6,
        max_attempts: 1,
        max_receive_count: 6,
        ..AppOptions::default()
    })
    .await;
    let (mut worker, tmp) = test_settings(&AppOptions {
        roles: vec![Role::Worker],
        workers: 2,
        simulate: simulate(Some([8_000, 8_000])),
        visibility_timeout_s: 6,
        max_attempts: 1,
        max_receive_count: 6,
        grace_s: 1,
        database_url: Some(api.settings.database.url.clone()),
        queue_name: Some(api.settings.sqs.queue_name.clone()),
        ..AppOptions::default()
    })
    .await;
    worker.database.create_if_missing = false;
    let id = api.submit_ok(21).await;
    for deploy in 1..=6 {
        let process =
            spawn_process(&on_port(&worker), tmp.path(), &format!("deploy-{deploy}")).await;
        wait_until("the job to be running", Duration::from_secs(30), || async {
            let record = api.report(id).await;
            record["status"] == "in-progress" && record["attempts"] == deploy
        })
        .await;
        let status = process.terminate(Duration::from_secs(30));
        assert!(status.success(), "deploy {deploy}: exit status {status:?}");
        let record = api.report(id).await;
        assert_eq!(
            record["status"], "in-queue",
            "released at deploy {deploy}: {record}"
        );
    }
    let last = spawn_process(&on_port(&worker), tmp.path(), "deploy-final").await;
    let record = api
        .wait_for_status(id, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(record["attempts"], 7, "{record}");
    let row = rows(&api).await;
    assert_eq!(row[0].3, 0, "no shutdown counted as a failure: {row:?}");
    assert_eq!(
        depth(&api, &api.queue.dlq_url.clone()).await,
        0,
        "nothing dead-lettered"
    );
    assert!(last.terminate(Duration::from_secs(30)).success());
    api.stop().await;
}

#[actix_web::test]
async fn a_fifo_group_whose_every_job_fails_once_completes_in_order_with_two_attempts_each() {
    let app = spawn_app(AppOptions {
        fifo: true,
        workers: 2,
        simulate: SimulateSettings {
            fail_first_attempts: 1,
            ..simulate(None)
        },
        ..AppOptions::default()
    })
    .await;
    // Submitted together, so one receive brings the whole group.
    let submits = (0..5).map(|_| app.submit_ok(7));
    let mut ids = Vec::new();
    for id in futures_util::future::join_all(submits).await {
        ids.push(id);
    }
    for id in &ids {
        app.wait_for_status(*id, "completed", Duration::from_secs(90))
            .await;
    }
    for row in rows(&app).await {
        assert_eq!((row.2, row.3), (2, 1), "two attempts, one failure: {row:?}");
    }
    let dlq = app.queue.dlq_url.clone();
    assert_eq!(depth(&app, &dlq).await, 0, "none in the DLQ");
    app.stop().await;
}

#[actix_web::test]
async fn a_fifo_group_longer_than_the_visibility_timeout_runs_sequentially_once_each() {
    let (recorder, runs) = Recorder::new(Duration::from_secs(4));
    let app = spawn_app(AppOptions {
        fifo: true,
        workers: 4,
        visibility_timeout_s: 6,
        generator: Some(recorder),
        ..AppOptions::default()
    })
    .await;
    // One after another, so the order is defined; the messages behind the first arrive
    // while it runs, and a later receive hands the worker the rest of the group at once,
    // which it must keep invisible for longer than the 6 s visibility timeout.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.submit_ok(8).await);
    }
    for id in &ids {
        app.wait_for_status(*id, "completed", Duration::from_secs(120))
            .await;
    }
    let runs = runs_in_order(&runs);
    assert_eq!(runs.len(), 5, "each job ran once: {runs:?}");
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        ids,
        "ran in submit order"
    );
    assert!(
        runs.windows(2).all(|w| w[0].2 <= w[1].1),
        "never two at once"
    );
    for row in rows(&app).await {
        assert_eq!(row.2, 1, "no extra attempt: {row:?}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_row_locked_for_90_s_stalls_only_its_own_job_which_completes_afterwards() {
    let app = spawn_app(AppOptions {
        workers: 4,
        simulate: simulate(Some([3_000, 3_000])),
        ..AppOptions::default()
    })
    .await;
    let locked = app.submit_ok(1).await;
    app.wait_for_status(locked, "in-progress", Duration::from_secs(20))
        .await;
    // An operator's session holds the running job's row, as `SELECT … FOR UPDATE` in psql.
    let (mut client, connection) =
        tokio_postgres::connect(&app.settings.database.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
    actix::spawn(async move {
        let _ = connection.await;
    });
    let lock = client.transaction().await.expect("begin");
    lock.query(
        "SELECT id FROM report_queue WHERE id = $1::text::uuid FOR UPDATE",
        &[&locked.to_string()],
    )
    .await
    .expect("lock the row");
    let held_since = Instant::now();
    let others: Vec<Uuid> =
        futures_util::future::join_all((2..=21).map(|user| app.submit_ok(user))).await;
    for id in &others {
        app.wait_for_status(*id, "completed", Duration::from_secs(80))
            .await;
    }
    assert!(
        held_since.elapsed() < Duration::from_secs(90),
        "the other jobs completed while the row was locked"
    );
    let (code, live) = app.get_json("/health/live").await;
    assert_eq!(code, 200, "the writer is not wedged: {live}");
    let remaining = Duration::from_secs(90).saturating_sub(held_since.elapsed());
    tokio::time::sleep(remaining).await;
    lock.rollback().await.expect("release the lock");
    let record = app
        .wait_for_status(locked, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(record["attempts"], 1, "the locked job ran once: {record}");
    assert_eq!(count_by_status(&app, "completed").await, 21);
    app.stop().await;
}

/// Fails with "too many open files" until `until`, then succeeds.
struct OutOfFiles {
    until: Instant,
}

impl ReportGenerator for OutOfFiles {
    fn generate(
        &self,
        _job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let failing = Instant::now() < self.until;
        Box::pin(async move {
            if failing {
                let emfile = std::io::Error::from_raw_os_error(24);
                return Err(GeneratorError::from_io(
                    "cannot open the report file",
                    &emfile,
                ));
            }
            Ok(GeneratedReport::default())
        })
    }
}

#[actix_web::test]
async fn fifteen_seconds_of_too_many_open_files_fails_none_of_500_waiting_jobs() {
    let app = spawn_app(AppOptions {
        workers: 8,
        generator: Some(Arc::new(OutOfFiles {
            until: Instant::now() + Duration::from_secs(15),
        })),
        ..AppOptions::default()
    })
    .await;
    for chunk in 0..50 {
        let submits = (0..10).map(|n| app.submit_ok(chunk * 10 + n + 1));
        futures_util::future::join_all(submits).await;
    }
    wait_until(
        "all 500 jobs to complete",
        Duration::from_secs(180),
        || async { count_by_status(&app, "completed").await == 500 },
    )
    .await;
    let rows = rows(&app).await;
    assert!(
        rows.iter().all(|r| r.3 == 0),
        "host trouble is never a job failure"
    );
    let dlq = app.queue.dlq_url.clone();
    assert_eq!(depth(&app, &dlq).await, 0, "nothing dead-lettered");
    app.stop().await;
}
