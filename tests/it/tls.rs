//! TLS to PostgreSQL (issue 15): a private cluster whose certificate comes from a CA
//! this test creates, reachable only over `hostssl`, and the shared server's own
//! certificate for `sslmode=require`. The shared server's settings are never changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reportd::config::report_types::{ReportFormat, ReportKind};
use reportd::config::ReportTypeSettings;
use serde_json::json;

use crate::common::app::{free_port, spawn_app, AppOptions};
use crate::common::{drop_database, fresh_database};

/// Where Debian puts PostgreSQL 15's server programs (`REPORTD_TEST_PG_BIN` overrides).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster in a temporary directory with a certificate for `localhost` and
/// 127.0.0.1 signed by a CA made here; `pg_hba.conf` allows only `hostssl`. Dropping it
/// stops the server, whether the test passed or not.
struct TlsCluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        make_certificates(path);
        // initdb refuses to run as root: the cluster then belongs to `postgres`.
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres"]).arg(path));
        }
        let data = path.join("data");
        run(as_cluster_owner("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("pg_hba.conf");
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
             -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key",
            dir = path.display()
        );
        let cluster = Self { dir, port };
        run(as_cluster_owner("pg_ctl")
            .args(["start", "-w", "-t", "30", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.path().join("log"))
            .args(["-o", &options]));
        cluster
    }

    /// The URL of database `reportd` on this cluster (created by reportd itself), with a
    /// password that must never show in an error (trust auth ignores it).
    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres:s3cret-pw@localhost:{}/reportd?{query}",
            self.port
        )
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_cluster_owner("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program, run as `postgres` when the test runs as root.
fn as_cluster_owner(program: &str) -> Command {
    let bin = std::env::var("REPORTD_TEST_PG_BIN").unwrap_or_else(|_| PG_BIN.to_string());
    let program = Path::new(&bin).join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs a command; a failure panics with its output (a missing program fails loudly).
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate it signs (for `localhost` and 127.0.0.1), and a second,
/// unrelated CA, all with the openssl command line.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for (key, cert, name) in [
        ("ca.key", "ca.pem", "/CN=reportd test CA"),
        ("other-ca.key", "other-ca.pem", "/CN=some other CA"),
    ] {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", key, "-out", cert, "-days", "2", "-subj", name]);
        openssl(&args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext.cnf");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // PostgreSQL refuses a key file others can read.
    run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
}

/// A report type whose one row says whether its own connection is encrypted.
fn ssl_report_type() -> ReportTypeSettings {
    ReportTypeSettings {
        name: "ssl".into(),
        description: "whether the report's connection uses TLS".into(),
        kind: ReportKind::Sql,
        format: ReportFormat::Csv,
        query: Some("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()".into()),
        params: BTreeMap::new(),
        max_range_days: None,
        statement_timeout_s: 30,
        command: Vec::new(),
        content_type: None,
        extension: None,
        timeout_s: 60,
        env: BTreeMap::new(),
    }
}

/// Starts reportd on `database_url` (created and migrated by reportd through the API
/// pool, the writer pool and the migration connection), runs the `ssl` report and
/// returns its CSV.
async fn ssl_report(database_url: String) -> String {
    let app = spawn_app(AppOptions {
        database_url: Some(database_url),
        report_types: vec![ssl_report_type()],
        ..Default::default()
    })
    .await;
    let (status, answer) = app.submit(&json!({"type": "ssl", "params": {}})).await;
    assert_eq!(status, 202, "{answer}");
    let id: uuid::Uuid = answer["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    app.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let body = app
        .http
        .get(app.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file")
        .text()
        .await
        .expect("body");
    app.stop().await;
    body
}

#[actix_web::test]
async fn verify_full_with_the_right_ca_runs_migrations_the_pools_and_a_report_query() {
    let cluster = TlsCluster::start();
    let url = cluster.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        cluster.ca().display()
    ));
    let csv = ssl_report(url).await;
    let row = csv.lines().nth(1).expect("one row");
    assert!(row.starts_with("true,TLSv1.3"), "{csv}");
}

#[actix_web::test]
async fn verify_full_with_another_ca_fails_naming_the_certificate_problem() {
    let cluster = TlsCluster::start();
    let url = cluster.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        cluster.other_ca().display()
    ));
    let error = reportd::db::run_migrations(&url)
        .await
        .expect_err("an unknown issuer is refused")
        .to_string();
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(!error.contains("s3cret-pw"), "password leaked: {error}");
}

#[actix_web::test]
async fn sslmode_disable_against_a_hostssl_only_server_fails_clearly() {
    let cluster = TlsCluster::start();
    let error = reportd::db::run_migrations(&cluster.url("sslmode=disable"))
        .await
        .expect_err("plain TCP is refused")
        .to_string();
    assert!(error.contains("no pg_hba.conf entry"), "{error}");
    assert!(error.contains("no encryption"), "{error}");
    assert!(!error.contains("s3cret-pw"), "password leaked: {error}");
}

#[actix_web::test]
async fn require_works_against_the_shared_server_and_encrypts_every_connection() {
    let plain = fresh_database().await;
    let csv = ssl_report(format!("{plain}?sslmode=require")).await;
    let row = csv.lines().nth(1).expect("one row");
    assert!(row.starts_with("true,TLSv1."), "{csv}");
    drop_database(&plain).await;
}

#[test]
fn config_check_refuses_an_unknown_or_falling_back_sslmode_naming_the_key_not_the_password() {
    for mode in ["prefer", "verify-fool"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!("[database]\nurl = \"postgres://app:s3cret-pw@db/reportd?sslmode={mode}\"\n"),
        )
        .expect("write config");
        let output = Command::new(env!("CARGO_BIN_EXE_reportd"))
            .arg("--config")
            .arg(&path)
            .args(["config", "check"])
            .env_remove("DATABASE_URL")
            .output()
            .expect("run reportd");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{mode}: {stderr}");
        assert!(stderr.contains("database.url"), "{stderr}");
        assert!(stderr.contains(mode), "{stderr}");
        assert!(!stderr.contains("s3cret-pw"), "password leaked: {stderr}");
    }
}
