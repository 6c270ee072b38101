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
    /// Demo/load-test knobs that reproduce the original article's slow, flaky jobs.
    #[serde(default)]
    pub simulate: SimulateSettings,
    /// When restarting actors counts as a restart storm.
    #[serde(default)]
    pub supervisor: SupervisorSettings,
}

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP server listens on; port 0 picks a free port (tests).
    pub bind: String,
    /// Base URL clients reach this service at; used to build `report_url` and links.
    pub public_url: String,
    /// Which halves of the daemon run in this process.
    pub roles: Vec<Role>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            roles: vec![Role::Api, Role::Worker],
        }
    }
}

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
            .finish()
    }
}

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
            message_retention_s: 1_209_600,
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

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Longest accepted date range of a report request, in days.
    pub max_range_days: i64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Bearer tokens; when non-empty every endpoint but health, metrics and the OpenAPI
    /// document requires one. Never printed.
    pub tokens: Vec<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_range_days: 366,
            max_body_bytes: 256 * 1024,
            tokens: Vec::new(),
        }
    }
}

impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("max_range_days", &self.max_range_days)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .finish()
    }
}

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Failed attempts (errors, panics, lost workers) after which a job ends `failed` and
    /// reportd copies its message to the dead-letter queue. Interruptions (a shutdown
    /// release, a duplicate delivery, the database or the host being unavailable) are
    /// not failures and never count.
    pub max_attempts: u32,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

/// Shortest `sqs.visibility_timeout_s`: heartbeats go every third of it, and a row is
/// stale after several missed beats, so below this one slow call loses a live job.
pub const MIN_VISIBILITY_TIMEOUT_S: u32 = 6;

/// Receives that `sqs.max_receive_count` must leave above `jobs.max_attempts`: SQS's own
/// redrive is only a safety net for messages reportd cannot handle, never the rule that
/// ends a job.
pub const RECEIVE_HEADROOM: u32 = 5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// Directory the CSV files are written to (created if missing).
    pub output_dir: PathBuf,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("./reports"),
        }
    }
}

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
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
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
        (kind, Some(key)) => format!("invalid value for `{key}`: {kind}{source}"),
        (kind, None) => format!("{kind}{source}"),
    }
}

impl Settings {
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

    /// Checks the rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if self.database.pool_size == 0 {
            return invalid("database.pool_size", "must be at least 1".into());
        }
        if let Some(endpoint) = &self.sqs.endpoint_url {
            if let Err(e) = parse_http_url(endpoint) {
                return invalid("sqs.endpoint_url", e);
            }
        }
        if self.sqs.region.trim().is_empty() {
            return invalid("sqs.region", "must not be empty".into());
        }
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
        if !(MIN_VISIBILITY_TIMEOUT_S..=43_200).contains(&self.sqs.visibility_timeout_s) {
            return invalid(
                "sqs.visibility_timeout_s",
                format!(
                    "{} is outside {MIN_VISIBILITY_TIMEOUT_S}..=43200 seconds (heartbeats need a margin)",
                    self.sqs.visibility_timeout_s
                ),
            );
        }
        if self.sqs.wait_time_s > 20 {
            return invalid(
                "sqs.wait_time_s",
                format!("{} is outside 0..=20 seconds", self.sqs.wait_time_s),
            );
        }
        if !(1..=100).contains(&self.jobs.max_attempts) {
            return invalid(
                "jobs.max_attempts",
                format!("{} is outside 1..=100", self.jobs.max_attempts),
            );
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
        if !(1..=10).contains(&self.sqs.receive_batch) {
            return invalid(
                "sqs.receive_batch",
                format!("{} is outside 1..=10", self.sqs.receive_batch),
            );
        }
        if !(60..=1_209_600).contains(&self.sqs.message_retention_s) {
            return invalid(
                "sqs.message_retention_s",
                format!(
                    "{} is outside 60..=1209600 seconds",
                    self.sqs.message_retention_s
                ),
            );
        }
        if self.workers.count == 0 || self.workers.count > 10_000 {
            return invalid(
                "workers.count",
                format!("{} is outside 1..=10000", self.workers.count),
            );
        }
        if self.api.max_range_days < 0 {
            return invalid("api.max_range_days", "must not be negative".into());
        }
        if self.api.max_body_bytes == 0 {
            return invalid("api.max_body_bytes", "must be at least 1".into());
        }
        if self.api.tokens.iter().any(|t| t.trim().is_empty()) {
            return invalid("api.tokens", "a token must not be empty".into());
        }
        if self.retry.backoff_base_s == 0 || self.retry.backoff_max_s < self.retry.backoff_base_s {
            return invalid(
                "retry.backoff_max_s",
                "backoff_base_s must be ≥ 1 and backoff_max_s ≥ backoff_base_s".into(),
            );
        }
        if self.retry.backoff_max_s > 43_200 {
            return invalid(
                "retry.backoff_max_s",
                "must be at most 43200 seconds".into(),
            );
        }
        if self.supervisor.window_s == 0 {
            return invalid("supervisor.window_s", "must be at least 1 second".into());
        }
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
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.api.tokens = shown
            .api
            .tokens
            .iter()
            .map(|_| "<redacted>".to_string())
            .collect();
        // Serializing plain structs of strings, numbers and lists cannot fail; keep a
        // readable fallback rather than a panic all the same.
        match toml_string(&shown) {
            Ok(s) => s,
            Err(e) => format!("# could not render the configuration: {e}\n{shown:#?}"),
        }
    }
}

fn toml_string(settings: &Settings) -> Result<String, String> {
    let value = figment::value::Value::serialize(settings).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let Some(sections) = value.as_dict() else {
        return Err("not a table".into());
    };
    for (section, body) in sections {
        out.push_str(&format!("[{section}]\n"));
        if let Some(fields) = body.as_dict() {
            for (key, value) in fields {
                // An unset optional key (e.g. no `sqs.endpoint_url`) is left out.
                if matches!(value, figment::value::Value::Empty(..)) {
                    continue;
                }
                out.push_str(&format!("{key} = {}\n", render_value(value)));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

fn render_value(value: &figment::value::Value) -> String {
    use figment::value::Value;
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Array(_, items) => {
            let inner: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Dict(_, dict) => {
            let inner: Vec<String> = dict
                .iter()
                .map(|(k, v)| format!("{k} = {}", render_value(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => {
            if let Some(u) = n.to_u128() {
                u.to_string()
            } else if let Some(i) = n.to_i128() {
                i.to_string()
            } else {
                n.to_f64().map(|f| format!("{f:?}")).unwrap_or_default()
            }
        }
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Empty(_, _) => "\"\"".into(),
    }
}

/// Replaces the password of a URL with `***`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => raw.to_string(),
        Err(_) => "<unparsable url>".to_string(),
    }
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
