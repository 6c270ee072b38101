//! The batched `report_queue` writes against a real PostgreSQL.

use crate::common;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use reportd::db::models::{JobStatus, NewReport};
use reportd::db::reports::{self, AttemptEnd, CancelOutcome, ClaimOutcome, Heartbeat};
use uuid::Uuid;

async fn connection_with_rows(n: usize) -> (AsyncPgConnection, Vec<Uuid>) {
    let url = common::migrated_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    let rows: Vec<NewReport> = (0..n)
        .map(|k| NewReport {
            id: Uuid::new_v4(),
            payload: serde_json::json!({"userId": k + 1}),
            status: JobStatus::InQueue.as_str().into(),
            idempotency_key: None,
            request_hash: None,
            user_id: Some(k as i64 + 1),
            max_runtime_s: None,
            not_after: None,
            callback_url: None,
        })
        .collect();
    let rows: Vec<&NewReport> = rows.iter().collect();
    let ids = reports::insert_many(&mut conn, &rows)
        .await
        .expect("insert");
    (conn, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_claim_statement_answers_each_copy_and_each_kind_of_row() {
    let (mut conn, ids) = connection_with_rows(2).await;
    let (a, done) = (ids[0], ids[1]);
    let claimed = reports::claim_many(&mut conn, &[done], 60)
        .await
        .expect("claim");
    let ClaimOutcome::Claimed { attempt, .. } = claimed[0] else {
        panic!("{claimed:?}")
    };
    assert_eq!(
        reports::complete_many(&mut conn, &[(done, attempt, None, None)])
            .await
            .expect("complete"),
        [true]
    );

    let missing = Uuid::new_v4();
    let outcomes = reports::claim_many(&mut conn, &[a, a, missing, done], 60)
        .await
        .expect("claim");
    assert!(
        matches!(outcomes[0], ClaimOutcome::Claimed { attempt: 1, .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[1],
        ClaimOutcome::HeldElsewhere,
        "the second copy does not run it again"
    );
    assert_eq!(outcomes[2], ClaimOutcome::NotFound);
    assert_eq!(
        outcomes[3],
        ClaimOutcome::AlreadyFinished(JobStatus::Completed)
    );
    // Held by a live attempt: not claimable again until it goes stale.
    assert_eq!(
        reports::claim_many(&mut conn, &[a], 60)
            .await
            .expect("claim"),
        [ClaimOutcome::HeldElsewhere]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_heartbeats_are_compare_and_set_on_the_claimed_attempt() {
    let (mut conn, ids) = connection_with_rows(2).await;
    reports::claim_many(&mut conn, &ids, 60)
        .await
        .expect("claim");
    let url = Some("http://x/file".to_string());
    let results = reports::complete_many(
        &mut conn,
        &[
            (ids[0], 1, url.clone(), None),
            (ids[1], 7, url.clone(), None),
        ],
    )
    .await
    .expect("complete");
    assert_eq!(
        results,
        [true, false],
        "a stale attempt number changes nothing"
    );
    assert_eq!(
        reports::touch_many(&mut conn, &[(ids[0], 1, None), (ids[1], 1, None)])
            .await
            .expect("touch"),
        [Heartbeat::Gone, Heartbeat::Alive]
    );
    let row = reports::find(&mut conn, ids[0])
        .await
        .expect("find")
        .expect("row");
    assert_eq!(row.status, "completed");
    assert_eq!(row.report_url, url);
    // A second completion of a completed job never applies.
    assert_eq!(
        reports::complete_many(&mut conn, &[(ids[0], 1, None, None)])
            .await
            .expect("complete"),
        [false]
    );
}

async fn status_of(conn: &mut AsyncPgConnection, id: Uuid) -> (String, Option<String>) {
    let row = reports::find(conn, id).await.expect("find").expect("row");
    (row.status, row.cancel_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_waiting_job_at_once_and_a_running_one_through_its_heartbeat() {
    let (mut conn, ids) = connection_with_rows(3).await;
    let (waiting, running, done) = (ids[0], ids[1], ids[2]);
    assert_eq!(
        reports::request_cancel(&mut conn, waiting, Some("not needed"))
            .await
            .expect("cancel"),
        Some(CancelOutcome::Cancelled)
    );
    assert_eq!(
        status_of(&mut conn, waiting).await,
        ("cancelled".into(), Some("not needed".into()))
    );
    assert_eq!(
        reports::claim_many(&mut conn, &[waiting], 60)
            .await
            .expect("claim"),
        [ClaimOutcome::AlreadyFinished(JobStatus::Cancelled)],
        "a cancelled job never runs"
    );

    reports::claim_many(&mut conn, &[running, done], 60)
        .await
        .expect("claim");
    assert_eq!(
        reports::request_cancel(&mut conn, running, None)
            .await
            .expect("cancel"),
        Some(CancelOutcome::Requested)
    );
    assert_eq!(
        reports::touch_many(&mut conn, &[(running, 1, None)])
            .await
            .expect("touch"),
        [Heartbeat::CancelRequested],
        "the next heartbeat carries the request"
    );
    assert_eq!(
        reports::end_attempt(&mut conn, running, 1, &AttemptEnd::Cancelled)
            .await
            .expect("end"),
        Some(JobStatus::Cancelled)
    );
    let row = reports::find(&mut conn, running)
        .await
        .expect("find")
        .expect("row");
    assert_eq!(
        (row.status.as_str(), row.attempts, row.failures),
        ("cancelled", 1, 0)
    );

    reports::complete_many(&mut conn, &[(done, 1, None, None)])
        .await
        .expect("complete");
    assert_eq!(
        reports::request_cancel(&mut conn, done, None)
            .await
            .expect("cancel"),
        None,
        "a completed job cannot be cancelled"
    );
    assert_eq!(status_of(&mut conn, done).await.0, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_back_while_its_cancel_was_pending_ends_cancelled_and_never_runs() {
    let (mut conn, ids) = connection_with_rows(1).await;
    let id = ids[0];
    reports::claim_many(&mut conn, &[id], 60)
        .await
        .expect("claim");
    reports::request_cancel(&mut conn, id, None)
        .await
        .expect("cancel");
    let requeued = AttemptEnd::Requeued {
        error: "failed before it saw the cancel".into(),
    };
    assert_eq!(
        reports::end_attempt(&mut conn, id, 1, &requeued)
            .await
            .expect("end"),
        Some(JobStatus::Cancelled),
        "the end write says so, so the worker deletes the message"
    );
    assert_eq!(status_of(&mut conn, id).await.0, "cancelled");
    assert_eq!(
        reports::claim_many(&mut conn, &[id], 60)
            .await
            .expect("claim"),
        [ClaimOutcome::AlreadyFinished(JobStatus::Cancelled)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_started_by_not_after_is_cancelled_as_expired_at_its_claim() {
    let url = common::migrated_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    let row = |not_after| NewReport {
        id: Uuid::new_v4(),
        payload: serde_json::json!({"userId": 1}),
        status: JobStatus::InQueue.as_str().into(),
        idempotency_key: None,
        request_hash: None,
        user_id: Some(1),
        max_runtime_s: Some(5),
        not_after: Some(not_after),
        callback_url: None,
    };
    let now = chrono::Utc::now();
    let (late, in_time) = (
        row(now - chrono::Duration::seconds(1)),
        row(now + chrono::Duration::hours(1)),
    );
    reports::insert_many(&mut conn, &[&late, &in_time])
        .await
        .expect("insert");
    let outcomes = reports::claim_many(&mut conn, &[late.id, in_time.id], 60)
        .await
        .expect("claim");
    assert_eq!(outcomes[0], ClaimOutcome::CancelledNow);
    assert!(
        matches!(
            outcomes[1],
            ClaimOutcome::Claimed {
                max_runtime_s: Some(5),
                ..
            }
        ),
        "{outcomes:?}"
    );
    assert_eq!(
        status_of(&mut conn, late.id).await,
        ("cancelled".into(), Some("expired".into()))
    );
    assert_eq!(
        reports::claim_many(&mut conn, &[late.id], 60)
            .await
            .expect("claim"),
        [ClaimOutcome::AlreadyFinished(JobStatus::Cancelled)],
        "a second copy finds it finished"
    );
}
