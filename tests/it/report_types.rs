//! Report types declared in config: SQL queries (CSV and JSON lines, bound parameters,
//! prepared at start) and external commands (protocol, retry, timeout, cancel).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reportd::config::report_types::{
    FullParamSpec, ParamSpec, ParamType, ReportFormat, ReportKind,
};
use reportd::config::ReportTypeSettings;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::app::{spawn_app, wait_until, AppOptions, TestApp};
use crate::common::{migrated_database, pg_connect};

const ACTIVITY_QUERY: &str = "
    -- rows of one user and kind; ':notAParam' in a comment and '::' casts stay as they are
    select id, user_id, kind, amount_cents::bigint as amount_cents, occurred_at
    from user_activity
    where user_id = :userId and kind = :kind and occurred_at >= :startDate
    order by id";

fn sql_type(name: &str, format: ReportFormat) -> ReportTypeSettings {
    let params = BTreeMap::from([
        ("userId".to_string(), ParamSpec::Short(ParamType::Integer)),
        ("kind".to_string(), ParamSpec::Short(ParamType::String)),
        (
            "startDate".to_string(),
            ParamSpec::Full(FullParamSpec {
                kind: ParamType::Date,
                optional: true,
                default: Some(json!("2000-01-01")),
                max_len: None,
                allowed: None,
            }),
        ),
    ]);
    ReportTypeSettings {
        name: name.into(),
        description: format!("activity as {format:?}"),
        kind: ReportKind::Sql,
        format,
        query: Some(ACTIVITY_QUERY.into()),
        params,
        max_range_days: None,
        statement_timeout_s: 30,
        command: Vec::new(),
        content_type: None,
        extension: None,
        timeout_s: 600,
        env: BTreeMap::new(),
    }
}

fn command_type(name: &str, timeout_s: u32, pid_dir: &Path) -> ReportTypeSettings {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report_command.py");
    let mode = FullParamSpec {
        kind: ParamType::String,
        optional: false,
        default: None,
        max_len: None,
        allowed: Some(vec!["ok".into(), "tempfail".into(), "sleep".into()]),
    };
    ReportTypeSettings {
        name: name.into(),
        description: "the test command".into(),
        kind: ReportKind::Command,
        format: ReportFormat::Csv,
        query: None,
        params: BTreeMap::from([("mode".to_string(), ParamSpec::Full(mode))]),
        max_range_days: None,
        statement_timeout_s: 300,
        command: vec!["python3".into(), script.display().to_string()],
        content_type: Some("text/csv".into()),
        extension: Some("csv".into()),
        timeout_s,
        env: BTreeMap::from([
            ("PID_DIR".to_string(), pid_dir.display().to_string()),
            ("SECRET".to_string(), "given-explicitly".to_string()),
        ]),
    }
}

async fn submit_typed(app: &TestApp, body: Value) -> Uuid {
    let (status, answer) = app.submit(&body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an id")
}

async fn download(app: &TestApp, id: Uuid) -> (String, String, String) {
    let response = app
        .http
        .get(app.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    let body = response.text().await.expect("body");
    (content_type, disposition, body)
}

/// Seeds rows for users 7 and 8, one with a comma and a quote in `kind`.
async fn seed(url: &str) -> tokio_postgres::Client {
    let db = pg_connect(url).await;
    db.batch_execute(
        "INSERT INTO user_activity (user_id, occurred_at, kind, amount_cents) VALUES
         (7, '2024-01-01T10:00:00Z', 'view', 100),
         (7, '2024-01-02T11:30:00Z', 'view', 250),
         (7, '2024-01-03T12:00:00Z', 'click', 5),
         (8, '2024-01-01T10:00:00Z', 'view', 999),
         (7, '2024-01-04T09:00:00Z', 'say \"hi\", ok', 42)",
    )
    .await
    .expect("seed");
    db
}

/// The table's rows for a user and kind, as text, in id order.
async fn expected_rows(db: &tokio_postgres::Client, user: i64, kind: &str) -> Vec<Vec<String>> {
    db.query(
        "SELECT id::text, user_id::text, kind, amount_cents::text, \
         to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00' \
         FROM user_activity WHERE user_id = $1 AND kind = $2 ORDER BY id",
        &[&user, &kind],
    )
    .await
    .expect("read the table")
    .iter()
    .map(|row| (0..5).map(|c| row.get::<_, String>(c)).collect())
    .collect()
}

/// A small RFC 4180 reader (quoted fields, doubled quotes, CRLF), enough for the test.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[actix_web::test]
async fn csv_and_json_lines_from_the_same_query_match_the_table() {
    let app = spawn_app(AppOptions {
        report_types: vec![
            sql_type("activity-csv", ReportFormat::Csv),
            sql_type("activity-jsonl", ReportFormat::Jsonl),
        ],
        ..Default::default()
    })
    .await;
    let db = seed(&app.settings.database.url).await;
    let kind = "say \"hi\", ok";
    for wanted in ["view", kind] {
        let expected = expected_rows(&db, 7, wanted).await;
        let params = json!({"userId": 7, "kind": wanted});
        let csv_id = submit_typed(&app, json!({"type": "activity-csv", "params": params})).await;
        let json_id = submit_typed(&app, json!({"type": "activity-jsonl", "params": params})).await;

        let record = app
            .wait_for_status(csv_id, "completed", Duration::from_secs(30))
            .await;
        assert_eq!(record["file"]["contentType"], "text/csv; charset=utf-8");
        assert_eq!(
            record["payload"]["params"]["startDate"], "2000-01-01",
            "default filled in"
        );
        let (content_type, disposition, body) = download(&app, csv_id).await;
        assert_eq!(content_type, "text/csv; charset=utf-8");
        assert_eq!(
            disposition,
            format!("attachment; filename=\"{csv_id}.csv\"")
        );
        let rows = parse_csv(&body);
        assert_eq!(
            rows[0],
            vec!["id", "user_id", "kind", "amount_cents", "occurred_at"]
        );
        assert_eq!(rows[1..], expected[..], "{body}");

        app.wait_for_status(json_id, "completed", Duration::from_secs(30))
            .await;
        let (content_type, disposition, body) = download(&app, json_id).await;
        assert_eq!(content_type, "application/jsonl");
        assert_eq!(
            disposition,
            format!("attachment; filename=\"{json_id}.jsonl\"")
        );
        let objects: Vec<Value> = body
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(objects.len(), expected.len(), "{body}");
        for (object, row) in objects.iter().zip(&expected) {
            assert_eq!(object["id"].to_string(), row[0], "{object}");
            assert_eq!(object["user_id"], 7, "JSON keeps numbers numbers");
            assert_eq!(object["kind"], row[2].as_str());
            assert_eq!(object["amount_cents"].to_string(), row[3]);
            let at: chrono::DateTime<chrono::Utc> = object["occurred_at"]
                .as_str()
                .expect("a string")
                .parse()
                .expect("a timestamp");
            assert_eq!(at.format("%Y-%m-%d %H:%M:%S+00").to_string(), row[4]);
        }
    }
    app.stop().await;
}

#[actix_web::test]
async fn an_xlsx_from_the_same_query_opens_and_matches_the_table() {
    use calamine::Reader;
    let app = spawn_app(AppOptions {
        report_types: vec![sql_type("activity-xlsx", ReportFormat::Xlsx)],
        ..Default::default()
    })
    .await;
    let db = seed(&app.settings.database.url).await;
    let expected = expected_rows(&db, 7, "view").await;
    let params = json!({"userId": 7, "kind": "view"});
    let id = submit_typed(&app, json!({"type": "activity-xlsx", "params": params})).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let xlsx_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
    assert_eq!(record["file"]["contentType"], xlsx_type, "{record}");
    let response = app
        .http
        .get(app.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).cloned();
    assert_eq!(
        header("content-disposition")
            .as_ref()
            .and_then(|v| v.to_str().ok()),
        Some(format!("attachment; filename=\"{id}.xlsx\"").as_str())
    );
    assert!(
        header("content-encoding").is_none(),
        "a zip is never gzipped"
    );
    let bytes = response.bytes().await.expect("body").to_vec();
    let mut workbook: calamine::Xlsx<_> =
        calamine::Xlsx::new(std::io::Cursor::new(bytes)).expect("an XLSX workbook");
    let sheet = workbook.worksheet_range("Sheet1").expect("its sheet");
    let rows: Vec<Vec<String>> = sheet
        .rows()
        .map(|row| row.iter().map(|cell| cell.to_string()).collect())
        .collect();
    assert_eq!(
        rows[0],
        vec!["id", "user_id", "kind", "amount_cents", "occurred_at"]
    );
    assert_eq!(rows[1..], expected[..]);
    let first = &sheet.rows().nth(1).expect("a data row")[0];
    assert!(
        matches!(first, calamine::Data::Float(_) | calamine::Data::Int(_)),
        "numbers stay numbers: {first:?}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_string_parameter_is_only_ever_a_value() {
    let app = spawn_app(AppOptions {
        report_types: vec![sql_type("activity-csv", ReportFormat::Csv)],
        ..Default::default()
    })
    .await;
    let db = seed(&app.settings.database.url).await;
    for hostile in [
        "1; drop table user_activity",
        "view' or '1'='1",
        "x'; drop table user_activity; --",
    ] {
        let id = submit_typed(
            &app,
            json!({"type": "activity-csv", "params": {"userId": 7, "kind": hostile}}),
        )
        .await;
        app.wait_for_status(id, "completed", Duration::from_secs(30))
            .await;
        let (_, _, body) = download(&app, id).await;
        assert_eq!(parse_csv(&body).len(), 1, "only the header: {body}");
    }
    let left: i64 = db
        .query_one("SELECT count(*) FROM user_activity", &[])
        .await
        .expect("the table is still there")
        .get(0);
    assert_eq!(left, 5);
    app.stop().await;
}

#[actix_web::test]
async fn bad_submissions_name_the_parameter_and_write_nothing() {
    let app = spawn_app(AppOptions {
        report_types: vec![sql_type("activity-csv", ReportFormat::Csv)],
        ..Default::default()
    })
    .await;
    let cases = [
        (json!({"type": "nope", "params": {}}), "type"),
        (
            json!({"type": "activity-csv", "params": {"kind": "view"}}),
            "params.userId",
        ),
        (
            json!({"type": "activity-csv", "params": {"userId": "7", "kind": "view"}}),
            "params.userId",
        ),
        (
            json!({"type": "activity-csv", "params": {"userId": 7, "kind": "view", "startDate": "soon"}}),
            "params.startDate",
        ),
        (
            json!({"type": "activity-csv", "params": {"userId": 7, "kind": "view", "extra": 1}}),
            "params.extra",
        ),
        (json!({"type": "activity-csv", "userId": 7}), "userId"),
        (json!({"params": {"userId": 7}}), "type"),
        (
            json!({"type": "user-activity", "params": {"userId": 7, "startDate": "2024-01-01"}}),
            "params.endDate",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.submit(&body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (_, listing) = app.get_json("/reports").await;
    assert_eq!(listing["items"], json!([]), "nothing written: {listing}");

    // The built-in type by name, and the original body, both still work.
    let id = submit_typed(
        &app,
        json!({"type": "user-activity", "params": {"userId": 7, "startDate": "2024-01-01", "endDate": "2024-01-02"}}),
    )
    .await;
    app.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let id = app.submit_ok(7).await;
    app.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;

    let (status, types) = app.get_json("/report-types").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = types["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["user-activity", "activity-csv"]);
    let declared = &types["items"][1];
    assert_eq!(declared["format"], "csv");
    assert_eq!(
        declared["params"]["userId"],
        json!({"type": "integer", "required": true})
    );
    assert_eq!(
        declared["params"]["startDate"],
        json!({"type": "date", "required": false, "default": "2000-01-01"})
    );
    app.stop().await;
}

/// Runs `reportd config check` on a config declaring `query` as a report type.
fn config_check(database_url: &str, query: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    let config = format!(
        "[database]\nurl = \"{database_url}\"\n\n[[report_types]]\nname = \"typo-report\"\n\
         query = \"{query}\"\nparams = {{ userId = \"integer\" }}\n"
    );
    std::fs::write(&path, config).expect("write config");
    std::process::Command::new(env!("CARGO_BIN_EXE_reportd"))
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run reportd")
}

#[actix_web::test]
async fn config_check_prepares_every_query_and_names_the_type_at_fault() {
    let url = migrated_database().await;
    let good = config_check(&url, "select id from user_activity where user_id = :userId");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("[[report_types]]"));
    for (query, problem) in [
        (
            "select id fron user_activity where user_id = :userId",
            "syntax error",
        ),
        (
            "select id from user_activty where user_id = :userId",
            "user_activty",
        ),
        (
            "select id from user_activity where kind = :userId",
            "operator does not exist",
        ),
        (
            "select id from user_activity where user_id = :user",
            "not a declared parameter",
        ),
    ] {
        let output = config_check(&url, query);
        assert_eq!(output.status.code(), Some(2), "{query}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("report type `typo-report`") && stderr.contains(problem),
            "{query}: {stderr}"
        );
    }
}

#[actix_web::test]
async fn serve_refuses_to_start_with_a_query_that_does_not_prepare() {
    let url = migrated_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    let config = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n\
         [sqs]\nendpoint_url = \"{}\"\nqueue_name = \"{}\"\n\n\
         [[report_types]]\nname = \"broken\"\nquery = \"select nope from user_activity\"\n",
        crate::common::sqs_endpoint(),
        crate::common::unique_queue_name("broken")
    );
    std::fs::write(&path, config).expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reportd"))
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run reportd");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on a broken report type");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("report type `broken`") && stderr.contains("nope"),
        "{stderr}"
    );
}

fn pid_of(dir: &Path, id: Uuid) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{id}.pid")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn is_running(pid: i32) -> bool {
    // A reaped process has no /proc entry; a zombie is not running either.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

async fn command_app(pid_dir: &Path) -> TestApp {
    spawn_app(AppOptions {
        report_types: vec![
            command_type("cmd", 60, pid_dir),
            command_type("cmd-short", 2, pid_dir),
        ],
        // Heartbeats every 2 s: a cancel reaches the worker quickly.
        visibility_timeout_s: 6,
        max_attempts: 3,
        ..Default::default()
    })
    .await
}

#[actix_web::test]
async fn a_command_makes_the_report_and_exit_75_is_retried() {
    let pids = tempfile::tempdir().expect("temp dir");
    let app = command_app(pids.path()).await;
    let id = submit_typed(&app, json!({"type": "cmd", "params": {"mode": "ok"}})).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 1, "{record}");
    let (content_type, disposition, body) = download(&app, id).await;
    assert_eq!(content_type, "text/csv");
    assert_eq!(disposition, format!("attachment; filename=\"{id}.csv\""));
    assert_eq!(
        body,
        format!("report,attempt,secret\n{id},1,given-explicitly\n")
    );

    let id = submit_typed(&app, json!({"type": "cmd", "params": {"mode": "tempfail"}})).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["attempts"], 2, "{record}");
    let (_, _, body) = download(&app, id).await;
    assert!(
        body.ends_with(&format!("{id},2,given-explicitly\n")),
        "{body}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_command_past_its_timeout_is_killed_and_fails() {
    let pids = tempfile::tempdir().expect("temp dir");
    let app = command_app(pids.path()).await;
    let id = submit_typed(
        &app,
        json!({"type": "cmd-short", "params": {"mode": "sleep"}}),
    )
    .await;
    let record = app
        .wait_for_status(id, "failed", Duration::from_secs(30))
        .await;
    assert!(
        record["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("timeout_s")),
        "{record}"
    );
    let pid = pid_of(pids.path(), id).expect("the command wrote its pid");
    wait_until(
        "the timed-out command to be gone",
        Duration::from_secs(10),
        || async { !is_running(pid) },
    )
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn cancel_kills_a_running_command() {
    let pids = tempfile::tempdir().expect("temp dir");
    let app = command_app(pids.path()).await;
    let id = submit_typed(&app, json!({"type": "cmd", "params": {"mode": "sleep"}})).await;
    let dir = pids.path().to_path_buf();
    wait_until("the command to start", Duration::from_secs(30), || {
        let dir = dir.clone();
        async move { pid_of(&dir, id).is_some() }
    })
    .await;
    let pid = pid_of(pids.path(), id).expect("a pid");
    assert!(is_running(pid));
    let response = app
        .http
        .post(app.url(&format!("/reports/{id}/cancel")))
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success(), "{}", response.status());
    app.wait_for_status(id, "cancelled", Duration::from_secs(30))
        .await;
    wait_until(
        "the cancelled command to be gone",
        Duration::from_secs(15),
        || async { !is_running(pid) },
    )
    .await;
    app.stop().await;
}

/// The `user-activity` declaration config.toml ships.
fn shipped_user_activity() -> ReportTypeSettings {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let settings = reportd::config::Settings::load_with_env(&path, &Default::default())
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    settings
        .report_type("user-activity")
        .cloned()
        .expect("config.toml declares user-activity")
}

/// Seeds the same activity into a test app's database: three days of user 77, one
/// event outside the range and one of another user.
async fn seed_user_77(app: &TestApp) {
    let db = pg_connect(&app.settings.database.url).await;
    db.batch_execute(
        "INSERT INTO user_activity (user_id, occurred_at, kind, amount_cents) VALUES
           (77, '2024-05-01T08:00:00Z', 'purchase', 100),
           (77, '2024-05-01T23:59:00Z', 'purchase', 250),
           (77, '2024-05-03T12:00:00Z', 'purchase', 5),
           (77, '2024-05-04T00:00:00Z', 'purchase', 7),
           (77, '2024-06-01T00:00:00Z', 'purchase', 1000),
           (78, '2024-05-02T00:00:00Z', 'purchase', 42)",
    )
    .await
    .expect("seed activity");
}

#[actix_web::test]
async fn the_shipped_user_activity_declaration_makes_the_built_in_generators_file() {
    let declared = shipped_user_activity();
    assert_eq!(declared.kind, ReportKind::Sql);
    let with_declaration = spawn_app(AppOptions {
        report_types: vec![declared.clone()],
        ..Default::default()
    })
    .await;
    let built_in_only = spawn_app(AppOptions::default()).await;
    seed_user_77(&with_declaration).await;
    seed_user_77(&built_in_only).await;

    let original = json!({"userId": 77, "startDate": "2024-05-01", "endDate": "2024-05-04"});
    let by_name = json!({"type": "user-activity", "params": original.clone()});
    let mut files = Vec::new();
    for (app, body) in [
        (&with_declaration, &original),
        (&with_declaration, &by_name),
        (&built_in_only, &original),
    ] {
        let id = submit_typed(app, body.clone()).await;
        let record = app
            .wait_for_status(id, "completed", Duration::from_secs(30))
            .await;
        assert_eq!(
            record["payload"]["userId"], 77,
            "the original body is stored"
        );
        let (content_type, disposition, body) = download(app, id).await;
        assert_eq!(content_type, "text/csv; charset=utf-8");
        assert_eq!(disposition, format!("attachment; filename=\"{id}.csv\""));
        files.push(body);
    }
    let expected =
        "day,events,amount_cents\r\n2024-05-01,2,350\r\n2024-05-03,1,5\r\n2024-05-04,1,7\r\n";
    assert_eq!(files, [expected, expected, expected]);

    // Listed once, as what config declares.
    let (_, types) = with_declaration.get_json("/report-types").await;
    let items = types["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{types}");
    assert_eq!(items[0]["name"], "user-activity");
    assert_eq!(items[0]["kind"], "sql");
    assert_eq!(items[0]["maxRangeDays"], 366, "{types}");

    // The declaration's range limit holds for the original body too.
    let (status, answer) = with_declaration
        .submit(&json!({"userId": 77, "startDate": "2020-01-01", "endDate": "2024-01-01"}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "endDate");
    with_declaration.stop().await;
    built_in_only.stop().await;
}

#[actix_web::test]
async fn a_user_activity_declaration_must_take_the_original_bodys_fields() {
    let mut declared = shipped_user_activity();
    declared
        .params
        .insert("startDate".into(), ParamSpec::Short(ParamType::Date));
    let config = format!(
        "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/unused\"\n\n{}",
        toml::to_string(&json!({ "report_types": [declared] })).expect("toml")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let error = reportd::config::Settings::load_with_env(&path, &Default::default())
        .expect_err("a date startDate is refused");
    let text = error.to_string();
    assert!(
        text.contains("report_types[0].params.startDate") && text.contains("timestamp"),
        "{text}"
    );
}
