//! Prometheus metrics of one process, served as text on `GET /metrics`.
//!
//! One registry per process (not a global), so tests that run several processes in one
//! binary each see their own counters.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric reportd exports.
pub struct Metrics {
    registry: Registry,
    /// Reports accepted by `POST /reports` / `GET /generate` (new rows only).
    pub jobs_accepted: IntCounter,
    /// Attempts that completed their job.
    pub jobs_completed: IntCounter,
    /// Jobs that ended `failed` (permanent error or out of receives).
    pub jobs_failed: IntCounter,
    /// Jobs that ended `cancelled` (by a person, or expired), counted by the process
    /// that ended them.
    pub jobs_cancelled: IntCounter,
    /// Attempts that failed and were put back for another try.
    pub jobs_retried: IntCounter,
    /// Jobs handed back to SQS unclaimed because their user was at
    /// `fairness.max_in_flight_per_user` (not failures).
    pub fairness_releases: IntCounter,
    /// Jobs over their user's cap taken into the poller's waiting room (not failures).
    pub fairness_waits: IntCounter,
    /// Jobs waiting in the poller's waiting room now.
    pub waiting_at_cap: IntGauge,
    /// Messages sent to the dead-letter queue by reportd or left for SQS's redrive.
    pub jobs_dead_lettered: IntCounter,
    /// Seconds a successful attempt ran.
    pub job_duration: Histogram,
    /// Seconds from `created_at` to the claim of the first attempt.
    pub queue_wait: Histogram,
    /// Jobs running now.
    pub jobs_in_flight: IntGauge,
    /// Workers with nothing to do.
    pub idle_workers: IntGauge,
    /// SQS calls by operation and outcome (`ok` / `error`).
    pub sqs_calls: IntCounterVec,
    /// Writes committed per StatusActor flush.
    pub status_batch_size: Histogram,
    /// Seconds per StatusActor flush.
    pub status_flush_seconds: Histogram,
    /// HTTP requests by route pattern, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP latency by route pattern.
    pub http_seconds: HistogramVec,
    /// SQS queue depth by queue (`main`/`dlq`) and state (`visible`/`in_flight`).
    pub queue_depth: IntGaugeVec,
    /// Actor restarts by actor kind.
    pub actor_restarts: IntCounterVec,
    /// Webhook deliveries.
    pub webhooks: WebhookMetrics,
    /// The job table's upkeep.
    pub upkeep: UpkeepMetrics,
}

/// Webhook deliveries: their attempts and how long receivers took.
pub struct WebhookMetrics {
    /// Delivery attempts by outcome (`delivered`, `retry`, `gave_up`, `stopped`).
    pub deliveries: IntCounterVec,
    /// Time from an attempt's start to the receiver's answer (or the timeout).
    pub seconds: Histogram,
}

impl WebhookMetrics {
    fn register(registry: &Registry) -> Self {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "reportd_webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
            ),
            &["outcome"],
        );
        let seconds = HistogramOpts::new(
            "reportd_webhook_delivery_seconds",
            "Webhook attempt latency (request to answer)",
        )
        .buckets(SECONDS_BUCKETS.to_vec());
        Self {
            deliveries: register(registry, deliveries),
            seconds: register(registry, Histogram::with_opts(seconds)),
        }
    }
}

/// The job table's upkeep: what retention deleted, and what the background reading of
/// PostgreSQL's statistics found.
pub struct UpkeepMetrics {
    /// Finished rows the retention pruner deleted, by their status.
    pub rows_pruned: IntCounterVec,
    /// Age of the oldest `in-queue` row (0 when none waits); refreshed in the background.
    pub oldest_waiting: Gauge,
    /// `report_queue` rows by status, counted up to a cap (see `db::hygiene`).
    pub rows: IntGaugeVec,
    /// Dead tuples of `report_queue` as a share of all its tuples (`pg_stat_user_tables`).
    pub dead_tuple_ratio: Gauge,
    /// Dead tuples of `report_queue`.
    pub dead_tuples: IntGauge,
    /// Unix time of the last vacuum (manual or auto) of `report_queue`; 0 = never.
    pub last_vacuum: Gauge,
}

impl UpkeepMetrics {
    fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| register(registry, Gauge::new(name, help));
        Self {
            rows_pruned: register(
                registry,
                IntCounterVec::new(
                Opts::new(
                    "reportd_rows_pruned_total",
                    "Finished report rows deleted by retention, by status",
                ),
                &["status"],
            ),
            ),
            oldest_waiting: gauge(
                "reportd_db_oldest_waiting_seconds",
                "Age of the oldest in-queue report_queue row",
            ),
            rows: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "reportd_db_rows",
                        "report_queue rows by status, counted up to 10000 (10000 = at least that many)",
                    ),
                    &["status"],
                ),
            ),
            dead_tuple_ratio: gauge(
                "reportd_db_dead_tuple_ratio",
                "report_queue dead tuples / (live + dead)",
            ),
            dead_tuples: register(
                registry,
                IntGauge::new("reportd_db_dead_tuples", "report_queue dead tuples"),
            ),
            last_vacuum: gauge(
                "reportd_db_last_vacuum_timestamp_seconds",
                "Unix time of report_queue's last vacuum or autovacuum (0 = never)",
            ),
        }
    }
}

/// Latency buckets from 1 ms to 2 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Registers a metric made from constant names and help texts. A failure here is a
/// programming error (a malformed or repeated name) that every test starting the daemon
/// would hit, never something the environment can cause.
fn register<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("a valid metric name");
    registry
        .register(Box::new(metric.clone()))
        .expect("a unique metric name");
    metric
}

impl Metrics {
    /// A fresh registry with every metric registered. The names and labels are constants,
    /// so the `expect`s below can only fire on a programming error, which every test hits.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| register(&registry, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            register(&registry, Histogram::with_opts(opts))
        };
        let seconds = |name: &str, help: &str| histogram(name, help, SECONDS_BUCKETS.to_vec());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let metrics = Self {
            jobs_accepted: counter("reportd_jobs_accepted_total", "Reports accepted by the API"),
            jobs_completed: counter("reportd_jobs_completed_total", "Jobs completed"),
            jobs_failed: counter("reportd_jobs_failed_total", "Jobs that ended failed"),
            jobs_cancelled: counter("reportd_jobs_cancelled_total", "Jobs cancelled or expired"),
            fairness_releases: counter(
                "reportd_fairness_releases_total",
                "Jobs handed back to SQS unclaimed because their user was at the in-flight cap",
            ),
            fairness_waits: counter(
                "reportd_fairness_waits_total",
                "Jobs over their user's in-flight cap taken into the waiting room",
            ),
            waiting_at_cap: gauge(
                "reportd_jobs_waiting_at_cap",
                "Jobs over their user's in-flight cap waiting in this process for a slot",
            ),
            jobs_retried: counter(
                "reportd_jobs_retried_total",
                "Failed attempts put back for a retry",
            ),
            jobs_dead_lettered: counter(
                "reportd_jobs_dead_lettered_total",
                "Messages moved (or left for redrive) to the DLQ",
            ),
            job_duration: seconds(
                "reportd_job_duration_seconds",
                "Run time of successful attempts",
            ),
            queue_wait: seconds(
                "reportd_job_queue_wait_seconds",
                "Time from acceptance to the first attempt's start",
            ),
            jobs_in_flight: gauge("reportd_jobs_in_flight", "Jobs running now"),
            idle_workers: gauge("reportd_idle_workers", "Workers with nothing to do"),
            sqs_calls: counter_vec(
                "reportd_sqs_calls_total",
                "SQS calls by operation and outcome",
                &["operation", "outcome"],
            ),
            status_batch_size: histogram(
                "reportd_status_batch_size",
                "Writes per StatusActor flush",
                vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 256.0],
            ),
            status_flush_seconds: seconds(
                "reportd_status_flush_seconds",
                "StatusActor flush latency",
            ),
            http_requests: counter_vec(
                "reportd_http_requests_total",
                "HTTP requests",
                &["route", "method", "status"],
            ),
            http_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("reportd_http_request_seconds", "HTTP latency")
                        .buckets(SECONDS_BUCKETS.to_vec()),
                    &["route"],
                ),
            ),
            queue_depth: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("reportd_queue_depth", "SQS approximate queue depth"),
                    &["queue", "state"],
                ),
            ),
            actor_restarts: counter_vec(
                "reportd_actor_restarts_total",
                "Actor restarts by kind",
                &["kind"],
            ),
            webhooks: WebhookMetrics::register(&registry),
            upkeep: UpkeepMetrics::register(&registry),
            registry,
        };
        Arc::new(metrics)
    }

    /// Counts one SQS call.
    pub(crate) fn sqs_call(&self, operation: &str, ok: bool) {
        self.sqs_calls
            .with_label_values(&[operation, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
