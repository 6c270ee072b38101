//! Helpers shared by reportd's integration tests.
//!
//! The tests talk to real services, never mocks:
//!
//! - PostgreSQL at [`DEFAULT_PG`] (override with `REPORTD_TEST_PG`, a base URL without a
//!   database name). Every test gets its own database from [`fresh_database`] or
//!   [`migrated_database`], so tests run in parallel without seeing each other's rows.
//! - LocalStack's SQS at [`sqs_endpoint`] (override with `REPORTD_TEST_SQS`). Every test
//!   gets its own queue names from [`unique_queue_name`].
//!
//! `scripts/dev-services` starts both. A test that needs a service that is not there
//! fails with a message naming the service; it never silently skips.
//!
//! The test binary (`tests/it/main.rs`) includes this module once as `mod common`.
pub(crate) mod app;
pub(crate) mod jobs;
pub(crate) mod proxy;

use reportd::config::{SqsSettings, StorageBackend, StorageSettings};

/// PostgreSQL server used when `REPORTD_TEST_PG` is not set (no database name).
pub(crate) const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432";

/// LocalStack endpoint used when `REPORTD_TEST_SQS` is not set.
pub(crate) const DEFAULT_SQS: &str = "http://127.0.0.1:4566";

/// Prefix of every database the tests create, so leftovers are easy to find and drop.
pub(crate) const TEST_DATABASE_PREFIX: &str = "reportd_test_";

/// The PostgreSQL server base URL (no database name, no trailing slash).
pub(crate) fn pg_base_url() -> String {
    std::env::var("REPORTD_TEST_PG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PG.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The full URL of database `name` on the test server.
pub(crate) fn database_url(name: &str) -> String {
    format!("{}/{name}", pg_base_url())
}

/// A database name no other test uses: `reportd_test_<uuid without dashes>`.
pub(crate) fn unique_database_name() -> String {
    format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Connects with tokio-postgres (raw SQL, independent of the code under test) and spawns
/// the connection task. Panics naming PostgreSQL when the server cannot be reached.
pub(crate) async fn pg_connect(url: &str) -> tokio_postgres::Client {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        }
        Err(err) => panic!(
            "PostgreSQL is not reachable at {}: {}. Start it (scripts/dev-services) or set REPORTD_TEST_PG",
            reportd::config::redact_url(url),
            error_chain(&err)
        ),
    }
}

/// An error and its sources, `outer: inner: root`, since tokio-postgres's own message
/// ("error connecting to server") leaves out the cause.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}

/// A connection to the server's `postgres` maintenance database.
pub(crate) async fn pg_maintenance() -> tokio_postgres::Client {
    pg_connect(&database_url("postgres")).await
}

/// Creates an empty database with a unique name and returns its full URL.
pub(crate) async fn fresh_database() -> String {
    let name = unique_database_name();
    let client = pg_maintenance().await;
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e:?}"));
    database_url(&name)
}

/// A fresh database with all of reportd's migrations applied.
pub(crate) async fn migrated_database() -> String {
    let url = fresh_database().await;
    reportd::db::run_migrations(&url)
        .await
        .unwrap_or_else(|e| panic!("migrations failed on {url}: {e}"));
    url
}

/// Drops a test database, disconnecting whoever is still connected. Best-effort: call it
/// at the end of a passing test; a failing test leaves its database behind to inspect.
pub(crate) async fn drop_database(url: &str) {
    let Some(name) = url.rsplit('/').next().filter(|n| !n.is_empty()) else {
        return;
    };
    let client = pg_maintenance().await;
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

/// The LocalStack SQS endpoint.
pub(crate) fn sqs_endpoint() -> String {
    std::env::var("REPORTD_TEST_SQS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SQS.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// Panics unless LocalStack answers its health check with SQS available.
pub(crate) async fn require_sqs() {
    require_localstack("sqs", "SQS").await;
}

/// Panics unless LocalStack answers its health check with S3 available (the same
/// LocalStack as SQS: `scripts/dev-services` starts it with `SERVICES=sqs,s3`).
pub(crate) async fn require_s3() {
    require_localstack("s3", "S3").await;
}

async fn require_localstack(service: &str, name: &str) {
    let endpoint = sqs_endpoint();
    let health = format!("{endpoint}/_localstack/health");
    let fail = |why: String| -> ! {
        panic!("LocalStack {name} is not reachable at {endpoint} ({why}): run scripts/dev-services or set REPORTD_TEST_SQS")
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("reqwest client");
    let response = match client.get(&health).send().await {
        Ok(r) => r,
        Err(e) => fail(format!("GET {health}: {e}")),
    };
    if !response.status().is_success() {
        fail(format!("GET {health} answered {}", response.status()));
    }
    let body: serde_json::Value = match response.json().await {
        Ok(b) => b,
        Err(e) => fail(format!("GET {health} returned no JSON: {e}")),
    };
    let state = body
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|s| s.as_str())
        .unwrap_or("missing");
    if !matches!(state, "available" | "running") {
        fail(format!("its health check reports {service} = {state:?}"));
    }
}

/// A bucket name no other test uses: `t-<prefix>-<8 hex chars>`.
pub(crate) fn unique_bucket_name(prefix: &str) -> String {
    unique_queue_name(prefix)
}

/// `[storage]` for LocalStack's S3: backend `s3`, bucket `bucket` (created at start),
/// path-style URLs, every other field at its default.
pub(crate) fn s3_storage(bucket: &str) -> StorageSettings {
    StorageSettings {
        backend: StorageBackend::S3,
        bucket: Some(bucket.to_string()),
        endpoint_url: Some(sqs_endpoint()),
        force_path_style: true,
        create_bucket: true,
        ..StorageSettings::default()
    }
}

/// A queue name no other test uses: `t-<prefix>-<8 hex chars>`.
pub(crate) fn unique_queue_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{prefix}-{}", &id[..8])
}

/// SQS settings for LocalStack with the given queue name (`.fifo` appended for a FIFO
/// queue when missing), a 1 s long poll, and every other field at its default.
pub(crate) fn sqs_settings(queue_name: &str, fifo: bool) -> SqsSettings {
    let queue_name = if fifo && !queue_name.ends_with(".fifo") {
        format!("{queue_name}.fifo")
    } else {
        queue_name.to_string()
    };
    SqsSettings {
        endpoint_url: Some(sqs_endpoint()),
        region: "us-east-1".into(),
        queue_name,
        fifo,
        wait_time_s: 1,
        ..SqsSettings::default()
    }
}
