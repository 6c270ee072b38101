//! The `reportd` command line, run as a real process.

use std::process::Command;

fn reportd(args: &[&str], config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_reportd"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run reportd")
}

#[test]
fn a_bad_config_exits_with_status_2_and_one_message_naming_the_key() {
    let output = reportd(&["config", "check"], "[sqs]\nwait_time_s = 60\n");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sqs.wait_time_s"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_missing_config_file_exits_with_status_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_reportd"))
        .args(["--config", "/nonexistent/reportd.toml", "config", "check"])
        .output()
        .expect("run reportd");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/reportd.toml"));
}

#[test]
fn config_check_prints_the_resolved_config_with_secrets_redacted() {
    let output = reportd(
        &["config", "check"],
        "[database]\nurl = \"postgres://app:hunter2@db.internal:5432/reports\"\n[api]\ntokens = [\"tok-123\"]\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("tok-123"),
        "{stdout}"
    );
    assert!(
        stdout.contains("db.internal") && stdout.contains("wait_time_s = 20"),
        "{stdout}"
    );
}

#[test]
fn help_lists_the_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_reportd"))
        .arg("--help")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "migrate", "queues", "config", "seed-demo"] {
        assert!(
            text.contains(command),
            "{command} missing from --help:\n{text}"
        );
    }
}

#[test]
fn config_check_redacts_a_password_in_the_database_url_query() {
    let output = reportd(
        &["config", "check"],
        "[database]\nurl = \"postgres://app@db.internal/reports?Password=hunter2&sslmode=require\"\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("db.internal/reports?Password=***&sslmode=require"),
        "{stdout}"
    );
}

#[test]
fn a_token_given_where_a_list_belongs_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "").expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_reportd"))
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .env_remove("DATABASE_URL")
        .env("REPORTD_API__TOKENS", "s3cret")
        .output()
        .expect("run reportd");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stderr.contains("api.tokens"), "{stderr}");
    assert!(
        !stderr.contains("s3cret") && !stdout.contains("s3cret"),
        "{stderr}{stdout}"
    );
}
