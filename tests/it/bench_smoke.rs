//! CI's check of the benchmark harness (issue 7): `bench/run`'s scenario 2 (drain) with
//! N = 50, against the debug binaries cargo built for this test run
//! (`CARGO_BIN_EXE_reportd`, `CARGO_BIN_EXE_reportd-bench`), so it builds nothing new.
//! It needs PostgreSQL and LocalStack like the other tests, and names the missing one.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole harness run must end within this (it takes a few seconds).
const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn bench_run_drains_50_jobs_with_the_debug_binaries() {
    // Fail first, and clearly, when a service is missing.
    common::require_sqs().await;
    drop(common::pg_maintenance().await);

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bench.md");
    let json = dir.path().join("bench.json");
    let log = dir.path().join("bench.log");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new(format!("{root}/bench/run"))
        .args(["--profile", "debug", "--no-build", "--no-services"])
        .args(["--only", "drain", "--n-drain", "50"])
        .args(["--n-ceiling", "200", "--ceiling-concurrency", "1"])
        .args(["--workers", "8"])
        .arg("--pg")
        .arg(common::pg_base_url())
        .arg("--sqs")
        .arg(common::sqs_endpoint())
        .arg("--out")
        .arg(&out)
        .arg("--json-out")
        .arg(&json)
        .env("REPORTD_BIN", env!("CARGO_BIN_EXE_reportd"))
        .env("REPORTD_BENCH_BIN", env!("CARGO_BIN_EXE_reportd-bench"))
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(std::fs::File::create(dir.path().join("bench.err")).expect("log file"))
        .spawn()
        .expect("start bench/run");

    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bench/run") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench/run did not finish within {LIMIT:?}; stderr:\n{}",
                std::fs::read_to_string(dir.path().join("bench.err")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stderr = std::fs::read_to_string(dir.path().join("bench.err")).unwrap_or_default();
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "bench/run exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).expect("bench/run wrote its JSON results"),
    )
    .expect("results are JSON");
    let drain = &results["results"]["drain"];
    assert_eq!(
        drain["completed"], 50,
        "drain results: {drain}\nstderr:\n{stderr}"
    );
    assert_eq!(drain["ok"], true, "drain results: {drain}");
    assert!(drain["jobs_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{drain}");
    assert!(
        results["results"]["ceiling"]["recv_best"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "the ceiling ran as the drain's reference: {results}"
    );
    let table = std::fs::read_to_string(&out).expect("bench/run wrote its table");
    assert!(table.contains("| 2. Drain 50 zero-work jobs"), "{table}");
    assert!(
        stdout.contains("| 2. Drain"),
        "the table is printed too: {stdout}"
    );
}
