//! The operator console in a real browser: Debian's chromium, driven through
//! chromedriver by fantoccini, against an in-process daemon with real PostgreSQL and
//! LocalStack SQS. `scripts/test` installs chromium and chromium-driver when missing; a
//! missing browser fails these tests, it never skips them. Each test saves a screenshot
//! under `<target>/console-screenshots/<test>.png`.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::app::{free_port, spawn_app, wait_until, AppOptions, TestApp};
use common::pg_connect;
use fantoccini::{Client, ClientBuilder, Locator};
use reportd::config::{ApiToken, SimulateSettings, TokenRole};
use serde_json::{json, Value};
use uuid::Uuid;

const ADMIN: &str = "admin-s3cret";
const VIEWER: &str = "viewer-s3cret";

/// An admin and a read token, both named.
fn tokens() -> Vec<ApiToken> {
    vec![
        ApiToken::Named {
            name: "ops".into(),
            token: ADMIN.into(),
            role: TokenRole::Admin,
        },
        ApiToken::Named {
            name: "viewer".into(),
            token: VIEWER.into(),
            role: TokenRole::Read,
        },
    ]
}

/// chromedriver on a free port with one headless chromium session; both end on drop.
struct Browser {
    client: Option<Client>,
    driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: run scripts/test (scripts/browser-deps installs \
                 Debian's chromium and chromium-driver), or apt-get install -y chromium chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"]
            }
        }))
        .expect("capabilities");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no chromium session through chromedriver at {url}: {e}"),
            }
        };
        Browser {
            client: Some(client),
            driver,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("open")
    }

    async fn goto(&self, app: &TestApp, path: &str) {
        self.c().goto(&app.url(path)).await.expect("navigates");
    }

    async fn sign_in(&self, app: &TestApp, token: &str) {
        self.goto(app, "/ui/login").await;
        let field = self
            .c()
            .find(Locator::Css("#token"))
            .await
            .expect("token field");
        field.send_keys(token).await.expect("types");
        self.click("form.login button[type=submit]").await;
        self.wait_text("[data-testid=who]", "(", Duration::from_secs(10))
            .await;
    }

    async fn click(&self, css: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    async fn text(&self, css: &str) -> Option<String> {
        let element = self.c().find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element `css` contains `expected`; returns its text.
    async fn wait_text(&self, css: &str, expected: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css).await;
            if let Some(text) = text.as_ref().filter(|t| t.contains(expected)) {
                return text.clone();
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` never showed `{expected}` (last: {text:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Accepts the confirmation the click raised; returns its text.
    async fn confirm(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = self.c().get_alert_text().await {
                self.c().accept_alert().await.expect("accepts");
                return text;
            }
            assert!(Instant::now() < deadline, "no confirmation appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page as `<target>/console-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.c().screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), &png).expect("screenshot saved");
        // The README's screenshots: `REPORTD_SCREENSHOTS=docs/screenshots cargo test --test
        // it console::` writes them there too (relative to the crate root, cargo's cwd).
        if let Some(docs) = std::env::var_os("REPORTD_SCREENSHOTS") {
            let docs = std::path::PathBuf::from(docs);
            std::fs::create_dir_all(&docs).expect("REPORTD_SCREENSHOTS dir");
            std::fs::write(docs.join(format!("{name}.png")), &png).expect("screenshot copied");
        }
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Jobs whose first attempt fails, with one attempt allowed: they end `failed` (and in
/// the DLQ) at once, and a retry or redrive completes them.
fn failing_once() -> AppOptions {
    AppOptions {
        tokens: tokens(),
        max_attempts: 1,
        simulate: SimulateSettings {
            fail_first_attempts: 1,
            skip_generator: true,
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    }
}

async fn submit(app: &TestApp, user_id: i64) -> Uuid {
    let response = app
        .http
        .post(app.url("/reports"))
        .bearer_auth(ADMIN)
        .json(&json!({"userId": user_id, "startDate": "2024-01-01", "endDate": "2024-01-31"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").parse().expect("uuid")
}

async fn status_of(app: &TestApp, id: Uuid) -> String {
    let db = pg_connect(&app.settings.database.url).await;
    db.query_one(
        "SELECT status FROM report_queue WHERE id = $1::text::uuid",
        &[&id.to_string()],
    )
    .await
    .expect("row")
    .get(0)
}

async fn wait_status(app: &TestApp, id: Uuid, status: &str) {
    wait_until(
        &format!("report {id} {status}"),
        Duration::from_secs(40),
        || async { status_of(app, id).await == status },
    )
    .await;
}

#[actix_web::test]
async fn signing_in_shows_an_overview_whose_numbers_match_the_database() {
    let app = spawn_app(AppOptions {
        tokens: tokens(),
        simulate: SimulateSettings {
            skip_generator: true,
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    for user in 1..=3 {
        let id = submit(&app, user).await;
        wait_status(&app, id, "completed").await;
    }
    let browser = Browser::start().await;
    browser.goto(&app, "/ui").await;
    let url = browser.c().current_url().await.expect("url");
    assert!(
        url.path().ends_with("/ui/login"),
        "not signed in yet: {url}"
    );
    browser.sign_in(&app, ADMIN).await;
    assert!(browser
        .text("[data-testid=who]")
        .await
        .unwrap_or_default()
        .contains("ops (admin)"));
    let db = pg_connect(&app.settings.database.url).await;
    for status in [
        "in-queue",
        "in-progress",
        "completed",
        "failed",
        "cancelled",
    ] {
        let count: i64 = db
            .query_one(
                "SELECT count(*) FROM report_queue WHERE status = $1",
                &[&status],
            )
            .await
            .expect("count")
            .get(0);
        let css = format!("[data-field=\"status.{status}\"]");
        browser
            .wait_text(&css, &count.to_string(), Duration::from_secs(5))
            .await;
        assert_eq!(
            browser.text(&css).await.as_deref(),
            Some(count.to_string().as_str())
        );
    }
    browser
        .wait_text("[data-field=database]", "reachable", Duration::from_secs(5))
        .await;
    browser
        .wait_text("[data-field=sqs]", "reachable", Duration::from_secs(10))
        .await;
    browser.screenshot("overview").await;
    browser.goto(&app, "/ui/actors").await;
    browser
        .wait_text("table", "ReportWorker", Duration::from_secs(5))
        .await;
    browser.screenshot("actors").await;
    browser.close().await;
    app.stop().await;
}

#[actix_web::test]
async fn a_job_page_follows_the_job_from_in_queue_to_completed_without_a_reload() {
    // An api-only process first: the job waits in the queue until a worker joins.
    let api = spawn_app(AppOptions {
        tokens: tokens(),
        roles: vec![reportd::config::Role::Api],
        ..AppOptions::default()
    })
    .await;
    let id = submit(&api, 5).await;
    let browser = Browser::start().await;
    browser.sign_in(&api, ADMIN).await;
    browser.goto(&api, &format!("/ui/jobs/{id}")).await;
    browser
        .wait_text("dd[data-field=status]", "in-queue", Duration::from_secs(5))
        .await;
    // A mark that a reload would wipe.
    browser
        .c()
        .execute("window.__notReloaded = true;", vec![])
        .await
        .expect("script");
    let worker = spawn_app(AppOptions {
        roles: vec![reportd::config::Role::Worker],
        database_url: Some(api.settings.database.url.clone()),
        queue_name: Some(api.settings.sqs.queue_name.clone()),
        simulate: SimulateSettings {
            duration_ms: Some([1500, 1500]),
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    browser
        .wait_text(
            "dd[data-field=status]",
            "completed",
            Duration::from_secs(40),
        )
        .await;
    let still = browser
        .c()
        .execute("return window.__notReloaded === true;", vec![])
        .await
        .expect("script");
    assert_eq!(still, json!(true), "the page was reloaded");
    browser.screenshot("job-detail").await;
    browser.close().await;
    worker.stop().await;
    api.stop().await;
}

#[actix_web::test]
async fn two_failed_jobs_are_retried_together_after_a_confirmation_stating_the_count() {
    let app = spawn_app(failing_once()).await;
    let ids = [submit(&app, 11).await, submit(&app, 12).await];
    for id in ids {
        wait_status(&app, id, "failed").await;
    }
    let browser = Browser::start().await;
    browser.sign_in(&app, ADMIN).await;
    browser.goto(&app, "/ui/jobs?status=failed").await;
    browser.screenshot("jobs").await;
    for id in ids {
        browser
            .click(&format!("input[name=ids][value=\"{id}\"]"))
            .await;
    }
    browser.click("button[value=retry]").await;
    let question = browser.confirm().await;
    assert_eq!(question, "Retry 2 jobs?");
    browser
        .wait_text(
            "[data-testid=outcome]",
            "Retried 2 of 2 jobs.",
            Duration::from_secs(10),
        )
        .await;
    for id in ids {
        wait_status(&app, id, "completed").await;
    }
    browser.close().await;
    app.stop().await;
}

#[actix_web::test]
async fn a_dead_letter_is_redriven_from_the_console() {
    let app = spawn_app(failing_once()).await;
    let id = submit(&app, 21).await;
    wait_status(&app, id, "failed").await;
    let browser = Browser::start().await;
    browser.sign_in(&app, ADMIN).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.goto(&app, "/ui/dlq").await;
        if browser
            .text("table")
            .await
            .unwrap_or_default()
            .contains(&id.to_string())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed job never showed in the DLQ page"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    browser.screenshot("dead-letters").await;
    let row = format!("//tr[td/a[contains(., '{id}')]]//input[@name='ids']");
    browser
        .c()
        .find(Locator::XPath(&row))
        .await
        .expect("the entry's checkbox")
        .click()
        .await
        .expect("checks");
    browser.click("button[value=redrive]").await;
    assert_eq!(browser.confirm().await, "Redrive 1 message?");
    browser
        .wait_text(
            "[data-testid=outcome]",
            "Redrove 1 messages.",
            Duration::from_secs(20),
        )
        .await;
    wait_status(&app, id, "completed").await;
    browser.close().await;
    app.stop().await;
}

/// A client that keeps redirects to itself, so the session cookie can be read.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in over plain HTTP; returns the `Cookie` header value and the Set-Cookie line.
async fn session_cookie(app: &TestApp, token: &str) -> (String, String) {
    let response = no_redirects()
        .post(app.url("/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 303);
    let set = response
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .expect("ascii")
        .to_string();
    let pair = set.split(';').next().expect("pair").to_string();
    (pair, set)
}

/// The CSRF token of the first form on `path`, as the page renders it for `cookie`.
async fn csrf_of(app: &TestApp, cookie: &str, path: &str) -> String {
    let page = no_redirects()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

#[actix_web::test]
async fn a_read_token_sees_no_action_and_every_action_it_tries_answers_403() {
    let app = spawn_app(failing_once()).await;
    let id = submit(&app, 31).await;
    wait_status(&app, id, "failed").await;

    let browser = Browser::start().await;
    browser.sign_in(&app, VIEWER).await;
    browser.goto(&app, "/ui/jobs").await;
    browser
        .wait_text("table", &id.to_string(), Duration::from_secs(5))
        .await;
    let buttons = browser
        .c()
        .find_all(Locator::Css("button[name=action], input[name=ids]"))
        .await
        .expect("query");
    assert!(buttons.is_empty(), "a reader sees action controls");
    browser.screenshot("read-only").await;
    browser.close().await;

    let (cookie, set_cookie) = session_cookie(&app, VIEWER).await;
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    // The sign-out form carries the reader's CSRF token: a valid token, still refused.
    let csrf = csrf_of(&app, &cookie, "/ui").await;
    let refused = no_redirects()
        .post(app.url("/ui/jobs/action"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("action", "retry"),
            ("ids", &id.to_string()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // The JSON API: a read token may GET, not act.
    let get = app
        .http
        .get(app.url(&format!("/reports/{id}")))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 200);
    let retry = app
        .http
        .post(app.url(&format!("/reports/{id}/retry")))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("retry");
    assert_eq!(retry.status(), 403);
    let body: Value = retry.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // An admin session without the CSRF token is refused too, and nothing changes.
    let (admin, _) = session_cookie(&app, ADMIN).await;
    let no_csrf = no_redirects()
        .post(app.url("/ui/jobs/action"))
        .header("cookie", &admin)
        .form(&[("action", "retry"), ("ids", &id.to_string())])
        .send()
        .await
        .expect("post");
    assert_eq!(no_csrf.status(), 403);
    let body: Value = no_csrf.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "csrf_mismatch", "{body}");
    assert_eq!(status_of(&app, id).await, "failed");
    app.stop().await;
}

#[actix_web::test]
async fn a_worker_panic_shows_on_the_actors_page_as_a_restart_without_a_reload() {
    let app = spawn_app(AppOptions {
        tokens: tokens(),
        workers: 1,
        simulate: SimulateSettings {
            panic_first_attempts: 1,
            skip_generator: true,
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    let browser = Browser::start().await;
    browser.sign_in(&app, ADMIN).await;
    browser.goto(&app, "/ui/actors").await;
    browser
        .wait_text("#actors", "worker-0", Duration::from_secs(5))
        .await;
    assert!(
        browser
            .c()
            .find(Locator::Css("#actors tr.restarted"))
            .await
            .is_err(),
        "no restart yet"
    );
    let before = browser.c().current_url().await.expect("url");
    let id = submit(&app, 7).await;
    // The generator panics on the first attempt: the worker restarts, then the retry
    // completes the job. The page shows it by polling, without a reload.
    browser
        .wait_text(
            "#actors tr.restarted td[data-testid=restarts]",
            "1 (last",
            Duration::from_secs(30),
        )
        .await;
    let marked = browser
        .text("#actors tr.restarted th")
        .await
        .unwrap_or_default();
    assert_eq!(marked, "worker-0");
    wait_status(&app, id, "completed").await;
    assert_eq!(browser.c().current_url().await.expect("url"), before);
    browser.screenshot("actors-restart").await;
    browser.close().await;
    app.stop().await;
}

#[actix_web::test]
async fn the_overview_charts_follow_finished_jobs_without_a_reload() {
    let app = spawn_app(AppOptions {
        tokens: tokens(),
        simulate: SimulateSettings {
            skip_generator: true,
            ..SimulateSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    let browser = Browser::start().await;
    browser.sign_in(&app, ADMIN).await;
    browser
        .wait_text("#throughput", "completed (0)", Duration::from_secs(5))
        .await;
    assert!(browser
        .text("#latency")
        .await
        .unwrap_or_default()
        .contains("queue wait p95"));
    let mut ids = Vec::new();
    for user in 1..=3 {
        ids.push(submit(&app, user).await);
    }
    for id in &ids {
        wait_status(&app, *id, "completed").await;
    }
    browser
        .wait_text("#throughput", "completed (3)", Duration::from_secs(10))
        .await;
    browser
        .wait_text(
            "[data-field=\"status.completed\"]",
            "3",
            Duration::from_secs(5),
        )
        .await;
    let label = browser
        .c()
        .find(Locator::Css("#latency svg"))
        .await
        .expect("latency chart")
        .attr("aria-label")
        .await
        .expect("label")
        .unwrap_or_default();
    assert!(label.contains("queue wait p50"), "{label}");
    let lines = browser
        .c()
        .find_all(Locator::Css("#throughput polyline"))
        .await
        .expect("lines");
    assert_eq!(lines.len(), 2, "completed and failed");
    browser
        .c()
        .execute("document.getElementById('h').scrollIntoView()", Vec::new())
        .await
        .expect("scrolls to the charts");
    browser.screenshot("overview-charts").await;
    browser.close().await;
    app.stop().await;
}

/// The fleet table's rows as the Actors page shows them now.
async fn process_rows(browser: &Browser) -> Vec<String> {
    let mut texts = Vec::new();
    for row in browser
        .c()
        .find_all(Locator::Css("#processes tr"))
        .await
        .expect("rows")
    {
        texts.push(row.text().await.unwrap_or_default());
    }
    texts
}

/// Waits until the fleet table (updated by polling, never reloaded) satisfies `check`.
async fn wait_rows(browser: &Browser, what: &str, check: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = process_rows(browser).await;
        if check(&rows) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never; rows {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_web::test]
async fn two_daemons_on_one_database_are_both_listed_and_a_stopped_one_leaves() {
    let first = spawn_app(AppOptions {
        tokens: tokens(),
        ..AppOptions::default()
    })
    .await;
    let second = spawn_app(AppOptions {
        tokens: tokens(),
        roles: vec![reportd::config::Role::Worker],
        database_url: Some(first.settings.database.url.clone()),
        ..AppOptions::default()
    })
    .await;
    let browser = Browser::start().await;
    browser.sign_in(&first, ADMIN).await;
    browser.goto(&first, "/ui/actors").await;
    wait_rows(&browser, "both processes listed", |rows| {
        rows.len() == 2
            && rows
                .iter()
                .any(|r| r.contains("(this process)") && r.contains("api,worker"))
            && rows
                .iter()
                .any(|r| !r.contains("(this process)") && r.contains("worker"))
            && rows.iter().all(|r| r.ends_with("live"))
    })
    .await;
    browser
        .c()
        .execute(
            "document.getElementById('processes').scrollIntoView()",
            Vec::new(),
        )
        .await
        .expect("scrolls to the processes");
    browser.screenshot("fleet").await;

    // A clean shutdown deletes the row; the open page drops it without a reload.
    second.stop().await;
    wait_rows(&browser, "the stopped process gone", |rows| {
        rows.len() == 1 && rows[0].contains("(this process)")
    })
    .await;

    // A process that stopped refreshing shows as stale; one silent for an hour is pruned
    // by the live process's next heartbeat.
    let db = pg_connect(&first.settings.database.url).await;
    db.execute(
        "INSERT INTO processes (id, host, pid, roles, version, started_at, heartbeat_at) VALUES \
         ('00000000-0000-4000-8000-000000000001', 'stuck-host', 11, 'worker', '0.0.1', now() - interval '5 minutes', now() - interval '1 minute'), \
         ('00000000-0000-4000-8000-000000000002', 'gone-host', 12, 'worker', '0.0.1', now() - interval '3 hours', now() - interval '2 hours')",
        &[],
    )
    .await
    .expect("rows inserted");
    wait_rows(
        &browser,
        "the stuck process stale, the gone one pruned",
        |rows| {
            rows.len() == 2
                && rows
                    .iter()
                    .any(|r| r.contains("stuck-host") && r.ends_with("stale"))
                && !rows.iter().any(|r| r.contains("gone-host"))
        },
    )
    .await;
    let stale = browser
        .c()
        .find(Locator::Css("#processes tr.alert"))
        .await
        .expect("the stale row is marked")
        .text()
        .await
        .unwrap_or_default();
    assert!(stale.contains("stuck-host"), "{stale}");
    browser.close().await;
    first.stop().await;
}

/// The ids the Jobs table lists now.
async fn listed_ids(browser: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for row in browser
        .c()
        .find_all(Locator::Css("#rows tr"))
        .await
        .expect("rows")
    {
        if let Ok(Some(id)) = row.attr("data-id").await {
            ids.push(id);
        }
    }
    ids
}

#[actix_web::test]
async fn jobs_filter_by_creation_time_and_error_text_and_bad_values_name_the_field() {
    let app = spawn_app(failing_once()).await;
    let old = submit(&app, 41).await;
    let recent = submit(&app, 42).await;
    let other = submit(&app, 43).await;
    for id in [old, recent, other] {
        wait_status(&app, id, "failed").await;
    }
    let db = pg_connect(&app.settings.database.url).await;
    db.execute(
        "UPDATE report_queue SET created_at = now() - interval '2 days' WHERE id = $1::text::uuid",
        &[&old.to_string()],
    )
    .await
    .expect("moved back");
    db.execute(
        "UPDATE report_queue SET last_error = 'upstream answered 503 (50%_off)' WHERE id = $1::text::uuid",
        &[&recent.to_string()],
    )
    .await
    .expect("error set");

    let browser = Browser::start().await;
    browser.sign_in(&app, ADMIN).await;
    browser.goto(&app, "/ui/jobs").await;
    browser
        .wait_text("#rows", &old.to_string(), Duration::from_secs(5))
        .await;
    // Text in lastError, typed into the form; `%` and `_` are taken literally.
    let field = browser
        .c()
        .find(Locator::Css("#error"))
        .await
        .expect("error field");
    field.send_keys("50%_OFF").await.expect("types");
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_text("#rows", &recent.to_string(), Duration::from_secs(5))
        .await;
    assert_eq!(listed_ids(&browser).await, vec![recent.to_string()]);
    browser.screenshot("jobs-filtered").await;

    // Created since yesterday (as a browser's date-time field sends it, UTC).
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M");
    browser
        .goto(&app, &format!("/ui/jobs?createdFrom={since}"))
        .await;
    browser
        .wait_text("#rows", &recent.to_string(), Duration::from_secs(5))
        .await;
    let mut ids = listed_ids(&browser).await;
    ids.sort();
    let mut expected = vec![recent.to_string(), other.to_string()];
    expected.sort();
    assert_eq!(ids, expected, "the two-day-old job is left out");
    let until = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d");
    browser
        .goto(&app, &format!("/ui/jobs?createdTo={until}"))
        .await;
    browser
        .wait_text("#rows", &old.to_string(), Duration::from_secs(5))
        .await;
    assert_eq!(listed_ids(&browser).await, vec![old.to_string()]);

    // A bad value: the page says which field and keeps it in the form.
    browser.goto(&app, "/ui/jobs?createdFrom=yesterday").await;
    let alert = browser
        .wait_text(
            "[data-testid=filter-error]",
            "createdFrom",
            Duration::from_secs(5),
        )
        .await;
    assert!(alert.contains("not a date-time"), "{alert}");
    browser.close().await;

    // The JSON endpoints answer 400 naming the field.
    let (cookie, _) = session_cookie(&app, ADMIN).await;
    let live = app
        .http
        .get(app.url("/ui/api/jobs?createdTo=soon"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 400);
    let body: Value = live.json().await.expect("json");
    assert_eq!(body["error"]["field"], "createdTo", "{body}");
    let api = app
        .http
        .get(app.url("/reports?error=503&status=completed"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 400);
    let body: Value = api.json().await.expect("json");
    assert_eq!(body["error"]["field"], "error", "{body}");
    app.stop().await;
}

#[actix_web::test]
async fn everything_matching_a_filter_is_retried_after_a_confirmation_stating_the_count() {
    let app = spawn_app(failing_once()).await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(submit(&app, 51).await);
    }
    let other = submit(&app, 52).await;
    for id in mine.iter().chain([&other]) {
        wait_status(&app, *id, "failed").await;
    }
    let browser = Browser::start().await;
    browser.sign_in(&app, ADMIN).await;
    browser.goto(&app, "/ui/jobs?status=failed&userId=51").await;
    browser
        .wait_text("#rows", &mine[0].to_string(), Duration::from_secs(5))
        .await;
    browser.click("[data-testid=bulk-retry]").await;
    let count = browser
        .wait_text(
            "[data-testid=bulk-count]",
            "Retry 3 jobs",
            Duration::from_secs(5),
        )
        .await;
    assert!(count.contains("status=failed&userId=51"), "{count}");
    browser.screenshot("bulk-confirm").await;
    browser
        .click("form[action='/ui/jobs/bulk'] button[type=submit]")
        .await;
    let outcome = browser
        .wait_text("[data-testid=outcome]", "done", Duration::from_secs(20))
        .await;
    assert!(
        outcome.contains("Retry: 3 of 3 matching jobs done."),
        "{outcome}"
    );
    for id in &mine {
        wait_status(&app, *id, "completed").await;
    }
    assert_eq!(status_of(&app, other).await, "failed", "outside the filter");
    browser.close().await;

    // A reader cannot open the confirmation, and a POST without the CSRF token is refused.
    let (reader, _) = session_cookie(&app, VIEWER).await;
    let refused = no_redirects()
        .get(app.url("/ui/jobs/bulk?action=retry&status=failed"))
        .header("cookie", &reader)
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), 403);
    let (admin, _) = session_cookie(&app, ADMIN).await;
    let refused = no_redirects()
        .post(app.url("/ui/jobs/bulk"))
        .header("cookie", &admin)
        .form(&[("action", "retry"), ("status", "failed")])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 403);
    assert_eq!(status_of(&app, other).await, "failed");
    app.stop().await;
}
