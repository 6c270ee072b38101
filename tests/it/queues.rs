//! Queue provisioning against a real LocalStack SQS (see tests/common).

use crate::common;

use std::future::Future;

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use reportd::config::SqsSettings;
use reportd::queue::provision::{ensure_queues, redrive_of};
use reportd::queue::{build_client, queue_url, QueueError};

use common::{require_sqs, sqs_settings, unique_queue_name};

/// Deletes both queues of `settings`, ignoring errors (best-effort cleanup).
async fn delete_queues(client: &Client, settings: &SqsSettings) {
    for name in [settings.queue_name.clone(), settings.dlq_name()] {
        if let Ok(url) = queue_url(client, &name).await {
            let _ = client.delete_queue().queue_url(url).send().await;
        }
    }
}

/// Runs `body` as its own task so that the queues are deleted even when it panics, then
/// re-raises the panic.
async fn with_queues<F, Fut>(settings: SqsSettings, body: F)
where
    F: FnOnce(Client, SqsSettings) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    require_sqs().await;
    let client = build_client(&settings).await;
    let outcome = tokio::spawn(body(client.clone(), settings.clone())).await;
    delete_queues(&client, &settings).await;
    if let Err(err) = outcome {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
        panic!("test task failed: {err}");
    }
}

async fn attribute(client: &Client, url: &str, name: QueueAttributeName) -> Option<String> {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default()
        .remove(&name)
}

/// The provisioning story for one queue pair: create, no-op re-run, repair drift.
async fn ensure_is_idempotent_and_repairs_the_redrive_policy(
    client: Client,
    settings: SqsSettings,
) {
    // Nothing exists yet.
    assert!(matches!(
        queue_url(&client, &settings.queue_name).await,
        Err(QueueError::Missing(_))
    ));

    let first = ensure_queues(&client, &settings)
        .await
        .expect("first ensure");
    assert!(
        first.main.created,
        "first run must create the main queue: {first}"
    );
    assert!(first.dlq.created, "first run must create the DLQ: {first}");
    assert_eq!(first.main.name, settings.queue_name);
    assert_eq!(first.dlq.name, settings.dlq_name());

    // The DLQ exists under its derived name, and its ARN is the one reported.
    let dlq_url = queue_url(&client, &settings.dlq_name())
        .await
        .expect("the DLQ exists");
    assert_eq!(dlq_url, first.dlq.url);
    assert!(
        first
            .dlq_arn
            .ends_with(&format!(":{}", settings.dlq_name())),
        "dlq_arn {} does not name {}",
        first.dlq_arn,
        settings.dlq_name()
    );
    assert_eq!(
        queue_url(&client, &settings.queue_name)
            .await
            .expect("main queue exists"),
        first.main.url
    );

    // The main queue redrives to the DLQ after max_receive_count (10 by default).
    let redrive = redrive_of(&client, &first.main.url)
        .await
        .expect("redrive_of");
    assert_eq!(redrive, Some((first.dlq_arn.clone(), 10)));
    assert_eq!(
        redrive_of(&client, &first.dlq.url)
            .await
            .expect("redrive_of dlq"),
        None,
        "the DLQ itself must not redrive"
    );
    assert_eq!(
        attribute(
            &client,
            &first.main.url,
            QueueAttributeName::ReceiveMessageWaitTimeSeconds
        )
        .await
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        attribute(
            &client,
            &first.main.url,
            QueueAttributeName::VisibilityTimeout
        )
        .await
        .as_deref(),
        Some("30")
    );
    if settings.fifo {
        for url in [&first.main.url, &first.dlq.url] {
            assert_eq!(
                attribute(&client, url, QueueAttributeName::FifoQueue)
                    .await
                    .as_deref(),
                Some("true"),
                "{url} is not a FIFO queue"
            );
        }
    }

    // A second run finds both queues and changes nothing.
    let second = ensure_queues(&client, &settings)
        .await
        .expect("second ensure");
    assert!(
        !second.main.created,
        "second run re-created the main queue: {second}"
    );
    assert!(
        !second.dlq.created,
        "second run re-created the DLQ: {second}"
    );
    assert_eq!(second.main.url, first.main.url);
    assert_eq!(second.dlq.url, first.dlq.url);
    assert_eq!(second.dlq_arn, first.dlq_arn);
    assert!(
        second.main.fixed_attributes.is_empty() && second.dlq.fixed_attributes.is_empty(),
        "second run reported drift on unchanged queues: {second}"
    );

    // A changed max_receive_count is drift: the RedrivePolicy is rewritten.
    let mut changed = settings.clone();
    changed.max_receive_count = 12;
    let third = ensure_queues(&client, &changed)
        .await
        .expect("third ensure");
    assert!(!third.main.created);
    assert!(
        third
            .main
            .fixed_attributes
            .contains(&"RedrivePolicy".to_string()),
        "RedrivePolicy not fixed: {:?}",
        third.main.fixed_attributes
    );
    assert_eq!(
        third.main.fixed_attributes,
        vec!["RedrivePolicy".to_string()],
        "only the RedrivePolicy changed"
    );
    assert_eq!(
        redrive_of(&client, &third.main.url)
            .await
            .expect("redrive_of"),
        Some((first.dlq_arn.clone(), 12))
    );

    // And once repaired, a further run is a no-op again.
    let fourth = ensure_queues(&client, &changed)
        .await
        .expect("fourth ensure");
    assert!(
        fourth.main.fixed_attributes.is_empty(),
        "repaired queue still reported as drifted: {fourth}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_queue_pair_is_created_once_and_its_redrive_policy_repaired() {
    let settings = sqs_settings(&unique_queue_name("std"), false);
    assert!(!settings.queue_name.ends_with(".fifo"));
    with_queues(
        settings,
        ensure_is_idempotent_and_repairs_the_redrive_policy,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_pair_is_created_once_and_its_redrive_policy_repaired() {
    let settings = sqs_settings(&unique_queue_name("fifo"), true);
    assert!(settings.queue_name.ends_with(".fifo"));
    assert!(settings.dlq_name().ends_with("-dlq.fifo"));
    with_queues(
        settings,
        ensure_is_idempotent_and_repairs_the_redrive_policy,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_visibility_timeout_is_reset_by_ensure() {
    let settings = sqs_settings(&unique_queue_name("drift"), false);
    with_queues(settings, |client, settings| async move {
        let first = ensure_queues(&client, &settings)
            .await
            .expect("first ensure");
        client
            .set_queue_attributes()
            .queue_url(&first.main.url)
            .attributes(QueueAttributeName::VisibilityTimeout, "99")
            .send()
            .await
            .expect("SetQueueAttributes");
        let second = ensure_queues(&client, &settings)
            .await
            .expect("second ensure");
        assert_eq!(
            second.main.fixed_attributes,
            vec!["VisibilityTimeout".to_string()]
        );
        assert_eq!(
            attribute(
                &client,
                &first.main.url,
                QueueAttributeName::VisibilityTimeout
            )
            .await
            .as_deref(),
            Some("30")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_finds_both_queue_urls_after_ensure_and_fails_naming_a_missing_queue() {
    let settings = sqs_settings(&unique_queue_name("conn"), false);
    with_queues(settings, |client, settings| async move {
        match reportd::queue::SqsQueue::connect(client.clone(), &settings).await {
            Err(QueueError::Missing(name)) => assert_eq!(name, settings.queue_name),
            other => panic!("expected Missing({}), got {other:?}", settings.queue_name),
        }
        let report = ensure_queues(&client, &settings).await.expect("ensure");
        let queue = reportd::queue::SqsQueue::connect(client.clone(), &settings)
            .await
            .expect("connect after ensure");
        assert_eq!(queue.queue_url, report.main.url);
        assert_eq!(queue.dlq_url, report.dlq.url);
    })
    .await;
}
