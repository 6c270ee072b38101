//! `spawn_app()`: a whole reportd process (API, actors, HTTP on port 0) inside the test,
//! against a fresh database and its own queues; and `spawn_process()`: the real binary
//! in a child process, for crash and signal tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reportd::config::{Role, Settings, SimulateSettings, StorageSettings, WebhookSettings};
use reportd::queue::SqsQueue;
use reportd::report::ReportGenerator;
use reportd::startup::Application;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{fresh_database, require_sqs, sqs_settings, unique_queue_name};

/// How a test wants its process.
#[derive(Clone)]
pub(crate) struct AppOptions {
    pub roles: Vec<Role>,
    pub workers: usize,
    pub fifo: bool,
    pub visibility_timeout_s: u32,
    pub max_receive_count: u32,
    /// `jobs.max_attempts`.
    pub max_attempts: u32,
    pub simulate: SimulateSettings,
    pub tokens: Vec<reportd::config::ApiToken>,
    pub allow_anonymous_admin: bool,
    pub grace_s: u64,
    pub generator: Option<Arc<dyn ReportGenerator>>,
    /// Share a database with another process (None: a fresh one).
    pub database_url: Option<String>,
    /// Share queues with another process (None: new unique names).
    pub queue_name: Option<String>,
    /// Retry backoff base; tests use 1 s to stay quick.
    pub backoff_base_s: u32,
    pub max_range_days: i64,
    pub max_body_bytes: usize,
    /// SQS endpoint (e.g. a cuttable proxy); None: LocalStack itself.
    pub sqs_endpoint: Option<String>,
    /// `[storage]`; None: the default (local, in the test's temporary directory).
    pub storage: Option<StorageSettings>,
    /// `[[report_types]]`.
    pub report_types: Vec<reportd::config::ReportTypeSettings>,
    /// `[webhooks]`; None: the default (off).
    pub webhooks: Option<WebhookSettings>,
    /// Any other change to the settings, made last (before validation).
    pub adjust: Option<fn(&mut Settings)>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            roles: vec![Role::Api, Role::Worker],
            workers: 4,
            fifo: false,
            visibility_timeout_s: 30,
            max_receive_count: 10,
            max_attempts: 3,
            simulate: SimulateSettings::default(),
            tokens: Vec::new(),
            allow_anonymous_admin: false,
            grace_s: 5,
            generator: None,
            database_url: None,
            queue_name: None,
            backoff_base_s: 1,
            max_range_days: 366,
            max_body_bytes: 256 * 1024,
            sqs_endpoint: None,
            storage: None,
            report_types: Vec::new(),
            webhooks: None,
            adjust: None,
        }
    }
}

/// A running process and what a test needs to talk to it.
pub(crate) struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub queue: SqsQueue,
    pub http: reqwest::Client,
    pub output_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _tmp: Arc<tempfile::TempDir>,
}

/// Settings for a test process: port 0, its database and queues, a 1 s long poll.
pub(crate) async fn test_settings(options: &AppOptions) -> (Settings, Arc<tempfile::TempDir>) {
    require_sqs().await;
    let database_url = match &options.database_url {
        Some(url) => url.clone(),
        None => fresh_database().await,
    };
    let queue_name = options
        .queue_name
        .clone()
        .unwrap_or_else(|| unique_queue_name("app"));
    let tmp = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.roles = options.roles.clone();
    // Port 0 is only known after binding; report URLs use this fixed public address.
    settings.server.public_url = "http://reportd.test:8080".into();
    settings.database.url = database_url;
    settings.database.pool_size = 8;
    settings.sqs = sqs_settings(&queue_name, options.fifo);
    if let Some(endpoint) = &options.sqs_endpoint {
        settings.sqs.endpoint_url = Some(endpoint.clone());
    }
    settings.sqs.visibility_timeout_s = options.visibility_timeout_s;
    settings.sqs.max_receive_count = options.max_receive_count;
    settings.jobs.max_attempts = options.max_attempts;
    settings.workers.count = options.workers;
    settings.shutdown.grace_s = options.grace_s;
    settings.simulate = options.simulate.clone();
    settings.api.tokens = options.tokens.clone();
    settings.ui.allow_anonymous_admin = options.allow_anonymous_admin;
    settings.api.max_range_days = options.max_range_days;
    settings.api.max_body_bytes = options.max_body_bytes;
    settings.retry.backoff_base_s = options.backoff_base_s;
    settings.report.output_dir = tmp.path().join("reports");
    if let Some(storage) = &options.storage {
        settings.storage = storage.clone();
    }
    settings.report_types = options.report_types.clone();
    if let Some(webhooks) = &options.webhooks {
        settings.webhooks = webhooks.clone();
    }
    if let Some(adjust) = options.adjust {
        adjust(&mut settings);
    }
    settings.validate().expect("test settings are valid");
    (settings, tmp)
}

/// Builds and starts a process inside this test's actix System.
pub(crate) async fn spawn_app(options: AppOptions) -> TestApp {
    // Logs only when asked for (RUST_LOG=reportd=debug cargo test -- --nocapture).
    if std::env::var_os("RUST_LOG").is_some() {
        reportd::telemetry::init(&reportd::config::LogSettings::default());
    }
    let (settings, tmp) = test_settings(&options).await;
    let app = Application::build_with_generator(settings.clone(), options.generator.clone())
        .await
        .unwrap_or_else(|e| panic!("reportd did not start: {e}"));
    let port = app.port();
    let client = reportd::queue::build_client(&settings.sqs).await;
    let queue = SqsQueue::connect(client, &settings.sqs)
        .await
        .expect("queues exist");
    let (stop, stopped) = oneshot::channel::<()>();
    let done = actix_web::rt::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        output_dir: settings.report.output_dir.clone(),
        settings,
        queue,
        http: reqwest::Client::new(),
        stop: Some(stop),
        done: Some(done),
        _tmp: tmp,
    }
}

impl TestApp {
    /// Graceful shutdown, as on SIGTERM; waits for it to finish.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let result = tokio::time::timeout(Duration::from_secs(60), done)
                .await
                .expect("shutdown finished within 60 s");
            result
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `POST /reports` with a JSON body; returns status and JSON body.
    pub(crate) async fn submit(&self, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/reports"))
            .json(body)
            .send()
            .await
            .expect("POST /reports");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Submits a valid request for `user_id` and returns the new report's id.
    pub(crate) async fn submit_ok(&self, user_id: i64) -> uuid::Uuid {
        let (status, body) = self
            .submit(&serde_json::json!({"userId": user_id, "startDate": "2024-01-01", "endDate": "2024-01-31"}))
            .await;
        assert_eq!(status, 202, "submit answered {status}: {body}");
        body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("an id")
    }

    /// `GET /reports/{id}` as JSON.
    pub(crate) async fn report(&self, id: uuid::Uuid) -> Value {
        self.get_json(&format!("/reports/{id}")).await.1
    }

    pub(crate) async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until report `id` has `status`, returning the record; panics with the last
    /// record seen after `timeout`.
    pub(crate) async fn wait_for_status(
        &self,
        id: uuid::Uuid,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.report(id).await;
            if report["status"] == status {
                return report;
            }
            if Instant::now() > deadline {
                panic!(
                    "report {id} did not reach {status} within {timeout:?}; last seen: {report}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after `timeout`.
pub(crate) async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real `reportd` binary, serving with a config file written for it.
pub(crate) struct ChildProcess {
    pub child: Child,
    pub address: String,
    pub log: PathBuf,
}

impl ChildProcess {
    /// Sends SIGTERM (graceful shutdown) and waits for the exit status.
    pub(crate) fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "reportd did not exit within {timeout:?} of SIGTERM; log: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, ...) without waiting.
    pub(crate) fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits for the exit status; panics after `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "reportd did not exit within {timeout:?}; log: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: no chance to clean up.
    pub(crate) fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `reportd serve` with `settings` (its bind must name a free port) and waits
/// until `/health/live` answers.
pub(crate) async fn spawn_process(
    settings: &Settings,
    dir: &std::path::Path,
    name: &str,
) -> ChildProcess {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        settings.to_redacted_toml().replace("<redacted>", ""),
    )
    .expect("write config");
    // to_redacted_toml hides only secrets, and the test settings hold none.
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_reportd"))
        .args(["--config", config.to_str().unwrap_or_default(), "serve"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info,reportd=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start reportd");
    let process = ChildProcess {
        child,
        address: format!("http://{}", settings.server.bind),
        log,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("{}/health/live", process.address))
            .send()
            .await
        {
            if r.status().is_success() {
                return process;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "reportd {name} did not answer /health/live within 60 s; log: {}",
                process.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback port for a child process's `server.bind`.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
