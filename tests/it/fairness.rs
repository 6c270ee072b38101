//! `[fairness] max_in_flight_per_user` (issue 15): a user at the cap waits, other users'
//! jobs go first, nothing counts as a failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{spawn_app, wait_until, AppOptions, TestApp};
use crate::common::jobs::{queue_depth, zero_work};

/// A job's user, status, attempts, failures, start and end (epoch seconds).
type Row = (i64, String, i32, i32, f64, f64);

#[actix_web::test]
async fn with_a_cap_of_one_a_users_jobs_run_one_at_a_time_and_others_go_first() {
    let options = AppOptions {
        workers: 2,
        simulate: zero_work(Some([1_500, 1_500])),
        adjust: Some(|settings: &mut reportd::config::Settings| {
            settings.fairness.max_in_flight_per_user = 1;
            settings.fairness.release_delay_s = 1;
        }),
        ..Default::default()
    };
    let app = spawn_app(options.clone()).await;
    // A second process on the same database and queue: the cap holds for the fleet.
    let other_process = spawn_app(AppOptions {
        database_url: Some(app.settings.database.url.clone()),
        queue_name: Some(app.settings.sqs.queue_name.clone()),
        ..options
    })
    .await;
    assert!(
        app.settings.sqs.fair_groups,
        "standard-queue sends carry MessageGroupId (LocalStack accepts it)"
    );
    // Samples user 1's committed `in-progress` rows until the jobs are done: the cap is
    // enforced on committed rows, so no sample may ever see two.
    let sampler_db = crate::common::pg_connect(&app.settings.database.url).await;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut most = 0;
            while !done.load(Ordering::SeqCst) {
                let running: i64 = sampler_db
                    .query_one(
                        "SELECT count(*) FROM report_queue \
                         WHERE user_id = 1 AND status = 'in-progress'",
                        &[],
                    )
                    .await
                    .expect("a sample")
                    .get(0);
                most = most.max(running);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        }
    });
    for _ in 0..3 {
        app.submit_ok(1).await;
    }
    app.submit_ok(2).await;
    wait_until("all 4 jobs complete", Duration::from_secs(60), || async {
        crate::common::jobs::count_by_status(&app, "completed").await == 4
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let most = sampler.await.expect("the sampler");
    assert_eq!(most, 1, "user 1 had {most} jobs in progress at once");

    let db = crate::common::pg_connect(&app.settings.database.url).await;
    let rows: Vec<Row> = db
        .query(
            "SELECT user_id, status, attempts, failures, extract(epoch FROM started_at)::float8, \
             extract(epoch FROM finished_at)::float8 \
             FROM report_queue ORDER BY started_at",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    for (user, status, attempts, failures, ..) in &rows {
        assert_eq!(
            (status.as_str(), *attempts, *failures),
            ("completed", 1, 0),
            "user {user}: a release is neither an attempt nor a failure: {rows:?}"
        );
    }
    let mut first_user: Vec<&Row> = rows.iter().filter(|r| r.0 == 1).collect();
    first_user.sort_by(|a, b| a.5.total_cmp(&b.5));
    let other = rows.iter().find(|r| r.0 == 2).expect("user 2's job");
    assert!(
        other.4 < first_user[1].5,
        "user 2's job waited for user 1's second job: {rows:?}"
    );

    let releases = releases(&app).await + releases(&other_process).await;
    assert!(
        releases >= 1.0,
        "user 1's later jobs were released: {releases}"
    );
    assert_eq!(
        queue_depth(&app, &app.queue.dlq_url).await,
        0,
        "nothing dead-lettered"
    );
    other_process.stop().await;
    app.stop().await;
}

/// `reportd_fairness_releases_total` of one process.
async fn releases(app: &TestApp) -> f64 {
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("reportd_fairness_releases_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no releases counter in:\n{metrics}"))
}
