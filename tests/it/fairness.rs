//! `[fairness] max_in_flight_per_user` (issue 15): a user at the cap waits, other users'
//! jobs go first, nothing counts as a failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::{Double, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use reportd::db::models::{JobStatus, NewReport};
use reportd::db::reports::{self, ClaimOutcome};
use uuid::Uuid;

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

    // Their turns were seconds away: user 1's later jobs waited in the processes'
    // waiting rooms (tried when a slot freed there, or every second for a slot freed in
    // the other process), never handed back to SQS.
    let waits = counter(&app, "reportd_fairness_waits_total").await
        + counter(&other_process, "reportd_fairness_waits_total").await;
    let releases = counter(&app, "reportd_fairness_releases_total").await
        + counter(&other_process, "reportd_fairness_releases_total").await;
    assert!(waits >= 2.0, "user 1's two later jobs waited: {waits}");
    assert_eq!(releases, 0.0, "nothing went back to SQS");
    assert_eq!(
        queue_depth(&app, &app.queue.dlq_url).await,
        0,
        "nothing dead-lettered"
    );
    other_process.stop().await;
    app.stop().await;
}

#[actix_web::test]
async fn at_shutdown_a_job_waiting_at_its_users_cap_goes_back_to_the_queue_at_once() {
    let app = spawn_app(AppOptions {
        workers: 2,
        simulate: zero_work(Some([2_000, 2_000])),
        adjust: Some(|settings: &mut reportd::config::Settings| {
            settings.fairness.max_in_flight_per_user = 1;
        }),
        ..Default::default()
    })
    .await;
    let first = app.submit_ok(1).await;
    app.wait_for_status(first, "in-progress", Duration::from_secs(30))
        .await;
    let second = app.submit_ok(1).await;
    wait_until(
        "the second job to wait in the room",
        Duration::from_secs(30),
        || async { counter(&app, "reportd_fairness_waits_total").await >= 1.0 },
    )
    .await;
    wait_until(
        "/health to show it waiting",
        Duration::from_secs(30),
        || async {
            let (_, health) = app.get_json("/health").await;
            let poller = health["actors"]
                .as_array()
                .and_then(|actors| actors.iter().find(|a| a["name"] == "poller").cloned());
            poller.is_some_and(|p| p["waitingAtCap"] == 1)
        },
    )
    .await;
    let queue = app.queue.clone();
    let db = crate::common::pg_connect(&app.settings.database.url).await;
    app.stop().await;

    // Taken into the room, its message was made invisible for a whole visibility timeout
    // (30 s); handed back at shutdown, it is visible now.
    let messages = queue.receive(10, 5, Some(30)).await.expect("receive");
    let ids: Vec<String> = messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        ids,
        vec![reportd::queue::message_body(second)],
        "only the waiting job's message is in the queue"
    );
    let row = db
        .query_one(
            "SELECT status, attempts, failures FROM report_queue WHERE id::text = $1",
            &[&second.to_string()],
        )
        .await
        .expect("the waiting job's row");
    let (status, attempts, failures): (String, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (status.as_str(), attempts, failures),
        ("in-queue", 0, 0),
        "waiting is neither an attempt nor a failure"
    );
}

/// A counter of one process's `/metrics`.
async fn counter(app: &TestApp, name: &str) -> f64 {
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
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

/// A job of `user` in `status`, created `age_s` seconds ago.
async fn job(conn: &mut AsyncPgConnection, user: i64, status: &str, age_s: f64) -> Uuid {
    // Here only: in scope for the whole file, its `load` would shadow `AtomicBool::load`.
    use diesel_async::RunQueryDsl;
    let row = NewReport {
        id: Uuid::new_v4(),
        payload: serde_json::json!({"userId": user}),
        status: JobStatus::InQueue.as_str().into(),
        idempotency_key: None,
        request_hash: None,
        user_id: Some(user),
        max_runtime_s: None,
        not_after: None,
        callback_url: None,
    };
    reports::insert_many(conn, &[&row]).await.expect("insert");
    diesel::sql_query(
        "UPDATE report_queue SET status = $2, \
           created_at = now() - make_interval(secs => $3) WHERE id = $1",
    )
    .bind::<SqlUuid, _>(row.id)
    .bind::<Text, _>(status)
    .bind::<Double, _>(age_s)
    .execute(conn)
    .await
    .expect("backdate");
    row.id
}

fn at_cap(user_id: i64, ahead: u32) -> ClaimOutcome {
    ClaimOutcome::UserAtCap { ahead, user_id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_users_cap_is_told_how_many_of_its_users_queued_jobs_are_ahead() {
    let url = crate::common::migrated_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    // Oldest first. Only user 1's `in-queue` jobs older than a job are ahead of it: not
    // its finished or running ones, and not user 2's, which interleave with them.
    let _done = job(&mut conn, 1, "completed", 100.0).await;
    let running = job(&mut conn, 1, "in-queue", 90.0).await;
    let other_running = job(&mut conn, 2, "in-queue", 85.0).await;
    let a = job(&mut conn, 1, "in-queue", 80.0).await;
    let other_a = job(&mut conn, 2, "in-queue", 75.0).await;
    let b = job(&mut conn, 1, "in-queue", 70.0).await;
    let c = job(&mut conn, 1, "in-queue", 60.0).await;
    let other_b = job(&mut conn, 2, "in-queue", 55.0).await;
    let d = job(&mut conn, 1, "in-queue", 50.0).await;
    let claimed = reports::claim_many_fair(&mut conn, &[running, other_running], 60, 1)
        .await
        .expect("claim");
    assert!(
        claimed
            .iter()
            .all(|o| matches!(o, ClaimOutcome::Claimed { .. })),
        "{claimed:?}"
    );

    // Both users at a cap of 1, in one batch, in no particular order.
    let outcomes = reports::claim_many_fair(&mut conn, &[d, other_b, b, a, other_a, c], 60, 1)
        .await
        .expect("claim");
    assert_eq!(
        outcomes,
        [
            at_cap(1, 3),
            at_cap(2, 1),
            at_cap(1, 1),
            at_cap(1, 0),
            at_cap(2, 0),
            at_cap(1, 2)
        ]
    );

    // With room for one more, the batch's oldest job runs and is no longer ahead of the
    // others: the count is taken after the batch's own claims.
    let outcomes = reports::claim_many_fair(&mut conn, &[a, c, d, b], 60, 2)
        .await
        .expect("claim");
    assert!(
        matches!(outcomes[0], ClaimOutcome::Claimed { attempt: 1, .. }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1..], [at_cap(1, 1), at_cap(1, 2), at_cap(1, 0)]);
    crate::common::drop_database(&url).await;
}
