//! Typed configuration: defaults → `config.toml` → `REPORTD_<SECTION>__<KEY>` environment
//! variables (and `DATABASE_URL`), merged by `figment` and validated once at load time.
//!
//! `figment` was chosen over `config` because its errors carry the full key path and the
//! source (file or env var) of the bad value, which is exactly what an operator needs to
//! fix a typo; `deny_unknown_fields` on every section turns a misspelt key into an error
//! instead of a silently ignored setting.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::sqs_limits as limits;

pub mod access;
pub mod report_types;

pub use access::{ApiToken, TokenRole, UiSettings};
pub use report_types::ReportTypeSettings;
mod fairness;
pub use fairness::FairnessSettings;
mod pg_tls;
pub(crate) use pg_tls::{parse_pg_url, RootCerts, SslMode};
mod retention;
pub use retention::RetentionSettings;
mod webhooks;
pub(crate) use webhooks::check_url as check_webhook_url;
pub use webhooks::WebhookSettings;

/// Everything reportd reads from its configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP listener and which halves of the daemon this process runs.
    #[serde(default)]
    pub server: ServerSettings,
    /// The PostgreSQL job table.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// The SQS queue pair (main queue + dead-letter queue).
    #[serde(default)]
    pub sqs: SqsSettings,
    /// The consumer's worker pool.
    #[serde(default)]
    pub workers: WorkerSettings,
    /// How long a stopping process lets in-flight jobs finish.
    #[serde(default)]
    pub shutdown: ShutdownSettings,
    /// Log format and default level.
    #[serde(default)]
    pub log: LogSettings,
    /// Producer API limits and authentication.
    #[serde(default)]
    pub api: ApiSettings,
    /// Retry policy for failed attempts.
    #[serde(default)]
    pub retry: RetrySettings,
    /// How many failures end a job.
    #[serde(default)]
    pub jobs: JobSettings,
    /// Where generated reports are written.
    #[serde(default)]
    pub report: ReportSettings,
    /// Where finished report files are kept and how clients download them.
    #[serde(default)]
    pub storage: StorageSettings,
    /// Demo/load-test knobs that reproduce the original article's slow, flaky jobs.
    #[serde(default)]
    pub simulate: SimulateSettings,
    /// Report types declared in config (`[[report_types]]`); the built-in
    /// `user-activity` may be among them (then its declaration makes its files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_types: Vec<ReportTypeSettings>,
    /// When restarting actors counts as a restart storm.
    #[serde(default)]
    pub supervisor: SupervisorSettings,
    /// Signed webhooks when a report finishes (off until a secret is set).
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// The operator console under `/ui`.
    #[serde(default)]
    pub ui: UiSettings,
    /// How long finished reports are kept (off until a status has a limit).
    #[serde(default)]
    pub retention: RetentionSettings,
    /// `[fairness]`: the per-user cap on jobs in progress (off by default).
    #[serde(default)]
    pub fairness: FairnessSettings,
}

/// `[supervisor]`: how many actor restarts, how fast, make a restart storm (unhealthy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// More restarts than this within `window_s` mark an actor unhealthy.
    pub max_restarts: usize,
    /// The restart-storm window, in seconds.
    pub window_s: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window_s: 60,
        }
    }
}

/// A role this process plays. Producers and consumers scale independently by running
/// processes with one role each against the same queue and database.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The actix-web producer API (submit, status, listing, files) and the enqueue dispatcher.
    Api,
    /// The SQS consumer: poller, worker pool.
    Worker,
}

/// `[server]`: where and how the HTTP API listens, and which roles this process runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP server listens on; port 0 picks a free port (tests).
    pub bind: String,
    /// Base URL clients reach this service at; used to build `report_url` and links.
    pub public_url: String,
    /// Which halves of the daemon run in this process.
    pub roles: Vec<Role>,
    /// Seconds a client gets to send a request's body, counted from its headers. A slow
    /// or stalled sender otherwise holds a handler forever; past this it gets 408.
    pub request_timeout_s: u64,
    /// Seconds a client gets to send a request's headers after connecting (or after its
    /// previous request): a few kilobytes, so short; past this it gets 408 and the
    /// connection is closed, so that slow senders cannot pile up connections.
    pub header_timeout_s: u64,
    /// Open connections each HTTP worker thread accepts; beyond it new connections wait
    /// in the listen backlog, so a connection flood cannot exhaust file descriptors.
    pub max_connections: usize,
}

/// Longest accepted `server.request_timeout_s`: an hour is already generous for a body
/// of at most `api.max_body_bytes`.
pub(crate) const MAX_REQUEST_TIMEOUT_S: u64 = 3600;

/// Most accepted `server.max_connections` (per HTTP worker thread).
pub(crate) const MAX_CONNECTIONS: usize = 1_000_000;

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            roles: vec![Role::Api, Role::Worker],
            request_timeout_s: 30,
            header_timeout_s: 5,
            max_connections: 25_000,
        }
    }
}

/// `[database]`: the PostgreSQL URL and pool, create/migrate at start, the writer's timeouts.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; may carry a password, so it is redacted whenever printed.
    pub url: String,
    /// Connections in the pool shared by the API and the StatusActor.
    pub pool_size: usize,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Create the database named in `url` when it does not exist yet (dev convenience).
    pub create_if_missing: bool,
    /// The StatusActor's statements are cancelled after this many milliseconds, so a
    /// stuck statement fails (retryably) instead of wedging every later write.
    pub statement_timeout_ms: u64,
    /// The StatusActor waits this many milliseconds for a row lock; then the writes that
    /// touch rows held by someone else fail (retryably) and the rest of the batch
    /// commits. Other writers hold rows for milliseconds, so this stays short.
    pub lock_timeout_ms: u64,
    /// Where declared `sql` report types run their queries (a replica, or a role that
    /// may only read); unset = `url`. Redacted like `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports_url: Option<String>,
}

impl DatabaseSettings {
    /// The URL report type queries use: `reports_url`, else `url`.
    pub fn reports_url(&self) -> &str {
        self.reports_url.as_deref().unwrap_or(&self.url)
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/reportd".into(),
            pool_size: 16,
            migrate_on_start: true,
            create_if_missing: true,
            statement_timeout_ms: 10_000,
            lock_timeout_ms: 200,
            reports_url: None,
        }
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("create_if_missing", &self.create_if_missing)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("lock_timeout_ms", &self.lock_timeout_ms)
            .field("reports_url", &self.reports_url.as_deref().map(redact_url))
            .finish()
    }
}

/// `[sqs]`: the SQS queue pair (main + dead-letter), its attributes and how it is polled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSettings {
    /// SQS-compatible endpoint (LocalStack); absent means real AWS, with credentials from
    /// the default chain (the region is always `region`).
    pub endpoint_url: Option<String>,
    /// AWS region of the queues.
    pub region: String,
    /// Main queue name; the dead-letter queue is this name + `-dlq` (before `.fifo`).
    pub queue_name: String,
    /// FIFO queue: per-user ordering through `MessageGroupId`.
    pub fifo: bool,
    /// Create/repair both queues at `serve` start.
    pub create_queues: bool,
    /// Seconds a received message stays invisible to other consumers.
    pub visibility_timeout_s: u32,
    /// Long-poll wait in seconds (SQS allows 0..=20).
    pub wait_time_s: u32,
    /// Receives before SQS's own redrive moves a message to the dead-letter queue: a
    /// safety net for messages reportd cannot handle at all. Must be at least
    /// `jobs.max_attempts + 5`; reportd replaces a message with a fresh copy before it
    /// gets near this count, so interruptions never dead-letter a job.
    pub max_receive_count: u32,
    /// Most messages asked for per receive (SQS allows 1..=10).
    pub receive_batch: u32,
    /// How long SQS keeps an unconsumed message (60..=1209600 s).
    pub message_retention_s: u32,
    /// Standard queues: send each job with `MessageGroupId` = its user id, so SQS fair
    /// queues keep one busy user from delaying the others' messages. FIFO queues always
    /// group by user, whatever this says.
    pub fair_groups: bool,
}

impl Default for SqsSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: "us-east-1".into(),
            queue_name: "reports".into(),
            fifo: false,
            create_queues: true,
            visibility_timeout_s: 30,
            wait_time_s: 20,
            max_receive_count: 10,
            receive_batch: 10,
            message_retention_s: limits::MAX_RETENTION_S,
            fair_groups: true,
        }
    }
}

impl SqsSettings {
    /// Name of the dead-letter queue: `reports` → `reports-dlq`, `reports.fifo` →
    /// `reports-dlq.fifo` (a FIFO queue's DLQ must itself be FIFO).
    pub fn dlq_name(&self) -> String {
        match self.queue_name.strip_suffix(".fifo") {
            Some(base) => format!("{base}-dlq.fifo"),
            None => format!("{}-dlq", self.queue_name),
        }
    }
}

/// `[workers]`: the consumer's pool of ReportWorker actors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// ReportWorker actors, i.e. jobs this process runs at once.
    pub count: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { count: 8 }
    }
}

/// `[shutdown]`: how long a stopping process lets running jobs finish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// Seconds in-flight jobs get to finish after SIGTERM before they are released.
    pub grace_s: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { grace_s: 30 }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`: log output format and default level.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is not set (e.g. `info`, `reportd=debug`).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `[api]`: the producer API's request limits and bearer tokens.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Longest accepted date range of a report request, in days.
    pub max_range_days: i64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Bearer tokens (plain strings are admin tokens, or `{ name, token, role }`); when
    /// non-empty every endpoint but health, metrics and the OpenAPI document requires
    /// one. Never printed.
    pub tokens: Vec<ApiToken>,
    /// Submits per second one user may make to this process (a token bucket with a
    /// burst of the same size); over it, 429 with `Retry-After`. 0 = no limit. Per
    /// process, not shared by the fleet.
    pub submit_rate_per_user: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_range_days: 366,
            max_body_bytes: 256 * 1024,
            tokens: Vec::new(),
            submit_rate_per_user: 0,
        }
    }
}

impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("max_range_days", &self.max_range_days)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("submit_rate_per_user", &self.submit_rate_per_user)
            .finish()
    }
}

/// `[retry]`: the exponential backoff before a failed job's next attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// First retry delay; attempt n waits `base × 2^(n−1)` seconds.
    pub backoff_base_s: u32,
    /// Upper bound of a retry delay.
    pub backoff_max_s: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            backoff_base_s: 2,
            backoff_max_s: 300,
        }
    }
}

/// `[jobs]`: how many failed attempts end a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Failed attempts (errors, panics, lost workers) after which a job ends `failed` and
    /// reportd copies its message to the dead-letter queue. Interruptions (a shutdown
    /// release, a duplicate delivery, the database or the host being unavailable) are
    /// not failures and never count.
    pub max_attempts: u32,
    /// Seconds an attempt may run when a submission names no `maxRuntimeS`; a longer one
    /// is aborted and counts as a failure. 0 = no limit.
    pub max_runtime_s: u32,
    /// Seconds after acceptance by which a job must have started when a submission names
    /// no `notAfter`; one that has not is cancelled (reason `expired`). 0 = never.
    pub expire_after_s: u32,
}

/// Longest `maxRuntimeS` / `jobs.max_runtime_s` (a week) and `jobs.expire_after_s`.
pub const MAX_JOB_SECONDS: u32 = 7 * 24 * 3600;

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_runtime_s: 0,
            expire_after_s: 0,
        }
    }
}

/// Shortest `sqs.visibility_timeout_s`: heartbeats go every third of it, and a row is
/// stale after several missed beats, so below this one slow call loses a live job.
pub(crate) const MIN_VISIBILITY_TIMEOUT_S: u32 = 6;

/// Receives that `sqs.max_receive_count` must leave above `jobs.max_attempts`: SQS's own
/// redrive is only a safety net for messages reportd cannot handle, never the rule that
/// ends a job.
pub(crate) const RECEIVE_HEADROOM: u32 = 5;

/// `[report]`: where the built-in CSV generator writes its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// Directory the CSV files are written to (created if missing).
    pub output_dir: PathBuf,
    /// Seconds one query of the built-in CSV generator may run (`statement_timeout`);
    /// a longer one is cancelled and fails the attempt (retryably). Bounds a runaway
    /// read on the queue's primary, where long reads hold back vacuum. 0 = no limit.
    pub query_timeout_s: u64,
}

/// Longest accepted `report.query_timeout_s` (a day).
pub(crate) const MAX_QUERY_TIMEOUT_S: u64 = 86_400;

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("./reports"),
            query_timeout_s: 300,
        }
    }
}

/// Where finished report files go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// `report.output_dir` of the worker that ran the report (one host only).
    Local,
    /// An S3 bucket (or an S3-compatible store): downloadable through any api process.
    S3,
}

/// `[storage]`: the report store. `local` keeps today's files in `report.output_dir`;
/// `s3` uploads each finished file and answers downloads with presigned URLs, so api
/// and worker processes may run on different hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `local` or `s3`.
    pub backend: StorageBackend,
    /// The bucket of the `s3` backend (required there).
    pub bucket: Option<String>,
    /// Prepended to every object key (`reports/` → `reports/<id>.csv`); a missing
    /// trailing `/` is added.
    pub prefix: String,
    /// AWS region of the bucket.
    pub region: String,
    /// S3-compatible endpoint (LocalStack, MinIO); absent means real AWS, with
    /// credentials from the default chain.
    pub endpoint_url: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), which LocalStack and MinIO need.
    pub force_path_style: bool,
    /// Create the bucket at `serve` start when it is missing (like `sqs.create_queues`);
    /// off, a missing bucket stops `serve` at once.
    pub create_bucket: bool,
    /// Seconds a download link (presigned GET URL) stays valid.
    pub presign_ttl_s: u64,
    /// Server-side encryption asked for on every upload (`AES256`, `aws:kms`,
    /// `aws:kms:dsse`); absent = the bucket's default.
    pub server_side_encryption: Option<String>,
    /// Store report files gzip-compressed (`Content-Encoding: gzip`).
    pub gzip: bool,
}

/// Longest `storage.presign_ttl_s`: AWS refuses SigV4 presigned URLs valid longer than
/// 7 days.
pub const MAX_PRESIGN_TTL_S: u64 = 7 * 24 * 3600;

/// The values `storage.server_side_encryption` may take (S3's `x-amz-server-side-encryption`).
pub(crate) const SERVER_SIDE_ENCRYPTIONS: [&str; 3] = ["AES256", "aws:kms", "aws:kms:dsse"];

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            bucket: None,
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint_url: None,
            force_path_style: false,
            create_bucket: false,
            presign_ttl_s: 3600,
            server_side_encryption: None,
            gzip: false,
        }
    }
}

/// `[simulate]`: demo/load-test knobs that slow jobs down or make them fail (all off by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SimulateSettings {
    /// Extra time per job, picked uniformly in `[min, max]` milliseconds.
    pub duration_ms: Option<[u64; 2]>,
    /// Share of attempts that fail with a retryable error (0.0..=1.0).
    pub failure_rate: f64,
    /// Every job's first N attempts fail (retryable).
    pub fail_first_attempts: u32,
    /// Every job's first N attempts panic inside the generator.
    pub panic_first_attempts: u32,
    /// Jobs do no work and write no file: measures the pipeline alone.
    pub skip_generator: bool,
}

impl SimulateSettings {
    /// Whether any simulation knob is on.
    pub fn is_active(&self) -> bool {
        self.duration_ms.is_some()
            || self.failure_rate > 0.0
            || self.fail_first_attempts > 0
            || self.panic_first_attempts > 0
            || self.skip_generator
    }
}

/// A configuration that cannot be used; the message names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file at this path (`--config`, `REPORTD_CONFIG`) does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// The TOML or an environment variable does not fit the settings (syntax, type,
    /// unknown key); the text names each key at fault and its source, never a secret value.
    #[error("{0}")]
    Parse(String),
    /// A value that parsed but breaks a rule: its range, format, or a rule between keys.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key at fault, e.g. `sqs.wait_time_s`.
        key: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// Like `Invalid`, for a key built at run time (`report_types[2].params.startDate`).
    #[error("invalid value for `{key}`: {reason}")]
    InvalidKey {
        /// The dotted key at fault.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        // figment may report several errors; join them so none is hidden.
        let messages: Vec<String> = error.into_iter().map(describe_figment_error).collect();
        ConfigError::Parse(messages.join("; "))
    }
}

fn describe_figment_error(error: figment::Error) -> String {
    let key = if error.path.is_empty() {
        None
    } else {
        Some(error.path.join("."))
    };
    let source = error
        .metadata
        .as_ref()
        .map(|meta| match &meta.source {
            Some(source) => format!(" (from {} {source})", meta.name),
            None => format!(" (from {})", meta.name),
        })
        .unwrap_or_default();
    // For an unknown field figment's path already ends with the field itself.
    match (&error.kind, key) {
        (figment::error::Kind::UnknownField(_, _), Some(key)) if key.contains('.') => {
            format!("unknown key `{key}`{source}")
        }
        (figment::error::Kind::UnknownField(field, _), Some(section)) if section != *field => {
            format!("unknown key `{section}.{field}`{source}")
        }
        (figment::error::Kind::UnknownField(field, _), _) => {
            format!("unknown section `{field}`{source}")
        }
        (kind, Some(key)) if is_secret_key(&key) => {
            format!(
                "invalid value for `{key}`: {}{source}",
                describe_without_value(kind)
            )
        }
        (kind, Some(key)) => format!("invalid value for `{key}`: {kind}{source}"),
        (kind, None) => format!("{kind}{source}"),
    }
}

/// Keys whose values are secrets. An error about one names the key and what was
/// expected, never the value: a token put where a list belongs is still a token.
const SECRET_KEYS: &[&str] = &[
    "api.tokens",
    "database.url",
    "database.reports_url",
    "webhooks.secret",
    "webhooks.secrets",
];

/// Whether `key` (a dotted path, e.g. `api.tokens.1` for a list element) is or lies
/// under a secret key.
fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|secret| {
        key.strip_prefix(secret)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// figment's description of an error with the offending value left out: figment's own
/// `Display` quotes it (`found string "s3cret"`).
fn describe_without_value(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                type_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid {}, expected {expected}", type_of(actual))
        }
        Kind::InvalidLength(length, expected) => {
            format!("invalid length {length}, expected {expected}")
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown variant, expected one of {expected:?}")
        }
        Kind::MissingField(field) => format!("missing field `{field}`"),
        Kind::DuplicateField(field) => format!("duplicate field `{field}`"),
        Kind::Unsupported(actual) | Kind::UnsupportedKey(actual, _) => {
            format!("unsupported {}", type_of(actual))
        }
        // Free-form messages and out-of-range numbers may carry the value itself.
        Kind::Message(_)
        | Kind::UnknownField(..)
        | Kind::ISizeOutOfRange(_)
        | Kind::USizeOutOfRange(_) => "invalid value".into(),
    }
}

/// The type of a deserialized value, without the value.
fn type_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "unit",
        Actual::Option => "an option",
        Actual::NewtypeStruct => "a new-type struct",
        Actual::Seq => "a sequence",
        Actual::Map => "a map",
        Actual::Enum
        | Actual::UnitVariant
        | Actual::NewtypeVariant
        | Actual::TupleVariant
        | Actual::StructVariant => "an enum variant",
        Actual::Other(_) => "a value",
    }
}

impl Settings {
    /// The `[[report_types]]` entry named `name`, if config declares one.
    pub fn report_type(&self, name: &str) -> Option<&ReportTypeSettings> {
        self.report_types.iter().find(|t| t.name == name)
    }

    /// Loads `path` (which must exist), applies `REPORTD_*` and `DATABASE_URL` from the
    /// process environment, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not touch the
    /// process's own.
    pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        Self::from_figment(Figment::from(Toml::file(path)), env)
    }

    /// Parses a TOML document (tests, embedded defaults) with the given environment.
    pub fn from_toml_str(toml: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)), env)
    }

    fn from_figment(file: Figment, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(file)
            .merge(env_provider(env));
        let settings: Settings = figment.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: ranges, formats and the rules between keys. The error
    /// names the first key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_database()?;
        self.validate_sqs()?;
        self.validate_jobs()?;
        self.validate_api()?;
        self.validate_storage()?;
        report_types::validate(&self.report_types)?;
        self.webhooks.validate()?;
        self.retention.validate()?;
        self.fairness.validate()?;
        if self.report.query_timeout_s > MAX_QUERY_TIMEOUT_S {
            return Err(ConfigError::Invalid {
                key: "report.query_timeout_s",
                reason: format!(
                    "{} is outside 0..={MAX_QUERY_TIMEOUT_S} seconds (0 = no limit)",
                    self.report.query_timeout_s
                ),
            });
        }
        if self.api.submit_rate_per_user > 1_000_000 {
            return Err(ConfigError::Invalid {
                key: "api.submit_rate_per_user",
                reason: format!(
                    "{} is outside 0..=1000000 per second (0 = no limit)",
                    self.api.submit_rate_per_user
                ),
            });
        }
        self.validate_simulate()
    }

    /// `[server]`.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.server.bind.parse::<SocketAddr>().is_err() {
            return invalid(
                "server.bind",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.bind
                ),
            );
        }
        if let Err(e) = parse_http_url(&self.server.public_url) {
            return invalid("server.public_url", e);
        }
        if self.server.roles.is_empty() {
            return invalid(
                "server.roles",
                "at least one of \"api\", \"worker\" is needed".into(),
            );
        }
        if !(1..=MAX_REQUEST_TIMEOUT_S).contains(&self.server.request_timeout_s) {
            return invalid(
                "server.request_timeout_s",
                format!(
                    "{} is outside 1..={MAX_REQUEST_TIMEOUT_S} seconds (0 would mean no limit)",
                    self.server.request_timeout_s
                ),
            );
        }
        if !(1..=MAX_REQUEST_TIMEOUT_S).contains(&self.server.header_timeout_s) {
            return invalid(
                "server.header_timeout_s",
                format!(
                    "{} is outside 1..={MAX_REQUEST_TIMEOUT_S} seconds (0 would mean no limit)",
                    self.server.header_timeout_s
                ),
            );
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.server.max_connections) {
            return invalid(
                "server.max_connections",
                format!(
                    "{} is outside 1..={MAX_CONNECTIONS}",
                    self.server.max_connections
                ),
            );
        }
        Ok(())
    }

    /// `[database]`.
    fn validate_database(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        match url::Url::parse(&self.database.url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
            Ok(u) => {
                return invalid(
                    "database.url",
                    format!(
                        "scheme `{}` is not postgres:// or postgresql://",
                        u.scheme()
                    ),
                )
            }
            Err(e) => return invalid("database.url", format!("not a URL ({e})")),
        }
        if let Some(reports_url) = &self.database.reports_url {
            let is_postgres = url::Url::parse(reports_url)
                .is_ok_and(|u| matches!(u.scheme(), "postgres" | "postgresql"));
            if !is_postgres {
                return invalid(
                    "database.reports_url",
                    "not a postgres:// or postgresql:// URL".into(),
                );
            }
        }
        check_pg_tls("database.url", &self.database.url)?;
        if let Some(reports_url) = &self.database.reports_url {
            check_pg_tls("database.reports_url", reports_url)?;
        }
        if self.database.pool_size == 0 {
            return invalid("database.pool_size", "must be at least 1".into());
        }
        if self.database.lock_timeout_ms == 0 || self.database.statement_timeout_ms == 0 {
            return invalid(
                "database.statement_timeout_ms",
                "statement_timeout_ms and lock_timeout_ms must be at least 1 ms (0 would mean no limit)".into(),
            );
        }
        if self.database.lock_timeout_ms > self.database.statement_timeout_ms {
            return invalid(
                "database.lock_timeout_ms",
                format!(
                    "{} is above database.statement_timeout_ms ({})",
                    self.database.lock_timeout_ms, self.database.statement_timeout_ms
                ),
            );
        }
        Ok(())
    }

    /// `sqs.queue_name`: SQS's character set and length (with room for `-dlq` and
    /// `.fifo`), and `.fifo` exactly when `sqs.fifo`.
    fn validate_queue_name(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        let name = &self.sqs.queue_name;
        let base = name.strip_suffix(".fifo").unwrap_or(name);
        if base.is_empty()
            || base.len() > 80 - ".fifo".len() - "-dlq".len()
            || !base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid(
                "sqs.queue_name",
                format!(
                    "`{name}` must be 1..=71 characters of A-Z, a-z, 0-9, - and _ (plus .fifo)"
                ),
            );
        }
        if self.sqs.fifo && !name.ends_with(".fifo") {
            return invalid(
                "sqs.queue_name",
                format!("a FIFO queue's name must end in `.fifo`, got `{name}`"),
            );
        }
        if !self.sqs.fifo && name.ends_with(".fifo") {
            return invalid(
                "sqs.queue_name",
                format!("`{name}` ends in `.fifo` but sqs.fifo is false"),
            );
        }
        Ok(())
    }

    /// `[sqs]`, and its receive count against `jobs.max_attempts`.
    fn validate_sqs(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if let Some(endpoint) = &self.sqs.endpoint_url {
            if let Err(e) = parse_http_url(endpoint) {
                return invalid("sqs.endpoint_url", e);
            }
        }
        if self.sqs.region.trim().is_empty() {
            return invalid("sqs.region", "must not be empty".into());
        }
        self.validate_queue_name()?;
        if !(MIN_VISIBILITY_TIMEOUT_S..=limits::MAX_VISIBILITY_TIMEOUT_S)
            .contains(&self.sqs.visibility_timeout_s)
        {
            return invalid(
                "sqs.visibility_timeout_s",
                format!(
                    "{} is outside {MIN_VISIBILITY_TIMEOUT_S}..={} seconds (heartbeats need a margin)",
                    self.sqs.visibility_timeout_s,
                    limits::MAX_VISIBILITY_TIMEOUT_S
                ),
            );
        }
        if self.sqs.wait_time_s > limits::MAX_WAIT_TIME_S {
            return invalid(
                "sqs.wait_time_s",
                format!(
                    "{} is outside 0..={} seconds",
                    self.sqs.wait_time_s,
                    limits::MAX_WAIT_TIME_S
                ),
            );
        }
        if !(1..=limits::MAX_RECEIVE_BATCH).contains(&self.sqs.receive_batch) {
            return invalid(
                "sqs.receive_batch",
                format!(
                    "{} is outside 1..={}",
                    self.sqs.receive_batch,
                    limits::MAX_RECEIVE_BATCH
                ),
            );
        }
        if !(limits::MIN_RETENTION_S..=limits::MAX_RETENTION_S)
            .contains(&self.sqs.message_retention_s)
        {
            return invalid(
                "sqs.message_retention_s",
                format!(
                    "{} is outside {}..={} seconds",
                    self.sqs.message_retention_s,
                    limits::MIN_RETENTION_S,
                    limits::MAX_RETENTION_S
                ),
            );
        }
        Ok(())
    }

    /// `[jobs]`, `[workers]`, `[retry]` and `[supervisor]`.
    fn validate_jobs(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !(1..=100).contains(&self.jobs.max_attempts) {
            return invalid(
                "jobs.max_attempts",
                format!("{} is outside 1..=100", self.jobs.max_attempts),
            );
        }
        for (key, value) in [
            ("jobs.max_runtime_s", self.jobs.max_runtime_s),
            ("jobs.expire_after_s", self.jobs.expire_after_s),
        ] {
            if value > MAX_JOB_SECONDS {
                return invalid(
                    key,
                    format!("{value} is outside 0..={MAX_JOB_SECONDS} seconds (0 = none)"),
                );
            }
        }
        let least = self.jobs.max_attempts + RECEIVE_HEADROOM;
        if !(least..=1000).contains(&self.sqs.max_receive_count) {
            return invalid(
                "sqs.max_receive_count",
                format!(
                    "{} is outside {least}..=1000: it must stay at least jobs.max_attempts + {RECEIVE_HEADROOM} ({}) so that SQS's redrive stays a safety net",
                    self.sqs.max_receive_count, self.jobs.max_attempts
                ),
            );
        }
        if self.workers.count == 0 || self.workers.count > 10_000 {
            return invalid(
                "workers.count",
                format!("{} is outside 1..=10000", self.workers.count),
            );
        }
        if self.retry.backoff_base_s == 0 || self.retry.backoff_max_s < self.retry.backoff_base_s {
            return invalid(
                "retry.backoff_max_s",
                "backoff_base_s must be ≥ 1 and backoff_max_s ≥ backoff_base_s".into(),
            );
        }
        if self.retry.backoff_max_s > limits::MAX_VISIBILITY_TIMEOUT_S {
            return invalid(
                "retry.backoff_max_s",
                "must be at most 43200 seconds".into(),
            );
        }
        if self.supervisor.window_s == 0 {
            return invalid("supervisor.window_s", "must be at least 1 second".into());
        }
        Ok(())
    }

    /// `[api]`.
    fn validate_api(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.api.max_range_days < 0 {
            return invalid("api.max_range_days", "must not be negative".into());
        }
        if self.api.max_body_bytes == 0 {
            return invalid("api.max_body_bytes", "must be at least 1".into());
        }
        if let Err(reason) = access::validate_tokens(&self.api.tokens) {
            return invalid("api.tokens", reason);
        }
        Ok(())
    }

    /// `[storage]`: the link lifetime, the encryption name, and for `s3` a bucket.
    fn validate_storage(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        let storage = &self.storage;
        if !(1..=MAX_PRESIGN_TTL_S).contains(&storage.presign_ttl_s) {
            return invalid(
                "storage.presign_ttl_s",
                format!(
                    "{} is outside 1..={MAX_PRESIGN_TTL_S} seconds (7 days, the longest a presigned URL may live)",
                    storage.presign_ttl_s
                ),
            );
        }
        if let Some(sse) = &storage.server_side_encryption {
            if !SERVER_SIDE_ENCRYPTIONS.contains(&sse.as_str()) {
                return invalid(
                    "storage.server_side_encryption",
                    format!("`{sse}` is not one of {SERVER_SIDE_ENCRYPTIONS:?}"),
                );
            }
        }
        if let Some(endpoint) = &storage.endpoint_url {
            if let Err(e) = parse_http_url(endpoint) {
                return invalid("storage.endpoint_url", e);
            }
        }
        if storage.region.trim().is_empty() {
            return invalid("storage.region", "must not be empty".into());
        }
        if storage.prefix.starts_with('/') {
            return invalid(
                "storage.prefix",
                format!("`{}` must not start with `/`", storage.prefix),
            );
        }
        match (&storage.bucket, storage.backend) {
            (None, StorageBackend::S3) => {
                invalid("storage.bucket", "the s3 backend needs a bucket".into())
            }
            (Some(bucket), _) if !is_bucket_name(bucket) => invalid(
                "storage.bucket",
                format!("`{bucket}` is not a bucket name (3–63 of a-z, 0-9, `.` and `-`, starting and ending with a letter or digit)"),
            ),
            _ => Ok(()),
        }
    }

    /// `[simulate]`.
    fn validate_simulate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if let Some([min, max]) = self.simulate.duration_ms {
            if min > max {
                return invalid(
                    "simulate.duration_ms",
                    format!("[{min}, {max}]: min is above max"),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.simulate.failure_rate) {
            return invalid(
                "simulate.failure_rate",
                format!("{} is outside 0.0..=1.0", self.simulate.failure_rate),
            );
        }
        Ok(())
    }

    /// Whether this process runs the given role.
    pub fn has_role(&self, role: Role) -> bool {
        self.server.roles.contains(&role)
    }

    /// The resolved configuration as TOML with secrets redacted (`config check`).
    pub fn to_redacted_toml(&self) -> String {
        let shown = self.redacted();
        match toml::to_string(&shown) {
            Ok(text) => text,
            // Only a number above i64::MAX (TOML's integer range, reachable from the
            // environment) fails; show everything as comments rather than nothing. The
            // Debug output is redacted too.
            Err(e) => {
                let mut out = format!("# could not render the configuration as TOML: {e}\n");
                for line in format!("{shown:#?}").lines() {
                    out.push_str(&format!("# {line}\n"));
                }
                out
            }
        }
    }

    /// A copy with the database URL redacted and every API token and report type `env`
    /// value replaced.
    fn redacted(&self) -> Settings {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.database.reports_url = shown.database.reports_url.as_deref().map(redact_url);
        shown.api.tokens = shown.api.tokens.iter().map(ApiToken::redacted).collect();
        // A command's environment is where its credentials go.
        for declared in &mut shown.report_types {
            for value in declared.env.values_mut() {
                *value = "<redacted>".to_string();
            }
        }
        let webhooks = &mut shown.webhooks;
        webhooks.secret = webhooks.secret.as_ref().map(|_| "<redacted>".to_string());
        webhooks.secrets = vec!["<redacted>".to_string(); webhooks.secrets.len()];
        shown
    }
}

/// A database URL's TLS settings (`sslmode`, `sslrootcert`): a known mode, and a CA file
/// that can be read. The reason never repeats the URL, which may hold a password.
fn check_pg_tls(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let target = parse_pg_url(url).map_err(|e| ConfigError::Invalid {
        key,
        reason: e.to_string(),
    })?;
    if let RootCerts::File(path) = &target.roots {
        if let Err(e) = std::fs::File::open(path) {
            return Err(ConfigError::Invalid {
                key,
                reason: format!("sslrootcert `{}` cannot be read: {e}", path.display()),
            });
        }
    }
    Ok(())
}

/// What [`redact_url`] puts in place of a secret.
const REDACTED: &str = "***";

/// A query parameter is a secret when its name contains one of these (case-insensitive),
/// so `sslpassword`, `api_key` and `access_token` are caught as well as `password`.
const SECRET_PARAMS: &[&str] = &["password", "passwd", "pass", "secret", "token", "key"];

/// Replaces the password of a URL's userinfo, and the value of every query parameter
/// named like a secret (see `SECRET_PARAMS`), with `***`. An unparsable URL is
/// replaced whole, since there is no telling where its secret is.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return "<unparsable url>".to_string();
    };
    let mut changed = false;
    if parsed.password().is_some() {
        changed |= parsed.set_password(Some(REDACTED)).is_ok();
    }
    if let Some(query) = parsed.query() {
        let redacted = redact_query(query);
        if redacted != query {
            parsed.set_query(Some(&redacted));
            changed = true;
        }
    }
    // An untouched URL is returned as written, not as the parser normalises it.
    if changed {
        parsed.to_string()
    } else {
        raw.to_string()
    }
}

/// A raw (still percent-encoded) query string with secret values replaced; every other
/// parameter is kept byte for byte.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a raw query parameter name names a secret (decoded first, so `pass%77ord`
/// counts).
fn is_secret_param(raw_name: &str) -> bool {
    let name: String = url::form_urlencoded::parse(raw_name.as_bytes())
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    SECRET_PARAMS.iter().any(|secret| name.contains(secret))
}

/// S3's bucket naming rules (the ones a typo breaks): 3–63 characters of lowercase
/// letters, digits, `.` and `-`, starting and ending with a letter or digit.
fn is_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

fn parse_http_url(raw: &str) -> Result<url::Url, String> {
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        Ok(u) => Err(format!(
            "`{raw}` must be an http(s) URL with a host (scheme `{}`)",
            u.scheme()
        )),
        Err(e) => Err(format!("`{raw}` is not a URL ({e})")),
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::Value;
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(figment::value::Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                // A scalar where a section is expected: replace it so the extract reports
                // the key with a type error rather than dropping the override.
                let mut inner = figment::value::Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// Environment values are strings; interpret them like figment's `Env` does (numbers,
/// booleans, `[a, b]` arrays), so `REPORTD_WORKERS__COUNT=4` is a number.
fn parse_env_value(raw: &str) -> figment::value::Value {
    raw.parse::<figment::value::Value>()
        .unwrap_or_else(|_| figment::value::Value::from(raw.to_string()))
}

/// `REPORTD_<SECTION>__<KEY>` and `DATABASE_URL` as a figment provider. figment's own `Env`
/// always reads the process environment; building the provider from a captured map keeps
/// tests hermetic. `REPORTD_DATABASE__URL` wins over `DATABASE_URL`.
fn env_provider(env: &HashMap<String, String>) -> EnvOverrides {
    let mut data = figment::value::Dict::new();
    if let Some(url) = env.get("DATABASE_URL") {
        insert_path(
            &mut data,
            &["database".into(), "url".into()],
            figment::value::Value::from(url.clone()),
        );
    }
    // Only `SECTION__KEY` names: other REPORTD_* variables (e.g. the dev scripts'
    // REPORTD_CACHE_DIR) are not configuration.
    let mut keys: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("REPORTD_") && k.contains("__"))
        .collect();
    keys.sort();
    for key in keys {
        let rest = &key["REPORTD_".len()..];
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        insert_path(&mut data, &path, parse_env_value(&env[key]));
    }
    EnvOverrides(data)
}

/// The environment's overrides, named so in error messages.
struct EnvOverrides(figment::value::Dict);

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable REPORTD_<SECTION>__<KEY> / DATABASE_URL")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_tls_settings_are_checked_and_the_error_names_the_key_not_the_password() {
        let mut settings = Settings::default();
        settings.database.url = "postgres://app:hunter2@db/r?sslmode=verify-fool".into();
        let message = settings
            .validate()
            .expect_err("unknown sslmode")
            .to_string();
        assert!(message.contains("database.url"), "{message}");
        assert!(message.contains("verify-fool"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        settings.database.url =
            "postgres://db/r?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".into();
        let message = settings.validate().expect_err("missing CA").to_string();
        assert!(message.contains("database.url") && message.contains("/nonexistent/ca.pem"));
        settings.database.url = "postgres://db/r?sslmode=require".into();
        settings.database.reports_url = Some("postgres://db/r?sslmode=prefer".into());
        let message = settings.validate().expect_err("prefer").to_string();
        assert!(message.contains("database.reports_url"), "{message}");
        settings.database.reports_url = None;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn redact_url_hides_the_userinfo_password() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/reports"),
            "postgres://app:***@db:5432/reports"
        );
    }

    #[test]
    fn redact_url_hides_secret_query_parameters_whatever_their_case() {
        let shown = redact_url(
            "postgres://app@db/reports?sslmode=require&password=p1&PassWord=p2&passwd=p3\
             &pass=p4&client_secret=p5&access_token=p6&api_KEY=p7&application_name=reportd",
        );
        for secret in ["p1", "p2", "p3", "p4", "p5", "p6", "p7"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert_eq!(
            shown,
            "postgres://app@db/reports?sslmode=require&password=***&PassWord=***&passwd=***\
             &pass=***&client_secret=***&access_token=***&api_KEY=***&application_name=reportd"
        );
    }

    #[test]
    fn redact_url_decodes_a_parameter_name_before_judging_it() {
        assert_eq!(
            redact_url("postgres://db/r?pass%77ord=x%20y"),
            "postgres://db/r?pass%77ord=***"
        );
    }

    #[test]
    fn redact_url_hides_both_userinfo_and_query_secrets_at_once() {
        assert_eq!(
            redact_url("postgres://u:pw@h/db?password=qpw"),
            "postgres://u:***@h/db?password=***"
        );
    }

    #[test]
    fn redact_url_returns_a_url_without_secrets_exactly_as_written() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/reportd",
            "postgres://u@h/db?sslmode=disable&application_name=a%20b",
            "postgres://u@h/db?flag",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn redact_url_replaces_an_unparsable_url_whole() {
        assert_eq!(redact_url("not a url with pw"), "<unparsable url>");
    }

    #[test]
    fn secret_keys_cover_their_list_elements_but_not_lookalikes() {
        assert!(is_secret_key("api.tokens"));
        assert!(is_secret_key("api.tokens.3"));
        assert!(is_secret_key("database.url"));
        assert!(!is_secret_key("api.tokens_file"));
        assert!(!is_secret_key("database.pool_size"));
        assert!(!is_secret_key("api"));
    }

    #[test]
    fn a_type_error_on_a_secret_key_names_the_types_but_not_the_value() {
        use figment::error::{Actual, Kind};
        let kind = Kind::InvalidType(Actual::Str("s3cret".into()), "a sequence".into());
        assert_eq!(
            describe_without_value(&kind),
            "invalid type: found a string, expected a sequence"
        );
        let kind = Kind::InvalidValue(Actual::Unsigned(4242), "a string".into());
        assert!(!describe_without_value(&kind).contains("4242"));
        let kind = Kind::Message("bad value s3cret".into());
        assert!(!describe_without_value(&kind).contains("s3cret"));
    }

    #[test]
    fn figment_errors_on_secret_keys_leave_the_value_out() {
        let env: HashMap<String, String> =
            [("REPORTD_API__TOKENS".to_string(), "s3cret".to_string())].into();
        let message = Settings::from_toml_str("", &env)
            .expect_err("a string is not a list")
            .to_string();
        assert!(message.contains("api.tokens"), "{message}");
        assert!(message.contains("expected a sequence"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn figment_errors_on_other_keys_still_quote_the_value() {
        let env: HashMap<String, String> =
            [("REPORTD_WORKERS__COUNT".to_string(), "lots".to_string())].into();
        let message = Settings::from_toml_str("", &env)
            .expect_err("not a number")
            .to_string();
        assert!(message.contains("\"lots\""), "{message}");
    }

    #[test]
    fn request_and_header_timeouts_and_max_connections_must_be_positive_and_bounded() {
        let mut settings = Settings::default();
        for (timeout, ok) in [(0, false), (1, true), (MAX_REQUEST_TIMEOUT_S, true)] {
            settings.server.request_timeout_s = timeout;
            assert_eq!(
                settings.validate().is_ok(),
                ok,
                "request_timeout_s {timeout}"
            );
        }
        settings.server.request_timeout_s = MAX_REQUEST_TIMEOUT_S + 1;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "server.request_timeout_s",
                ..
            })
        ));
        settings.server.request_timeout_s = 30;
        settings.server.header_timeout_s = 0;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "server.header_timeout_s",
                ..
            })
        ));
        settings.server.header_timeout_s = 5;
        for (connections, ok) in [(0, false), (1, true), (MAX_CONNECTIONS, true)] {
            settings.server.max_connections = connections;
            assert_eq!(
                settings.validate().is_ok(),
                ok,
                "max_connections {connections}"
            );
        }
        settings.server.max_connections = MAX_CONNECTIONS + 1;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "server.max_connections",
                ..
            })
        ));
    }

    #[test]
    fn redacted_toml_falls_back_to_redacted_comments_when_toml_cannot_hold_a_value() {
        let mut settings = Settings::default();
        // TOML integers stop at i64::MAX; the environment can still set a larger u64.
        settings.shutdown.grace_s = u64::MAX;
        settings.database.url = "postgres://u:hunter2@h/db".into();
        let shown = settings.to_redacted_toml();
        assert!(shown.starts_with("# could not render"), "{shown}");
        assert!(shown.lines().all(|l| l.starts_with('#')), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn storage_defaults_to_local_and_s3_needs_a_bucket() {
        let env = HashMap::new();
        let settings = Settings::from_toml_str("", &env).expect("defaults are valid");
        assert_eq!(settings.storage.backend, StorageBackend::Local);
        assert_eq!(settings.storage.presign_ttl_s, 3600);
        let error = Settings::from_toml_str("[storage]\nbackend = \"s3\"\n", &env)
            .expect_err("s3 without a bucket");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "storage.bucket",
                    ..
                }
            ),
            "{error}"
        );
        let ok = "[storage]\nbackend = \"s3\"\nbucket = \"my-reports\"\n";
        assert!(Settings::from_toml_str(ok, &env).is_ok());
    }

    #[test]
    fn presign_ttl_is_between_one_second_and_seven_days() {
        let env = HashMap::new();
        let with_ttl = |ttl: u64| {
            Settings::from_toml_str(&format!("[storage]\npresign_ttl_s = {ttl}\n"), &env)
        };
        assert!(with_ttl(MAX_PRESIGN_TTL_S).is_ok());
        assert!(with_ttl(1).is_ok());
        for bad in [0, MAX_PRESIGN_TTL_S + 1] {
            let error = with_ttl(bad).expect_err("out of range");
            assert!(
                matches!(
                    error,
                    ConfigError::Invalid {
                        key: "storage.presign_ttl_s",
                        ..
                    }
                ),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn bucket_names_encryption_and_prefix_follow_s3s_rules() {
        for good in ["abc", "my-reports.2026", "a1-b"] {
            assert!(is_bucket_name(good), "{good}");
        }
        for bad in ["ab", "My-Reports", "-abc", "abc-", "a_b", &"a".repeat(64)] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
        let env = HashMap::new();
        let key_of = |toml: &str| match Settings::from_toml_str(toml, &env) {
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            _ => None,
        };
        assert_eq!(
            key_of("[storage]\nserver_side_encryption = \"aes\"\n"),
            Some("storage.server_side_encryption")
        );
        assert_eq!(
            key_of("[storage]\nserver_side_encryption = \"aws:kms\"\n"),
            None
        );
        assert_eq!(
            key_of("[storage]\nprefix = \"/abs\"\n"),
            Some("storage.prefix")
        );
        assert_eq!(
            key_of("[storage]\nbucket = \"Bad_Name\"\n"),
            Some("storage.bucket")
        );
    }
}
