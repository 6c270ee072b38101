//! The StatusActor under a burst of writes, against a real PostgreSQL.

use crate::common;

use std::time::Duration;

use actix::Actor;
use reportd::actors::registry::{ActorRegistry, StormLimit};
use reportd::actors::status::{write, StatusActor, StatusProbe, WriteOp, WriteOutcome};
use reportd::db::reports::Heartbeat;
use reportd::metrics::Metrics;

#[actix_web::test]
async fn a_burst_larger_than_a_batch_is_committed_and_answered_without_stalling() {
    let url = common::migrated_database().await;
    let pool = reportd::db::build_pool(&url, 4).expect("pool");
    let metrics = Metrics::new();
    let registry = ActorRegistry::new(
        StormLimit {
            max_restarts: 5,
            window: Duration::from_secs(60),
        },
        metrics.clone(),
    );
    let probe = StatusProbe::default();
    let status = StatusActor::new(
        pool,
        metrics,
        registry.register("status", "StatusActor"),
        probe.clone(),
    )
    .start();
    // Far more writes than one batch (256) and than the mailbox (1,024) hold at once:
    // the actor must pause its mailbox and resume as flushes finish.
    let writes = (0..5_000).map(|_| {
        write(
            &status,
            WriteOp::Touch {
                id: uuid::Uuid::new_v4(),
                attempt: 1,
                progress: None,
            },
        )
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(writes),
    )
    .await
    .expect("every write answered within 60 s (no stall)");
    assert!(answers
        .iter()
        .all(|a| matches!(a, Ok(WriteOutcome::Heartbeat(Heartbeat::Gone)))));
    let stats = probe.stats();
    assert!(stats.flushes >= 5_000 / 256, "batched: {stats:?}");
    assert!(stats.flushes < 5_000, "batched: {stats:?}");
}
