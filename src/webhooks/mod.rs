//! Signed webhooks when a report finishes (issue 13): `report.completed`,
//! `report.failed`, `report.cancelled`, signed per Standard Webhooks, delivered at
//! least once with the database as the queue.
//!
//! - `sweep` (here): records each newly finished report's deliveries, one sweeper per
//!   fleet, off the job's hot path (the StatusActor never writes a delivery).
//! - [`deliver`]: one attempt (sign, POST, timeout) and the retry rule.
//! - [`sign`]: the signature. [`ssrf`]: where webhooks may go.
//!
//! The engine runs in processes with the `worker` role (the ones that finish reports),
//! and only when a signing secret is set: without one nothing is swept or written.
//!
//! The payload's `data` is the report exactly as `GET /reports/{id}` serves it. That
//! JSON belongs to `api` (one owner per format), which sits above this module, so
//! `startup` hands the engine api's renderer as a function value ([`RenderReport`])
//! instead of this module importing up a floor.

pub(crate) mod deliver;
pub(crate) mod sign;
pub(crate) mod ssrf;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use rand::Rng;
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use crate::config::WebhookSettings;
use crate::db::models::{JobStatus, ReportRecord};
use crate::db::webhooks::{self as queries, DeliveryUpdate, DueDelivery, NewDelivery};
use crate::db::{self, DbPool};
use crate::metrics::Metrics;
use deliver::{PostError, WebhookClient};
use sign::Signer;
use ssrf::HostPolicy;

/// Sleeps `every`; false when `stop` turned true (or its sender is gone) meanwhile.
async fn wait_or_stop(every: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(every) => true,
        changed = stop.changed() => changed.is_ok() && !*stop.borrow(),
    }
}

/// Renders a report as `GET /reports/{id}` serves it (given by `startup`, see above).
pub(crate) type RenderReport = Arc<dyn Fn(&ReportRecord) -> serde_json::Value + Send + Sync>;

/// Why the engine cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// A secret is malformed (validation normally catches it first).
    #[error(transparent)]
    Secret(#[from] sign::BadSecret),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] deliver::ClientError),
}

/// The event a terminal status announces; None for a status that is not terminal.
pub(crate) fn event_of(status: &str) -> Option<&'static str> {
    match JobStatus::parse(status)? {
        JobStatus::Completed => Some("report.completed"),
        JobStatus::Failed => Some("report.failed"),
        JobStatus::Cancelled => Some("report.cancelled"),
        JobStatus::InQueue | JobStatus::InProgress => None,
    }
}

/// The sweeper and deliverer of one process.
#[derive(Clone)]
pub(crate) struct WebhookEngine {
    settings: Arc<WebhookSettings>,
    pool: DbPool,
    metrics: Arc<Metrics>,
    render: RenderReport,
    signer: Signer,
    client: WebhookClient,
}

impl WebhookEngine {
    /// The engine `[webhooks]` describes; None when webhooks are off (no secret).
    pub(crate) fn new(
        settings: &WebhookSettings,
        pool: DbPool,
        metrics: Arc<Metrics>,
        render: RenderReport,
    ) -> Result<Option<Self>, StartError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let signer = Signer::new(settings.all_secrets())?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let client = WebhookClient::new(HostPolicy::new(settings), timeout)?;
        Ok(Some(Self {
            settings: Arc::new(settings.clone()),
            pool,
            metrics,
            render,
            signer,
            client,
        }))
    }

    /// Runs the sweeper and the deliverer until `stop` turns true, then lets the tries
    /// in flight finish (each is bounded by `timeout_ms`) and returns. A try cut off
    /// anyway (the process killed) is sent again when its lease ends: at least once.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) {
        actix::spawn(self.clone().sweep_forever(stop.clone()));
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        self.deliver_until(stop, &slots).await;
        let all = u32::try_from(self.settings.concurrency).unwrap_or(u32::MAX);
        let grace = Duration::from_millis(self.settings.timeout_ms) + Duration::from_secs(1);
        let drained = tokio::time::timeout(grace, slots.acquire_many(all)).await;
        tracing::info!(drained = drained.is_ok(), "webhooks stopped");
    }

    /// A sweep every `poll_ms`, until `stop`.
    async fn sweep_forever(self, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.settings.poll_ms);
        while !*stop.borrow() {
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "webhooks: cannot record finished reports' deliveries");
            }
            if !wait_or_stop(every, &mut stop).await {
                break;
            }
        }
    }

    /// Claims as many due deliveries as there are free slots (`concurrency`) and sends
    /// each on its own task, so one slow receiver holds one slot, not the others. Looks
    /// again at once while it fills every free slot, else after `poll_ms`; until `stop`.
    async fn deliver_until(&self, mut stop: watch::Receiver<bool>, slots: &Arc<Semaphore>) {
        let every = Duration::from_millis(self.settings.poll_ms);
        while !*stop.borrow() {
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                self.claim(free).await
            };
            let full = match claimed {
                Ok(due) => {
                    let full = free > 0 && due.len() == free;
                    self.start_all(due, slots);
                    full
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot claim due deliveries");
                    false
                }
            };
            if !full && !wait_or_stop(every, &mut stop).await {
                break;
            }
        }
    }

    /// Starts one task per claimed delivery, each holding a slot until it is done.
    fn start_all(&self, due: Vec<DueDelivery>, slots: &Arc<Semaphore>) {
        for delivery in due {
            // The claim asked for at most the free slots, and only this loop takes them.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(webhook_id = %delivery.id, "webhooks: no free slot; the lease will bring it back");
                continue;
            };
            let engine = self.clone();
            actix::spawn(async move {
                engine.attempt(delivery).await;
                drop(slot);
            });
        }
    }

    /// Claims up to `limit` due deliveries (see [`queries::claim_due`]).
    async fn claim(&self, limit: usize) -> Result<Vec<DueDelivery>, db::DbError> {
        let lease_s = i64::try_from(self.settings.timeout_ms / 1000).unwrap_or(60) + 30;
        let limit = i64::try_from(limit).unwrap_or(1);
        let mut conn = db::connection(&self.pool).await?;
        Ok(queries::claim_due(&mut conn, limit, lease_s).await?)
    }

    /// One sweep (see [`queries::sweep`]); the deliveries it recorded.
    pub(crate) async fn sweep_once(&self) -> Result<usize, db::DbError> {
        let mut conn = db::connection(&self.pool).await?;
        let recorded = queries::sweep(&mut conn, |row, callback| self.deliveries_of(row, callback))
            .await?
            .unwrap_or(0);
        if recorded > 0 {
            tracing::debug!(recorded, "webhooks: deliveries recorded");
        }
        Ok(recorded)
    }

    /// The deliveries a finished report makes: one per fleet endpoint and its own
    /// `callbackUrl`, each with the same body.
    fn deliveries_of(&self, row: &ReportRecord, callback: Option<&str>) -> Vec<NewDelivery> {
        let Some(event) = event_of(&row.status) else {
            return Vec::new();
        };
        let mut endpoints: Vec<&str> = self.settings.endpoints.iter().map(String::as_str).collect();
        if let Some(callback) = callback.filter(|c| !endpoints.contains(c)) {
            endpoints.push(callback);
        }
        if endpoints.is_empty() {
            return Vec::new();
        }
        let payload = serde_json::json!({
            "type": event,
            "timestamp": row.finished_at.unwrap_or_else(Utc::now),
            "data": (self.render)(row),
        });
        // Validation keeps retry_for_s within 30 days.
        let retry_for =
            chrono::Duration::seconds(i64::try_from(self.settings.retry_for_s).unwrap_or(86_400));
        endpoints
            .into_iter()
            .map(|endpoint| NewDelivery {
                id: Uuid::new_v4(),
                report_id: row.id,
                endpoint: endpoint.to_string(),
                event: event.to_string(),
                payload: payload.clone(),
                retry_until: Utc::now() + retry_for,
            })
            .collect()
    }

    /// One try of one delivery, its outcome recorded and counted.
    #[tracing::instrument(skip_all, fields(webhook_id = %delivery.id, report_id = %delivery.report_id, event = %delivery.event, attempt = delivery.attempts))]
    async fn attempt(&self, delivery: DueDelivery) {
        let started = Instant::now();
        let answer = self.send(&delivery).await;
        self.metrics
            .webhooks
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let jitter = rand::rng().random_range(0.8..1.2);
        let update = deliver::decide(
            answer.map_err(|e| e.to_string()),
            delivery.attempts,
            Utc::now(),
            delivery.retry_until,
            Duration::from_millis(self.settings.first_retry_ms),
            jitter,
        );
        let outcome = match &update {
            DeliveryUpdate::Delivered { .. } => "delivered",
            DeliveryUpdate::Stopped { .. } => "stopped",
            DeliveryUpdate::Retry { .. } => "retry",
            DeliveryUpdate::GaveUp { .. } => "gave_up",
        };
        self.metrics
            .webhooks
            .deliveries
            .with_label_values(&[outcome])
            .inc();
        tracing::info!(outcome, update = ?update, "webhook attempt");
        let recorded = match db::connection(&self.pool).await {
            Ok(mut conn) => {
                queries::record_outcome(&mut conn, delivery.id, delivery.attempts, &update)
                    .await
                    .map_err(db::DbError::from)
            }
            Err(e) => Err(e),
        };
        // Not recorded: the lease runs out and the delivery is tried again (at least once).
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "webhooks: cannot record an attempt's outcome");
        }
    }

    /// Signs and POSTs the delivery's body.
    async fn send(&self, delivery: &DueDelivery) -> Result<u16, PostError> {
        let body = Bytes::from(delivery.payload.to_string());
        let id = delivery.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = self.signer.sign(&id, timestamp, &body);
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        self.client.post(&delivery.endpoint, &headers, body).await
    }
}
