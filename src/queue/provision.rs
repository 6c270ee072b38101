//! `reportd queues ensure`: creates the main queue and its dead-letter queue, and sets
//! the attributes reportd relies on (RedrivePolicy, visibility timeout, long poll,
//! retention). Idempotent: an existing queue is kept and its drifted attributes fixed.

use std::collections::HashMap;

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;

use super::{queue_url, QueueError};
use crate::config::SqsSettings;

/// What `ensure` found and did for one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    /// The queue's name, as configured or derived (`-dlq`, `.fifo`).
    pub name: String,
    /// The queue URL SQS gave, which every later call addresses.
    pub url: String,
    /// True when this run created the queue; false when it was already there.
    pub created: bool,
    /// Attributes this run changed on an existing queue.
    pub fixed_attributes: Vec<String>,
}

/// The result of provisioning both queues.
#[derive(Debug, Clone)]
pub struct EnsureReport {
    /// The main queue (`sqs.queue_name`).
    pub main: QueueState,
    /// The dead-letter queue ([`SqsSettings::dlq_name`]).
    pub dlq: QueueState,
    /// The dead-letter queue's ARN, as the main queue's RedrivePolicy names it.
    pub dlq_arn: String,
}

impl std::fmt::Display for EnsureReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (role, state) in [("queue", &self.main), ("dead-letter queue", &self.dlq)] {
            let verb = if state.created { "created" } else { "present" };
            write!(f, "{role} {} {verb}: {}", state.name, state.url)?;
            if !state.fixed_attributes.is_empty() {
                write!(f, " (fixed {})", state.fixed_attributes.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Creates or repairs the DLQ, then the main queue pointing at it.
pub async fn ensure_queues(
    client: &Client,
    settings: &SqsSettings,
) -> Result<EnsureReport, QueueError> {
    let mut dlq_attributes = HashMap::new();
    // The DLQ keeps messages as long as SQS allows, so a person has time to look.
    dlq_attributes.insert(
        QueueAttributeName::MessageRetentionPeriod,
        "1209600".to_string(),
    );
    if settings.fifo {
        dlq_attributes.insert(QueueAttributeName::FifoQueue, "true".to_string());
    }
    let dlq = ensure_one(client, &settings.dlq_name(), dlq_attributes).await?;
    let dlq_arn = queue_arn(client, &dlq.url).await?;

    let mut attributes = HashMap::new();
    attributes.insert(
        QueueAttributeName::VisibilityTimeout,
        settings.visibility_timeout_s.to_string(),
    );
    attributes.insert(
        QueueAttributeName::ReceiveMessageWaitTimeSeconds,
        settings.wait_time_s.to_string(),
    );
    attributes.insert(
        QueueAttributeName::MessageRetentionPeriod,
        settings.message_retention_s.to_string(),
    );
    attributes.insert(
        QueueAttributeName::RedrivePolicy,
        redrive_policy(&dlq_arn, settings.max_receive_count),
    );
    if settings.fifo {
        attributes.insert(QueueAttributeName::FifoQueue, "true".to_string());
    }
    let main = ensure_one(client, &settings.queue_name, attributes).await?;
    Ok(EnsureReport { main, dlq, dlq_arn })
}

/// The RedrivePolicy JSON SQS expects.
pub(crate) fn redrive_policy(dlq_arn: &str, max_receive_count: u32) -> String {
    serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    })
    .to_string()
}

async fn ensure_one(
    client: &Client,
    name: &str,
    wanted: HashMap<QueueAttributeName, String>,
) -> Result<QueueState, QueueError> {
    match queue_url(client, name).await {
        Ok(url) => {
            let current = attributes_of(client, &url).await?;
            let mut drifted = HashMap::new();
            for (key, value) in &wanted {
                // FifoQueue cannot be changed after creation; a mismatch there is the
                // config's fault and CreateQueue below would report it.
                if *key == QueueAttributeName::FifoQueue {
                    continue;
                }
                if !attribute_matches(key, current.get(key.as_str()), value) {
                    drifted.insert(key.clone(), value.clone());
                }
            }
            let mut fixed: Vec<String> = drifted.keys().map(|k| k.as_str().to_string()).collect();
            fixed.sort();
            if !drifted.is_empty() {
                client
                    .set_queue_attributes()
                    .queue_url(&url)
                    .set_attributes(Some(drifted))
                    .send()
                    .await
                    .map_err(|e| QueueError::call("SetQueueAttributes", e))?;
            }
            Ok(QueueState {
                name: name.to_string(),
                url,
                created: false,
                fixed_attributes: fixed,
            })
        }
        Err(QueueError::Missing(_)) => {
            let output = client
                .create_queue()
                .queue_name(name)
                .set_attributes(Some(wanted))
                .send()
                .await
                .map_err(|e| QueueError::call("CreateQueue", e))?;
            let url = output
                .queue_url
                .ok_or_else(|| QueueError::Missing(name.to_string()))?;
            Ok(QueueState {
                name: name.to_string(),
                url,
                created: true,
                fixed_attributes: Vec::new(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Compares attribute values the way SQS means them: the RedrivePolicy is JSON whose
/// `maxReceiveCount` may come back as a number or a string.
fn attribute_matches(key: &QueueAttributeName, current: Option<&String>, wanted: &str) -> bool {
    let Some(current) = current else {
        return false;
    };
    if *key == QueueAttributeName::RedrivePolicy {
        let parse = |raw: &str| -> Option<(String, String)> {
            let v: serde_json::Value = serde_json::from_str(raw).ok()?;
            let arn = v.get("deadLetterTargetArn")?.as_str()?.to_string();
            let count = match v.get("maxReceiveCount")? {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((arn, count))
        };
        return parse(current).is_some() && parse(current) == parse(wanted);
    }
    current == wanted
}

async fn attributes_of(client: &Client, url: &str) -> Result<HashMap<String, String>, QueueError> {
    super::queue_attributes(client, url, &[QueueAttributeName::All]).await
}

/// A queue's ARN (the RedrivePolicy names the DLQ by ARN).
pub(crate) async fn queue_arn(client: &Client, url: &str) -> Result<String, QueueError> {
    attributes_of(client, url)
        .await?
        .remove("QueueArn")
        .ok_or_else(|| QueueError::unbuilt("GetQueueAttributes", format!("no QueueArn for {url}")))
}

/// Reads a queue's RedrivePolicy as `(dlq_arn, max_receive_count)` (tests, health).
pub async fn redrive_of(client: &Client, url: &str) -> Result<Option<(String, u32)>, QueueError> {
    let attributes = attributes_of(client, url).await?;
    let Some(raw) = attributes.get("RedrivePolicy") else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        QueueError::unbuilt(
            "GetQueueAttributes",
            format!("RedrivePolicy is not JSON: {e}"),
        )
    })?;
    let arn = v
        .get("deadLetterTargetArn")
        .and_then(|a| a.as_str())
        .unwrap_or_default()
        .to_string();
    let count = match v.get("maxReceiveCount") {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0) as u32,
        _ => 0,
    };
    Ok(Some((arn, count)))
}
