//! Wires one reportd process together and runs it until its shutdown future resolves.
//!
//! Shutdown is passed in (`run_until_stopped(shutdown)`), so tests drive it the same
//! way a signal does: stop receiving, let the in-flight long poll return (its messages
//! are released), give running jobs `shutdown.grace_s`, release what is still running,
//! then stop the HTTP server. The StatusActor has flushed by then, because every worker
//! waits for its writes to commit.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{middleware, web, App, HttpServer};
use tokio::sync::watch;

use crate::actors::fate;
use crate::actors::poller::{GetPollerStats, StopPolling};
use crate::actors::poller::{PollerActor, Screening};
use crate::actors::registry::{ActorRegistry, StormLimit};
use crate::actors::run_estimate::RunEstimate;
use crate::actors::status::{StatusActor, StatusProbe};
use crate::actors::worker::{ReportWorker, WorkerDeps};
use crate::api::all_events::AllReportsFeed;
use crate::api::events::ReportFeed;
use crate::api::{self, AppState, QueueDepths};
use crate::config::{Role, Settings};
use crate::db::{self, DbError, DbGate, DbPool};
use crate::metrics::Metrics;
use crate::outbox::{Dispatcher, Timings};
use crate::queue::provision::{ensure_queues, EnsureReport};
use crate::queue::{self, QueueError, SqsBatchers, SqsQueue};
use crate::report::types::TypedGenerators;
use crate::report::{CsvReportGenerator, ReportGenerator, ReportTypeError, SimulatedGenerator};
use crate::storage::{ReportStore, StoreError};

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Creating or migrating the database, or building a connection pool, failed.
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// The queues could not be provisioned (`sqs.create_queues`) or found.
    #[error("SQS: {0}")]
    Queue(#[from] QueueError),
    /// The report store is unusable: the bucket is missing (and `storage.create_bucket`
    /// is off) or unreachable, or the local directory cannot be created.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    /// The webhook engine could not start (a malformed secret, no TLS set-up).
    #[error("webhooks: {0}")]
    Webhooks(String),
    /// The HTTP listener could not be opened.
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        /// The address tried (`server.bind`).
        bind: String,
        /// The operating system's reason (address in use, permission denied, …).
        #[source]
        source: std::io::Error,
    },
    /// A declared report type's query does not prepare (a configuration error: exit 2).
    #[error(transparent)]
    ReportType(#[from] ReportTypeError),
}

/// Creates the database if missing and applies migrations, as the config asks.
pub(crate) async fn prepare_database(settings: &Settings) -> Result<Vec<String>, DbError> {
    if settings.database.create_if_missing
        && db::create_database_if_missing(&settings.database.url).await?
    {
        tracing::info!(database = %crate::config::redact_url(&settings.database.url), "created the database");
    }
    if settings.database.migrate_on_start {
        let applied = db::run_migrations(&settings.database.url).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied migrations");
        }
        return Ok(applied);
    }
    Ok(Vec::new())
}

/// A built, listening process.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    settings: Arc<Settings>,
    pool: DbPool,
    status: Addr<StatusActor>,
    poller: Option<Addr<PollerActor>>,
    /// Set to true when the grace period ends: workers release their jobs.
    abort: watch::Sender<bool>,
    queues: Option<EnsureReport>,
    /// The webhook engine, when this process runs one: its stop signal, and its task,
    /// awaited at shutdown while its tries in flight finish.
    webhooks: Option<StoppableTask>,
    /// The fleet heartbeat's stop signal and task (it deletes this process's row).
    fleet: StoppableTask,
}

impl Application {
    /// Builds everything with the built-in generator (wrapped by `[simulate]` if set).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_generator(settings, None).await
    }

    /// Builds everything; `generator` replaces the built-in CSV generator.
    pub async fn build_with_generator(
        settings: Settings,
        generator: Option<Arc<dyn ReportGenerator>>,
    ) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        prepare_database(&settings).await?;
        let checked =
            crate::report::check_queries(settings.database.reports_url(), &settings.report_types)
                .await?;
        if checked > 0 {
            tracing::info!(checked, "report type queries prepare");
        }
        let pool = db::build_pool(&settings.database.url, settings.database.pool_size)?;
        let metrics = Metrics::new();
        let (sqs, queues) = connect_queues(&settings, &metrics).await?;
        let store = open_store(&settings).await?;
        let registry = ActorRegistry::new(storm_limit(&settings), metrics.clone());
        let batchers = SqsBatchers::spawn(&sqs);
        let (depths, db_hygiene) = start_watches(&sqs, &pool, &metrics);
        let (status, status_probe) = start_writer(&settings, &metrics, &registry)?;
        let dispatcher = start_dispatcher(&settings, &batchers, &status, &sqs, &pool);
        let (feed, all_feed) = start_feeds(&settings, &pool, &store);
        let (abort, abort_rx) = watch::channel(false);
        let webhooks = start_worker_chores(&settings, &pool, &metrics, &store)?;
        let (poller, workers) = if settings.has_role(Role::Worker) {
            let parts = ConsumerParts {
                settings: &settings,
                pool: &pool,
                sqs: &sqs,
                batchers: &batchers,
                status: &status,
                metrics: &metrics,
                registry: &registry,
                store: &store,
            };
            let (poller, workers) = start_consumer(parts, generator, abort_rx);
            (Some(poller), workers)
        } else {
            (None, Vec::new())
        };
        let (process_id, fleet) = start_fleet(&settings, &pool);
        let state = web::Data::new(AppState {
            process_id,
            settings: settings.clone(),
            pool: pool.clone(),
            status: status.clone(),
            dispatcher,
            poller: poller.clone(),
            workers,
            queue: sqs,
            metrics,
            registry,
            depths,
            db_hygiene,
            submit_limiter: Default::default(),
            status_probe,
            dlq: Default::default(),
            feed,
            all_feed,
            store,
        });
        let (server, port) = start_http(&settings, state)?;
        tracing::info!(port, roles = ?settings.server.roles, "reportd listening");
        Ok(Self {
            port,
            server,
            settings,
            pool,
            status,
            poller,
            abort,
            queues,
            webhooks,
            fleet,
        })
    }

    /// The port the HTTP server listens on (useful with `bind = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pool (tests).
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// The StatusActor (tests drive it through its messages).
    pub fn status(&self) -> &Addr<StatusActor> {
        &self.status
    }

    /// What queue provisioning found at start, when it ran.
    pub fn queues(&self) -> Option<&EnsureReport> {
        self.queues.as_ref()
    }

    /// Serves until `shutdown` resolves (or the server fails), then shuts down gracefully.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = actix::spawn(self.server);
        tokio::select! {
            () = shutdown => {}
            result = &mut server => {
                return result.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            }
        }
        tracing::info!("shutting down");
        if let Some(poller) = &self.poller {
            drain(poller, &self.abort, &self.settings).await;
        }
        if let Some((stop, done)) = self.webhooks {
            let _ = stop.send(true);
            // The engine bounds its own wait (the tries' timeout); a panic in it is logged.
            if let Err(e) = done.await {
                tracing::warn!(error = %e, "the webhook engine ended abnormally");
            }
        }
        handle.stop(true).await;
        let _ = server.await;
        // Last, so the fleet view lists a draining process until it is gone.
        let _ = self.fleet.0.send(true);
        let _ = self.fleet.1.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// A background task that runs until told to stop (the webhook engine, the fleet
/// heartbeat): its stop signal and its task.
type StoppableTask = (watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// The dispatcher (api role only), with its sweep for rows that never reached SQS.
fn start_dispatcher(
    settings: &Settings,
    batchers: &SqsBatchers,
    status: &Addr<StatusActor>,
    sqs: &SqsQueue,
    pool: &DbPool,
) -> Option<Dispatcher> {
    settings.has_role(Role::Api).then(|| {
        let timings = Timings::from_settings(settings);
        let dispatcher = Dispatcher::new(batchers.clone(), status.clone(), sqs.clone(), timings);
        actix::spawn(dispatcher.clone().sweep_forever(pool.clone()));
        dispatcher
    })
}

/// Registers this process in `processes` and keeps its row fresh (`fleet`); returns its
/// id and the heartbeat's handle.
fn start_fleet(settings: &Settings, pool: &DbPool) -> (uuid::Uuid, StoppableTask) {
    let me = crate::fleet::identity(settings);
    let id = me.id;
    let (stop, stopped) = watch::channel(false);
    let task = actix::spawn(crate::fleet::heartbeat(pool.clone(), me, stopped));
    (id, (stop, task))
}

/// The readings refreshed in the background, so that health checks, metrics and the
/// console never wait on SQS or PostgreSQL for them: queue depths and the job table's
/// upkeep figures.
fn start_watches(
    sqs: &SqsQueue,
    pool: &DbPool,
    metrics: &Arc<Metrics>,
) -> (QueueDepths, crate::db::hygiene::HygieneWatch) {
    let depths = QueueDepths::default();
    actix::spawn(depths.clone().refresh_forever(sqs.clone(), metrics.clone()));
    let db_hygiene = crate::db::hygiene::HygieneWatch::default();
    actix::spawn(
        db_hygiene
            .clone()
            .refresh_forever(pool.clone(), metrics.clone()),
    );
    (depths, db_hygiene)
}

/// The event feeds; only an api process runs them (each reads nothing while nobody
/// listens).
fn start_feeds(
    settings: &Settings,
    pool: &DbPool,
    store: &ReportStore,
) -> (ReportFeed, AllReportsFeed) {
    let feed = ReportFeed::default();
    let all_feed = AllReportsFeed::new(feed.stream_slots(), store.link_ttl_s());
    if settings.has_role(Role::Api) {
        actix::spawn(feed.clone().run(pool.clone()));
        actix::spawn(all_feed.clone().run(pool.clone()));
    }
    (feed, all_feed)
}

/// What a worker process runs besides the consumer: the retention pruner (when a limit
/// is set) and the webhook engine (when a secret is).
fn start_worker_chores(
    settings: &Settings,
    pool: &DbPool,
    metrics: &Arc<Metrics>,
    store: &Arc<ReportStore>,
) -> Result<Option<StoppableTask>, StartupError> {
    if !settings.has_role(Role::Worker) {
        return Ok(None);
    }
    if settings.retention.enabled() {
        let pruner = crate::retention::Pruner::new(settings, store.clone(), metrics.clone())?;
        actix::spawn(pruner.run_forever());
    }
    start_webhooks(settings, pool, metrics, store.link_ttl_s())
}

/// Starts the webhook sweeper and deliverer when webhooks are on. Worker processes run
/// them: they finish the reports, and a fleet has workers wherever it has jobs. The
/// payload's `data` is api's report JSON, passed down as a function (the engine sits
/// below `api` and must not import it).
fn start_webhooks(
    settings: &Settings,
    pool: &DbPool,
    metrics: &Arc<Metrics>,
    link_ttl_s: Option<u64>,
) -> Result<Option<StoppableTask>, StartupError> {
    let render: crate::webhooks::RenderReport =
        Arc::new(move |record| api::reports::record_json(record, link_ttl_s));
    let engine = crate::webhooks::WebhookEngine::new(
        &settings.webhooks,
        pool.clone(),
        metrics.clone(),
        render,
    )
    .map_err(|e| StartupError::Webhooks(e.to_string()))?;
    Ok(engine.map(|engine| {
        let (stop, stopped) = watch::channel(false);
        (stop, actix::spawn(engine.run(stopped)))
    }))
}

/// The report store `[storage]` asks for, checked (and its bucket created, when
/// `storage.create_bucket`) before anything runs: a missing bucket stops `serve` here.
async fn open_store(settings: &Settings) -> Result<Arc<ReportStore>, StartupError> {
    let store = ReportStore::open(settings).await;
    let found = store.prepare().await?;
    tracing::info!("storage: {found}");
    Ok(Arc::new(store))
}

/// Creates or checks the queues as the config asks, and connects to both.
async fn connect_queues(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> Result<(SqsQueue, Option<EnsureReport>), StartupError> {
    let client = queue::build_client(&settings.sqs).await;
    let queues = if settings.sqs.create_queues {
        let report = ensure_queues(&client, &settings.sqs).await?;
        tracing::info!("{}", report.to_string().trim_end());
        Some(report)
    } else {
        None
    };
    let sqs = SqsQueue::connect(client, &settings.sqs)
        .await?
        .with_metrics(metrics.clone());
    Ok((sqs, queues))
}

fn storm_limit(settings: &Settings) -> StormLimit {
    StormLimit {
        max_restarts: settings.supervisor.max_restarts,
        window: Duration::from_secs(settings.supervisor.window_s),
    }
}

/// Starts the StatusActor, supervised, on a connection pool of its own.
fn start_writer(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    registry: &ActorRegistry,
) -> Result<(Addr<StatusActor>, StatusProbe), StartupError> {
    let pool = db::build_writer_pool(
        &settings.database.url,
        settings.database.statement_timeout_ms,
        settings.database.lock_timeout_ms,
    )?;
    let metrics = metrics.clone();
    let slot = registry.register("status", "StatusActor");
    let probe = StatusProbe::default();
    let actor_probe = probe.clone();
    let status = Supervisor::start(move |_| StatusActor::new(pool, metrics, slot, actor_probe));
    Ok((status, probe))
}

/// What the consumer half is built from.
struct ConsumerParts<'a> {
    settings: &'a Settings,
    pool: &'a DbPool,
    sqs: &'a SqsQueue,
    batchers: &'a SqsBatchers,
    status: &'a Addr<StatusActor>,
    metrics: &'a Arc<Metrics>,
    registry: &'a ActorRegistry,
    store: &'a Arc<ReportStore>,
}

/// The built-in CSV generator unless the caller brought one, wrapped by `[simulate]`.
fn choose_generator(
    parts: &ConsumerParts<'_>,
    custom: Option<Arc<dyn ReportGenerator>>,
) -> Arc<dyn ReportGenerator> {
    let settings = parts.settings;
    let base: Arc<dyn ReportGenerator> = custom.unwrap_or_else(|| {
        let built_in = Arc::new(CsvReportGenerator::new(
            parts.pool.clone(),
            parts.store.clone(),
            settings.server.public_url.clone(),
            settings.storage.gzip,
            settings.report.query_timeout_s,
        ));
        Arc::new(TypedGenerators::new(settings, parts.store, built_in))
    });
    if settings.simulate.is_active() {
        Arc::new(SimulatedGenerator::new(base, settings.simulate.clone()))
    } else {
        base
    }
}

/// Starts the PollerActor and its ReportWorker pool, all supervised; the workers are
/// created inside the poller's factory, since each needs the poller's address.
fn start_consumer(
    parts: ConsumerParts<'_>,
    generator: Option<Arc<dyn ReportGenerator>>,
    abort: watch::Receiver<bool>,
) -> (Addr<PollerActor>, Vec<Addr<ReportWorker>>) {
    let settings = parts.settings;
    let db_gate = DbGate::new(parts.pool.clone());
    let deps = Arc::new(WorkerDeps {
        status: parts.status.clone(),
        queue: parts.sqs.clone(),
        batchers: parts.batchers.clone(),
        generator: choose_generator(&parts, generator),
        limits: fate::Limits {
            max_attempts: settings.jobs.max_attempts,
            max_receive_count: settings.sqs.max_receive_count,
            visibility_timeout_s: settings.sqs.visibility_timeout_s,
            fifo: settings.sqs.fifo,
            retry: settings.retry.clone(),
            max_in_flight_per_user: settings.fairness.max_in_flight_per_user,
            fair_release_delay_s: settings.fairness.release_delay_s,
            fair_max_release_delay_s: settings.fairness.max_release_delay_s,
            wait_in_room_within_s: fate::wait_in_room_within_s(
                settings.sqs.fifo,
                settings.fairness.max_release_delay_s,
            ),
        },
        abort,
        metrics: parts.metrics.clone(),
        db_gate: db_gate.clone(),
        run_estimate: Arc::new(RunEstimate::default()),
    });
    let count = settings.workers.count;
    let sqs_settings = settings.sqs.clone();
    let (queue, batchers, metrics) = (
        parts.sqs.clone(),
        parts.batchers.clone(),
        parts.metrics.clone(),
    );
    let poller_slot = parts.registry.register("poller", "PollerActor");
    let registry = parts.registry.clone();
    let started = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started_in_factory = started.clone();
    let poller = Supervisor::start(move |ctx: &mut Context<PollerActor>| {
        let mut poller = PollerActor::new(
            queue,
            batchers,
            &sqs_settings,
            metrics,
            poller_slot,
            db_gate,
            Screening {
                limits: deps.limits.clone(),
                run_estimate: deps.run_estimate.clone(),
            },
        );
        let idle = ctx.address();
        let workers: Vec<Addr<ReportWorker>> = (0..count)
            .map(|index| {
                let deps = deps.clone();
                let idle = idle.clone().recipient();
                let slot = registry.register(format!("worker-{index}"), "ReportWorker");
                Supervisor::start(move |_| ReportWorker::new(index, deps, idle, slot))
            })
            .collect();
        if let Ok(mut list) = started_in_factory.lock() {
            *list = workers.clone();
        }
        poller.set_workers(workers);
        poller
    });
    let workers = started.lock().map(|w| w.clone()).unwrap_or_default();
    (poller, workers)
}

/// Binds `server.bind` and starts the HTTP server (signals are handled by
/// `run_until_stopped`, not by actix-web); returns it with the bound port.
/// HTTP worker threads. Two keep the API answering while one is busy, and leave the
/// cores to the actors and the database driver.
const HTTP_WORKERS: usize = 2;

/// File descriptors kept for everything but client connections: the database pools, the
/// SQS client's connections, report files, the listener, logs.
const RESERVED_FILES: u64 = 256;

/// `server.max_connections`, lowered if the process could not open that many sockets
/// per HTTP worker: at the file limit `accept` fails and even `/health/live` stops
/// answering, while below the cap new connections only wait in the listen backlog.
fn connection_cap(settings: &Settings) -> usize {
    let configured = settings.server.max_connections;
    let Some(open_files) = raise_open_files_limit() else {
        return configured;
    };
    // The API pool, and the writer's own two connections.
    let reserved = RESERVED_FILES + settings.database.pool_size as u64 + 2;
    let cap = per_worker_cap(configured, open_files, reserved, HTTP_WORKERS);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            open_files,
            "server.max_connections lowered to what the open-files limit (ulimit -n) allows"
        );
    }
    cap
}

/// The pure rule of [`connection_cap`]: the files left after `reserved`, shared by
/// `workers`, and never below one connection per worker.
fn per_worker_cap(configured: usize, open_files: u64, reserved: u64, workers: usize) -> usize {
    let for_clients = open_files.saturating_sub(reserved) / workers.max(1) as u64;
    let for_clients = usize::try_from(for_clients).unwrap_or(usize::MAX);
    configured.min(for_clients).max(1)
}

/// Raises this process's soft open-files limit to its hard limit (as systemd's
/// documentation asks of programs that need many sockets) and returns the soft limit in
/// force; None if it cannot be read.
fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

fn start_http(
    settings: &Settings,
    state: web::Data<AppState>,
) -> Result<(actix_web::dev::Server, u16), StartupError> {
    let bind_error = |source| StartupError::Bind {
        bind: settings.server.bind.clone(),
        source,
    };
    let listener = TcpListener::bind(&settings.server.bind).map_err(bind_error)?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let serve_api = settings.has_role(Role::Api);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(middleware::from_fn(api::authenticate))
            .wrap(middleware::from_fn(api::record_http_metrics))
            .configure(|cfg| api::configure(cfg, serve_api))
            .default_service(web::to(api::not_found))
    })
    // A client gets `server.header_timeout_s` for its headers (the body's own deadline
    // is in `api::limit_body`), and connections are capped per worker thread.
    .client_request_timeout(Duration::from_secs(settings.server.header_timeout_s))
    .max_connections(connection_cap(settings))
    .listen(listener)
    .map_err(bind_error)?
    .workers(HTTP_WORKERS)
    .disable_signals()
    .shutdown_timeout(5)
    .run();
    Ok((server, port))
}

/// Stops receiving, waits for the in-flight long poll and for running jobs (up to the
/// grace period), then releases whatever still runs and waits for the releases.
async fn drain(poller: &Addr<PollerActor>, abort: &watch::Sender<bool>, settings: &Settings) {
    poller.do_send(StopPolling);
    let started = Instant::now();
    let grace = Duration::from_secs(settings.shutdown.grace_s);
    // A receive already in flight returns within the long-poll wait.
    let poll_deadline = started + Duration::from_secs(u64::from(settings.sqs.wait_time_s) + 5);
    let mut released = false;
    loop {
        let stats =
            match tokio::time::timeout(Duration::from_secs(2), poller.send(GetPollerStats)).await {
                Ok(Ok(stats)) => stats,
                _ => break,
            };
        let now = Instant::now();
        if stats.busy_workers == 0 && (!stats.polling || now >= poll_deadline) {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "all workers idle"
            );
            break;
        }
        if !released && now >= started + grace && stats.busy_workers > 0 {
            tracing::warn!(
                running = stats.busy_workers,
                "grace period over; releasing running jobs"
            );
            let _ = abort.send(true);
            released = true;
        }
        if released && now >= started + grace + Duration::from_secs(15) {
            tracing::error!(
                "jobs did not release within 15 s; exiting anyway (SQS redelivers them)"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_what_the_open_files_limit_leaves_per_worker() {
        // `ulimit -n` 20000, 274 files reserved, 2 workers: 9863 each.
        assert_eq!(per_worker_cap(25_000, 20_000, 274, 2), 9_863);
        assert_eq!(
            per_worker_cap(1_000, 20_000, 274, 2),
            1_000,
            "a lower setting stays"
        );
    }

    #[test]
    fn the_connection_cap_never_falls_below_one_per_worker() {
        assert_eq!(per_worker_cap(25_000, 100, 274, 2), 1);
        assert_eq!(per_worker_cap(25_000, 0, 0, 0), 1);
    }
}
