//! PostgreSQL: the connection pool, database creation, embedded migrations, and the
//! `report_queue` queries (in [`reports`]).
//!
//! diesel-async talks to PostgreSQL through tokio-postgres, so no libpq is needed; the
//! pool is deadpool's, which (unlike bb8) spawns no background task on the runtime that
//! created it — important under actix, where every worker thread has its own runtime.

pub(crate) mod console;
pub(crate) mod hygiene;
pub mod models;
pub(crate) mod prepared;
pub(crate) mod processes;
pub mod reconcile;
pub mod reports;
pub mod retention;
pub(crate) mod schema;
pub(crate) mod tls;
pub(crate) mod webhooks;

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The migrations under `migrations/`, compiled into the binary.
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// An arbitrary constant: the advisory lock that serialises migrations when several
/// reportd processes start against one database at the same time.
const MIGRATION_LOCK_KEY: i64 = 0x7265_706f_7274_6400;

/// The pool shared by the API's reads and the StatusActor's writes.
pub(crate) type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub(crate) type PooledConnection = Object<AsyncPgConnection>;

/// A database failure, with whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A direct connection (migrations, database creation, demo seeding) failed.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The database URL tried, password redacted.
        url: String,
        /// diesel's reason.
        #[source]
        source: diesel::ConnectionError,
    },
    /// No pooled connection: the pool could not be built or lent none, or the
    /// StatusActor did not answer in time; the text says which.
    #[error("no database connection available: {0}")]
    Pool(String),
    /// A statement failed; retryable only for the transient server errors
    /// `is_retryable` knows.
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Migrations could not run (or the URL to create the database from is malformed).
    #[error("migration failed: {0}")]
    Migration(String),
    /// The StatusActor did not take or answer the write (it stopped, or its flush panicked).
    #[error("the database writer (StatusActor) is not running")]
    WriterGone,
    /// The row is locked by another session; only the writes touching it wait.
    #[error("the row is locked by another session; try again")]
    RowBusy,
    /// The write waited in the writer's queue past its deadline and was never applied.
    #[error("the write was not applied within {0} s (the database writer is overloaded)")]
    Expired(u64),
}

impl DbError {
    /// Connection-level problems go away by themselves; a constraint violation does not.
    pub(crate) fn is_retryable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            DbError::Connect { .. }
            | DbError::Pool(_)
            | DbError::WriterGone
            | DbError::RowBusy
            | DbError::Expired(_) => true,
            DbError::Query(Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    DatabaseErrorKind::ClosedConnection
                        | DatabaseErrorKind::SerializationFailure
                        | DatabaseErrorKind::UnableToSendCommand
                ) || is_transient_message(info.message())
            }
            DbError::Query(Error::BrokenTransactionManager) => true,
            DbError::Query(_) => false,
            DbError::Migration(_) => false,
        }
    }

    /// Whether the failure says the database is away (as opposed to one busy row or
    /// one slow statement): the consumer then pauses receiving until it answers.
    pub(crate) fn is_database_away(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            DbError::Connect { .. } | DbError::Pool(_) => true,
            DbError::Query(Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
                ) || info.message().starts_with("terminating connection")
            }
            DbError::Query(Error::BrokenTransactionManager) => true,
            _ => false,
        }
    }
}

/// Server errors that go away by themselves. diesel files them all under
/// `DatabaseErrorKind::Unknown` and does not pass the SQLSTATE on, so the server's
/// (stable, English-only in our connections) message text is what tells them apart:
/// 55P03 lock_not_available, 57014 query_canceled (statement timeout), 57P01..57P03
/// (administrator shutdown, crash shutdown, cannot connect now), 53300 too many
/// connections.
fn is_transient_message(message: &str) -> bool {
    const TRANSIENT: [&str; 6] = [
        LOCK_TIMEOUT_MESSAGE,
        "canceling statement due to statement timeout",
        "terminating connection",
        "the database system is",
        "sorry, too many clients",
        "could not obtain lock",
    ];
    TRANSIENT.iter().any(|t| message.contains(t))
}

/// Whether a statement was cancelled by `lock_timeout`: it met a row locked by another
/// session (SQLSTATE 55P03; diesel passes only the message on).
pub(crate) fn is_lock_timeout(error: &diesel::result::Error) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(_, info)
        if info.message().contains(LOCK_TIMEOUT_MESSAGE))
}

/// PostgreSQL's message for SQLSTATE 55P03 raised by `lock_timeout`.
const LOCK_TIMEOUT_MESSAGE: &str = "canceling statement due to lock timeout";

/// Builds the StatusActor's own small pool: its connections run with
/// `statement_timeout` and `lock_timeout`, and neither the generators nor the API's
/// reads can take them, so the single writer is never starved or wedged behind them.
pub(crate) fn build_writer_pool(
    url: &str,
    statement_timeout_ms: u64,
    lock_timeout_ms: u64,
) -> Result<DbPool, DbError> {
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    let setup = format!(
        "SET statement_timeout = {statement_timeout_ms}; SET lock_timeout = {lock_timeout_ms}; \
         SET idle_in_transaction_session_timeout = {statement_timeout_ms}"
    );
    manager_config.custom_setup = Box::new(move |url| {
        let setup = setup.clone();
        let url = url.to_string();
        Box::pin(async move {
            let mut conn = tls::diesel(&url).await?;
            diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, &setup)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    Pool::builder(manager)
        .max_size(2)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Builds the pool; connections are opened lazily, on first use.
pub fn build_pool(url: &str, size: usize) -> Result<DbPool, DbError> {
    let mut manager_config = ManagerConfig::default();
    // Skips a `SELECT 1` per checkout; a broken connection is noticed by its query.
    manager_config.recycling_method = RecyclingMethod::Fast;
    // Through `tls::diesel`, so the URL's `sslmode` holds for pooled connections too.
    manager_config.custom_setup = Box::new(|url| {
        let url = url.to_string();
        Box::pin(async move { tls::diesel(&url).await })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Checks a connection out of the pool.
pub async fn connection(pool: &DbPool) -> Result<PooledConnection, DbError> {
    pool.get().await.map_err(|e| DbError::Pool(e.to_string()))
}

/// Creates the database named in `url` if it does not exist, by connecting to the
/// server's `postgres` maintenance database. Returns whether it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool, DbError> {
    let parsed = url::Url::parse(url).map_err(|e| DbError::Migration(format!("bad URL: {e}")))?;
    let name = parsed.path().trim_start_matches('/').to_string();
    if name.is_empty() {
        return Ok(false);
    }
    // Connecting straight to the target tells us it exists without needing privileges.
    if tls::diesel(url).await.is_ok() {
        return Ok(false);
    }
    let mut maintenance = parsed.clone();
    maintenance.set_path("/postgres");
    let mut conn = establish(maintenance.as_str()).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it between our two connections.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(false)
        }
        Err(e) => Err(DbError::Query(e)),
    }
}

/// One direct connection (not pooled), TLS as the URL says.
pub(crate) async fn establish(url: &str) -> Result<AsyncPgConnection, DbError> {
    tls::diesel(url).await.map_err(|source| DbError::Connect {
        url: crate::config::redact_url(url),
        source,
    })
}

/// Applies pending migrations and returns the versions applied (empty when up to date).
///
/// diesel's migration harness is synchronous; it runs on a blocking thread through
/// `AsyncConnectionWrapper`, which works inside actix's single-threaded runtimes (the
/// async harness's `block_in_place` does not).
pub async fn run_migrations(url: &str) -> Result<Vec<String>, DbError> {
    // Opened here, on the caller's runtime, which then drives the connection's task
    // while the blocking thread below waits on it through the wrapper.
    let conn = establish(url).await?;
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        let lock = diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"));
        diesel::RunQueryDsl::execute(lock, &mut conn)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(|v| v.to_string()).collect::<Vec<_>>())
            .map_err(|e| DbError::Migration(e.to_string()));
        let unlock = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
        let unlocked = diesel::RunQueryDsl::execute(unlock, &mut conn);
        let applied = applied?;
        unlocked?;
        Ok(applied)
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

/// Whether the database answers a trivial query (readiness checks).
pub(crate) async fn ping(pool: &DbPool) -> Result<(), DbError> {
    let mut conn = connection(pool).await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// A shared "the database is away" flag for the consumer. Workers trip it when a write
/// fails for a retryable reason; the poller then stops receiving (every receive while
/// the database is away would burn one of a message's few SQS receives on a claim that
/// cannot succeed) and probes the database until it answers again.
///
/// It also carries a timed pause for host-side trouble that says nothing about a job
/// (too many open files, a full disk, the report store away): receiving more jobs into
/// such a host would only turn them into failures, so receives wait it out.
#[derive(Clone)]
pub(crate) struct DbGate {
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pool: DbPool,
    host_pause: std::sync::Arc<std::sync::Mutex<HostPause>>,
}

/// The host-trouble pause: until when, and how long the next one lasts (it doubles
/// while the trouble lasts, and resets once a job gets through).
#[derive(Debug, Default)]
struct HostPause {
    until: Option<std::time::Instant>,
    next: std::time::Duration,
}

/// First and longest host-trouble pause.
const HOST_PAUSE_MIN: std::time::Duration = std::time::Duration::from_secs(2);
const HOST_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(60);

impl DbGate {
    pub(crate) fn new(pool: DbPool) -> Self {
        Self {
            down: Default::default(),
            pool,
            host_pause: Default::default(),
        }
    }

    fn pause_state(&self) -> std::sync::MutexGuard<'_, HostPause> {
        self.host_pause
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Pauses receives for host-side trouble; returns how long (doubling while the
    /// trouble lasts, from 2 s up to 60 s).
    pub(crate) fn pause_for_host_trouble(&self, why: &str) -> std::time::Duration {
        let mut state = self.pause_state();
        let now = std::time::Instant::now();
        if state.until.is_some_and(|until| until > now) {
            // Other workers hit the same trouble during this pause: one pause, not many.
            return state.until.map(|u| u - now).unwrap_or_default();
        }
        let pause = state.next.clamp(HOST_PAUSE_MIN, HOST_PAUSE_MAX);
        state.until = Some(now + pause);
        state.next = (pause * 2).min(HOST_PAUSE_MAX);
        tracing::warn!(
            why,
            pause_s = pause.as_secs(),
            "host trouble: pausing receives"
        );
        pause
    }

    /// A job got through: the host is fine again.
    pub(crate) fn host_ok(&self) {
        let mut state = self.pause_state();
        if state.next > std::time::Duration::ZERO
            && state.until.is_none_or(|u| u <= std::time::Instant::now())
        {
            state.next = std::time::Duration::ZERO;
            state.until = None;
        }
    }

    /// Until when receives wait for host trouble, if they do.
    pub(crate) fn host_paused_until(&self) -> Option<std::time::Instant> {
        self.pause_state()
            .until
            .filter(|until| *until > std::time::Instant::now())
    }

    /// Marks the database as away.
    pub(crate) fn trip(&self) {
        if !self.down.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!("database unavailable: pausing receives until it answers");
        }
    }

    /// Whether the database is marked away.
    pub(crate) fn is_down(&self) -> bool {
        std::sync::atomic::AtomicBool::load(&self.down, std::sync::atomic::Ordering::SeqCst)
    }

    /// Pings the database; clears the mark and returns true when it answers.
    pub(crate) async fn probe(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(std::time::Duration::from_secs(3), ping(&self.pool)).await,
            Ok(Ok(()))
        );
        if ok && self.down.swap(false, std::sync::atomic::Ordering::SeqCst) {
            tracing::info!("database answers again: resuming receives");
        }
        ok
    }
}
