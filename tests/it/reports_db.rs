//! The batched `report_queue` writes against a real PostgreSQL.

use crate::common;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use reportd::db::models::{JobStatus, NewReport};
use reportd::db::reports::{self, ClaimOutcome};
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
        reports::complete_many(&mut conn, &[(done, attempt, None)])
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
        &[(ids[0], 1, url.clone()), (ids[1], 7, url.clone())],
    )
    .await
    .expect("complete");
    assert_eq!(
        results,
        [true, false],
        "a stale attempt number changes nothing"
    );
    assert_eq!(
        reports::touch_many(&mut conn, &[(ids[0], 1), (ids[1], 1)])
            .await
            .expect("touch"),
        [false, true]
    );
    let row = reports::find(&mut conn, ids[0])
        .await
        .expect("find")
        .expect("row");
    assert_eq!(row.status, "completed");
    assert_eq!(row.report_url, url);
    // A second completion of a completed job never applies.
    assert_eq!(
        reports::complete_many(&mut conn, &[(ids[0], 1, None)])
            .await
            .expect("complete"),
        [false]
    );
}
