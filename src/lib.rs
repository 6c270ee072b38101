//! reportd: an SQS report-job daemon.
//!
//! - [`config`]: typed settings from `config.toml` + `REPORTD_*` env vars.
//! - [`db`]: PostgreSQL pool, migrations and the `report_queue` queries.
//! - [`queue`]: the SQS adapter: client, provisioning, batched calls.
//! - `sqs_limits`: the limits SQS sets, for the adapter and for config validation.
//! - [`storage`]: the report store, `local` (`report.output_dir`) or `s3` (uploads,
//!   presigned download links).
//! - [`actors`]: `StatusActor` (the single DB writer), `PollerActor` and the
//!   `ReportWorker` pool (the consumer), and the fate rules the workers apply.
//! - `outbox`: the dispatcher that sends accepted reports after their commit, and the
//!   reconciler that keeps every unfinished report's message alive.
//! - `dlq`: dead-letter operations for the API and the CLI (list, redrive, discard,
//!   purge) and the DLQ watcher.
//! - [`report`]: the `ReportGenerator` extension point and the built-in CSV generator.
//! - [`api`]: the actix-web HTTP API, one module per resource.
//! - `fleet`: every process registers itself in `processes` and keeps its row fresh
//!   (the console's fleet view).
//! - [`retention`]: the pruner that deletes finished reports (rows and files) past
//!   their status's `[retention]` limit, one process of the fleet at a time.
//! - `webhooks`: signed webhooks when a report finishes: the sweeper that records
//!   deliveries, the deliverer, signatures and the SSRF guard.
//! - [`startup`]: wires it all together and runs until a shutdown signal.
//! - [`metrics`]: the Prometheus metrics served on `/metrics`.
//! - [`cli`] and [`telemetry`]: the command line and logging.

pub mod actors;
pub(crate) mod api;
pub(crate) mod aws_endpoint;
pub(crate) mod batcher;
pub mod cli;
pub mod config;
pub mod db;
pub(crate) mod dlq;
pub(crate) mod fleet;
pub mod metrics;
pub(crate) mod outbox;
pub mod queue;
pub mod report;
pub mod retention;
pub(crate) mod sqs_limits;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub(crate) mod webhooks;
