//! Configuration loading and validation: pure, no services needed.

use std::collections::HashMap;
use std::path::Path;

use reportd::config::{LogFormat, Role, Settings};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

#[test]
fn checked_in_config_toml_loads_with_the_documented_local_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let settings = Settings::load_with_env(&path, &no_env())
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    assert_eq!(settings.sqs.queue_name, "reports");
    assert_eq!(settings.sqs.dlq_name(), "reports-dlq");
    assert!(!settings.sqs.fifo);
    assert_eq!(
        settings.sqs.endpoint_url.as_deref(),
        Some("http://127.0.0.1:4566")
    );
    assert_eq!(settings.sqs.region, "us-east-1");
    assert_eq!(settings.sqs.max_receive_count, 10);
    assert_eq!(settings.jobs.max_attempts, 3);
    assert_eq!(settings.sqs.wait_time_s, 20);
    assert_eq!(settings.workers.count, 8);
    assert_eq!(
        settings.database.url,
        "postgres://postgres@127.0.0.1:5432/reportd"
    );
    assert_eq!(settings.server.roles, vec![Role::Api, Role::Worker]);
    assert_eq!(settings.server.request_timeout_s, 30);
    assert_eq!(settings.server.header_timeout_s, 5);
    assert_eq!(settings.server.max_connections, 25_000);
    assert!(settings.has_role(Role::Api) && settings.has_role(Role::Worker));
    assert_eq!(settings.log.format, LogFormat::Pretty);
    assert!(settings.api.tokens.is_empty());
    assert!(!settings.simulate.is_active());
}

#[test]
fn missing_config_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Settings::load_with_env(&path, &no_env()).unwrap_err();
    assert!(
        err.to_string().contains("nope.toml"),
        "message does not name the file: {err}"
    );
}

#[test]
fn config_file_on_disk_is_read_and_env_applies_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[workers]\ncount = 3\n[sqs]\nreceive_batch = 5\n").unwrap();
    let settings =
        Settings::load_with_env(&path, &env(&[("REPORTD_WORKERS__COUNT", "6")])).unwrap();
    assert_eq!(settings.workers.count, 6);
    assert_eq!(settings.sqs.receive_batch, 5);
}

#[test]
fn empty_toml_gives_the_built_in_defaults() {
    let settings = Settings::from_toml_str("", &no_env()).unwrap();
    assert_eq!(settings, Settings::default());
    assert!(settings.validate().is_ok());
}

/// Each bad configuration must be rejected with a message naming the offending key, so
/// an operator can find it without reading the code.
#[test]
fn bad_configs_are_rejected_naming_the_offending_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key in a section",
            "[sqs]\nwait_tme_s = 3\n",
            "sqs.wait_tme_s",
        ),
        ("unknown section", "[sqss]\nwait_time_s = 3\n", "sqss"),
        (
            "unknown top-level key",
            "workers_count = 3\n",
            "workers_count",
        ),
        (
            "wrong type",
            "[workers]\ncount = \"many\"\n",
            "workers.count",
        ),
        (
            "negative number for an unsigned field",
            "[workers]\ncount = -1\n",
            "workers.count",
        ),
        (
            "negative wait time",
            "[sqs]\nwait_time_s = -5\n",
            "sqs.wait_time_s",
        ),
        ("zero workers", "[workers]\ncount = 0\n", "workers.count"),
        (
            "long poll above 20 s",
            "[sqs]\nwait_time_s = 21\n",
            "sqs.wait_time_s",
        ),
        (
            "receive batch 0",
            "[sqs]\nreceive_batch = 0\n",
            "sqs.receive_batch",
        ),
        (
            "receive batch 11",
            "[sqs]\nreceive_batch = 11\n",
            "sqs.receive_batch",
        ),
        (
            "max receive count 0",
            "[sqs]\nmax_receive_count = 0\n",
            "sqs.max_receive_count",
        ),
        (
            "max receive count without headroom above max_attempts",
            "[jobs]\nmax_attempts = 3\n[sqs]\nmax_receive_count = 7\n",
            "sqs.max_receive_count",
        ),
        (
            "zero max attempts",
            "[jobs]\nmax_attempts = 0\n",
            "jobs.max_attempts",
        ),
        (
            "visibility timeout below the heartbeat floor",
            "[sqs]\nvisibility_timeout_s = 5\n",
            "sqs.visibility_timeout_s",
        ),
        (
            "lock timeout above the statement timeout",
            "[database]\nstatement_timeout_ms = 1000\nlock_timeout_ms = 2000\n",
            "database.lock_timeout_ms",
        ),
        (
            "no statement timeout",
            "[database]\nstatement_timeout_ms = 0\n",
            "database.statement_timeout_ms",
        ),
        (
            "visibility timeout above 12 h",
            "[sqs]\nvisibility_timeout_s = 43201\n",
            "sqs.visibility_timeout_s",
        ),
        (
            "retention below 60 s",
            "[sqs]\nmessage_retention_s = 59\n",
            "sqs.message_retention_s",
        ),
        (
            "fifo without .fifo name",
            "[sqs]\nfifo = true\nqueue_name = \"reports\"\n",
            "sqs.queue_name",
        ),
        (
            ".fifo name on a standard queue",
            "[sqs]\nfifo = false\nqueue_name = \"reports.fifo\"\n",
            "sqs.queue_name",
        ),
        (
            "queue name with illegal characters",
            "[sqs]\nqueue_name = \"my queue!\"\n",
            "sqs.queue_name",
        ),
        ("empty region", "[sqs]\nregion = \" \"\n", "sqs.region"),
        (
            "unparsable database url",
            "[database]\nurl = \"not a url\"\n",
            "database.url",
        ),
        (
            "database url with a non-postgres scheme",
            "[database]\nurl = \"mysql://root@localhost/reportd\"\n",
            "database.url",
        ),
        (
            "database pool size 0",
            "[database]\npool_size = 0\n",
            "database.pool_size",
        ),
        (
            "bad bind address",
            "[server]\nbind = \"localhost\"\n",
            "server.bind",
        ),
        (
            "bad public_url",
            "[server]\npublic_url = \"not a url\"\n",
            "server.public_url",
        ),
        (
            "public_url without http(s)",
            "[server]\npublic_url = \"ftp://example.com\"\n",
            "server.public_url",
        ),
        (
            "bad endpoint_url",
            "[sqs]\nendpoint_url = \"::nope\"\n",
            "sqs.endpoint_url",
        ),
        (
            "unknown role",
            "[server]\nroles = [\"cook\"]\n",
            "server.roles",
        ),
        ("no roles", "[server]\nroles = []\n", "server.roles"),
        (
            "no request timeout",
            "[server]\nrequest_timeout_s = 0\n",
            "server.request_timeout_s",
        ),
        (
            "request timeout above an hour",
            "[server]\nrequest_timeout_s = 3601\n",
            "server.request_timeout_s",
        ),
        (
            "no connections",
            "[server]\nmax_connections = 0\n",
            "server.max_connections",
        ),
        (
            "unknown log format",
            "[log]\nformat = \"xml\"\n",
            "log.format",
        ),
        ("empty api token", "[api]\ntokens = [\"\"]\n", "api.tokens"),
        (
            "failure rate above 1",
            "[simulate]\nfailure_rate = 1.5\n",
            "simulate.failure_rate",
        ),
        (
            "simulated duration min above max",
            "[simulate]\nduration_ms = [20, 10]\n",
            "simulate.duration_ms",
        ),
        (
            "backoff max below base",
            "[retry]\nbackoff_base_s = 10\nbackoff_max_s = 5\n",
            "retry.backoff_max_s",
        ),
    ];
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for (what, toml, key) in cases {
        match Settings::from_toml_str(toml, &no_env()) {
            Ok(settings) => failures.push(format!(
                "{what}: accepted, expected an error naming `{key}`\n    toml: {toml:?}\n    got: {settings:?}"
            )),
            Err(err) => {
                let message = err.to_string();
                if !message.contains(key) {
                    failures.push(format!(
                        "{what}: message does not contain `{key}`\n    toml: {toml:?}\n    message: {message}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs were not reported as expected:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[test]
fn env_workers_count_overrides_the_file() {
    let settings = Settings::from_toml_str(
        "[workers]\ncount = 2\n",
        &env(&[("REPORTD_WORKERS__COUNT", "4")]),
    )
    .unwrap();
    assert_eq!(settings.workers.count, 4);
}

#[test]
fn env_can_switch_to_a_fifo_queue() {
    let settings = Settings::from_toml_str(
        "",
        &env(&[
            ("REPORTD_SQS__FIFO", "true"),
            ("REPORTD_SQS__QUEUE_NAME", "jobs.fifo"),
        ]),
    )
    .unwrap();
    assert!(settings.sqs.fifo);
    assert_eq!(settings.sqs.queue_name, "jobs.fifo");
    assert_eq!(settings.sqs.dlq_name(), "jobs-dlq.fifo");
}

#[test]
fn env_fifo_without_fifo_name_is_rejected_naming_queue_name() {
    let err = Settings::from_toml_str("", &env(&[("REPORTD_SQS__FIFO", "true")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sqs.queue_name"), "{err}");
}

#[test]
fn database_url_env_overrides_the_file() {
    let settings = Settings::from_toml_str(
        "[database]\nurl = \"postgres://file@127.0.0.1/a\"\n",
        &env(&[("DATABASE_URL", "postgres://env@127.0.0.1/b")]),
    )
    .unwrap();
    assert_eq!(settings.database.url, "postgres://env@127.0.0.1/b");
}

#[test]
fn reportd_database_url_wins_over_database_url() {
    let settings = Settings::from_toml_str(
        "[database]\nurl = \"postgres://file@127.0.0.1/a\"\n",
        &env(&[
            ("DATABASE_URL", "postgres://generic@127.0.0.1/b"),
            ("REPORTD_DATABASE__URL", "postgres://specific@127.0.0.1/c"),
        ]),
    )
    .unwrap();
    assert_eq!(settings.database.url, "postgres://specific@127.0.0.1/c");
}

#[test]
fn bad_env_value_is_rejected_naming_the_key() {
    let err = Settings::from_toml_str("", &env(&[("REPORTD_SQS__WAIT_TIME_S", "99")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sqs.wait_time_s"), "{err}");
}

#[test]
fn env_value_of_the_wrong_type_is_rejected_naming_the_key() {
    let err = Settings::from_toml_str("", &env(&[("REPORTD_WORKERS__COUNT", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("workers.count"), "{err}");
}

#[test]
fn unknown_env_key_in_a_section_is_rejected_naming_it() {
    let err = Settings::from_toml_str("", &env(&[("REPORTD_SQS__WAIT_TME_S", "3")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sqs.wait_tme_s"), "{err}");
}

#[test]
fn unrelated_reportd_env_vars_are_ignored() {
    let settings = Settings::from_toml_str(
        "",
        &env(&[
            ("REPORTD_CACHE_DIR", "/tmp/whatever"),
            ("REPORTD_TEST_PG", "postgres://x@y"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(settings, Settings::default());
}

#[test]
fn env_list_value_sets_roles() {
    let settings =
        Settings::from_toml_str("", &env(&[("REPORTD_SERVER__ROLES", "[worker]")])).unwrap();
    assert_eq!(settings.server.roles, vec![Role::Worker]);
    assert!(!settings.has_role(Role::Api));
}

#[test]
fn redacted_toml_hides_the_database_password_and_api_tokens() {
    let toml = "[database]\nurl = \"postgres://u:s3cr3t-pw@h/db\"\n\
                [api]\ntokens = [\"tok-abc123\", \"tok-def456\"]\n";
    let settings = Settings::from_toml_str(toml, &no_env()).unwrap();
    let shown = settings.to_redacted_toml();
    assert!(!shown.contains("s3cr3t-pw"), "password leaked:\n{shown}");
    assert!(!shown.contains("tok-abc123"), "token leaked:\n{shown}");
    assert!(!shown.contains("tok-def456"), "token leaked:\n{shown}");
    assert!(shown.contains("[database]"), "{shown}");
    assert!(
        shown.contains("u:***@h"),
        "user and host should stay:\n{shown}"
    );
    // Non-secret settings stay visible.
    assert!(shown.contains("queue_name = \"reports\""), "{shown}");
    // The original settings are untouched.
    assert_eq!(settings.database.url, "postgres://u:s3cr3t-pw@h/db");
}

#[test]
fn debug_output_hides_the_database_password_and_api_tokens() {
    let toml = "[database]\nurl = \"postgres://u:s3cr3t-pw@h/db\"\n\
                [api]\ntokens = [\"tok-abc123\"]\n";
    let settings = Settings::from_toml_str(toml, &no_env()).unwrap();
    let debug = format!("{settings:?}");
    assert!(!debug.contains("s3cr3t-pw"), "password leaked: {debug}");
    assert!(!debug.contains("tok-abc123"), "token leaked: {debug}");
}

/// `config check` prints this output; every value must be shown, numbers included.
#[test]
fn redacted_toml_shows_every_numeric_value() {
    let settings = Settings::from_toml_str("[workers]\ncount = 5\n", &no_env()).unwrap();
    let shown = settings.to_redacted_toml();
    let missing: Vec<&str> = [
        "count = 5",
        "wait_time_s = 20",
        "max_receive_count = 10",
        "max_attempts = 3",
        "lock_timeout_ms = 200",
        "pool_size = 16",
        "grace_s = 30",
        "max_range_days = 366",
    ]
    .into_iter()
    .filter(|line| !shown.lines().any(|l| l.trim() == *line))
    .collect();
    assert!(
        missing.is_empty(),
        "to_redacted_toml() lost values {missing:?}:\n{shown}"
    );
}

#[test]
fn redacted_toml_parses_back_to_the_same_non_secret_settings() {
    let toml = "[sqs]\nqueue_name = \"jobs.fifo\"\nfifo = true\nendpoint_url = \"http://127.0.0.1:4566\"\n\
                [workers]\ncount = 5\n[simulate]\nfailure_rate = 0.25\n";
    let settings = Settings::from_toml_str(toml, &no_env()).unwrap();
    let shown = settings.to_redacted_toml();
    let reparsed = Settings::from_toml_str(&shown, &no_env())
        .unwrap_or_else(|e| panic!("redacted output does not parse back: {e}\n{shown}"));
    assert_eq!(reparsed, settings, "{shown}");
}

/// Secrets put where a value of another type belongs must not be echoed by the error:
/// the message names the key and the expected type only.
#[test]
fn a_secret_of_the_wrong_type_is_reported_by_key_and_type_without_its_value() {
    let cases = [
        ("REPORTD_API__TOKENS", "s3cret", "api.tokens", "sequence"),
        (
            "REPORTD_API__TOKENS",
            "[s3cret, 424242]",
            "api.tokens",
            "string",
        ),
        (
            "REPORTD_DATABASE__URL",
            "[hunter2]",
            "database.url",
            "string",
        ),
        ("REPORTD_DATABASE__URL", "8675309", "database.url", "string"),
        // DATABASE_URL is always a string: a validation error, which must not echo it either.
        ("DATABASE_URL", "[hunter2]", "database.url", "not a URL"),
    ];
    for (var, value, key, expected) in cases {
        let message = Settings::from_toml_str("", &env(&[(var, value)]))
            .expect_err("a type error")
            .to_string();
        assert!(message.contains(key), "{var}={value}: {message}");
        assert!(message.contains(expected), "{var}={value}: {message}");
        for secret in ["s3cret", "424242", "hunter2", "8675309"] {
            assert!(!message.contains(secret), "{var}={value} echoed: {message}");
        }
    }
    let from_file = Settings::from_toml_str("[api]\ntokens = \"s3cret\"\n", &no_env())
        .expect_err("a type error")
        .to_string();
    assert!(
        from_file.contains("api.tokens") && !from_file.contains("s3cret"),
        "{from_file}"
    );
}

#[test]
fn a_password_in_the_database_url_query_is_redacted_in_printed_config_and_debug() {
    let url = "postgres://app:userinfo-pw@db/reports?sslmode=require&password=query-pw&sslpassword=ssl-pw";
    let settings = Settings::from_toml_str("", &env(&[("DATABASE_URL", url)])).unwrap();
    let shown = settings.to_redacted_toml();
    let debug = format!("{settings:?}");
    for secret in ["userinfo-pw", "query-pw", "ssl-pw"] {
        assert!(
            !shown.contains(secret),
            "{secret} in config check:\n{shown}"
        );
        assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
    }
    assert!(
        shown
            .contains("postgres://app:***@db/reports?sslmode=require&password=***&sslpassword=***"),
        "{shown}"
    );
    assert_eq!(
        settings.database.url, url,
        "the settings themselves keep the secret"
    );
}

#[test]
fn redacted_toml_shows_the_server_limits() {
    let settings = Settings::from_toml_str(
        "[server]\nrequest_timeout_s = 12\nmax_connections = 500\n",
        &no_env(),
    )
    .unwrap();
    let shown = settings.to_redacted_toml();
    assert!(
        shown.lines().any(|l| l == "request_timeout_s = 12"),
        "{shown}"
    );
    assert!(
        shown.lines().any(|l| l == "max_connections = 500"),
        "{shown}"
    );
}

#[test]
fn named_tokens_with_roles_load_and_a_bad_entry_names_the_key_without_the_secret() {
    let settings = Settings::from_toml_str(
        "[api]\ntokens = [\"plain\", { name = \"viewer\", token = \"r34d\", role = \"read\" }]\n[ui]\nallow_anonymous_admin = true\n",
        &no_env(),
    )
    .expect("valid");
    assert_eq!(settings.api.tokens.len(), 2);
    assert_eq!(
        settings.api.tokens[1].role(),
        reportd::config::TokenRole::Read
    );
    assert!(settings.ui.allow_anonymous_admin);
    for bad in [
        "[api]\ntokens = [{ name = \"x\", token = \"s3cret\", role = \"root\" }]\n",
        "[api]\ntokens = [{ name = \"x\", token = \"s3cret\", role = \"read\" }, { name = \"x\", token = \"other\", role = \"admin\" }]\n",
        "[api]\ntokens = [\"s3cret\", \"s3cret\"]\n",
    ] {
        let message = Settings::from_toml_str(bad, &no_env())
            .expect_err("refused")
            .to_string();
        assert!(message.contains("api.tokens"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
