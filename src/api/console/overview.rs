//! Overview (queue depths, jobs by status, oldest waiting job, reachability, the last
//! hour's throughput and latency charts; live) and Actors (the `/health` document as a
//! table, and every process registered in `processes`; live).

use std::fmt::Write;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::charts;
use super::pages::{self, age, esc, text_of, Page, Tab};
use super::{html, viewer, ConsoleError};
use crate::api::AppState;
use crate::db;

/// Counts stop at this many rows per status (see [`db::console::status_counts`]).
const COUNT_CAP: i64 = 10_000;

/// How many of each minute's finished jobs the latency chart's percentiles read (see
/// [`db::console::last_hour`]): 60 × 200 rows at most, whatever the hour's traffic.
const LATENCY_SAMPLE_PER_MINUTE: i64 = 200;

/// An actor restarted within this long is marked on the Actors page.
const RECENT_RESTART_S: f64 = 60.0;

/// The throughput and latency charts of the last hour (SVG), or a note saying why not.
async fn hour_charts(state: &AppState) -> (String, String) {
    let read = async {
        let mut conn = db::connection(&state.pool)
            .await
            .map_err(|e| e.to_string())?;
        db::console::last_hour(&mut conn, LATENCY_SAMPLE_PER_MINUTE)
            .await
            .map_err(|e| e.to_string())
    };
    let minutes = tokio::time::timeout(std::time::Duration::from_secs(2), read)
        .await
        .unwrap_or_else(|_| Err("no answer within 2 s".into()));
    match minutes {
        Ok(minutes) => (charts::throughput(&minutes), charts::latency(&minutes)),
        Err(e) => {
            let note = format!("<p class=\"error\">Charts unavailable: {}</p>", esc(&e));
            (note.clone(), note)
        }
    }
}

/// Queue depths (`main.visible`, `main.inFlight`, `dlq.…`) and SQS reachability as the
/// background `QueueDepths` refresh last read them: no SQS call per poll.
pub(super) fn queue_fields(state: &AppState, fields: &mut Map<String, Value>) {
    let depths = state.depths.latest();
    for queue in ["main", "dlq"] {
        let reading = &depths[queue];
        let (visible, in_flight) = if reading.get("error").is_some() || reading.is_null() {
            ("—".to_string(), "—".to_string())
        } else {
            (
                text_of(&reading["approximateNumberOfMessages"]),
                text_of(&reading["approximateNumberOfMessagesNotVisible"]),
            )
        };
        fields.insert(format!("{queue}.visible"), json!(visible));
        fields.insert(format!("{queue}.inFlight"), json!(in_flight));
    }
    // SQS reachability as the background refresh last saw it: no SQS call per poll.
    let sqs = match depths["main"].get("error") {
        _ if depths.is_null() => "not read yet".to_string(),
        Some(e) => format!("unreachable: {}", text_of(e)),
        None => "reachable".to_string(),
    };
    fields.insert("sqs".into(), json!(sqs));
}

/// The overview's live fields, keyed as the page's `data-field` attributes.
async fn fields(state: &AppState) -> (Map<String, Value>, Vec<(String, i64)>) {
    let mut fields = Map::new();
    queue_fields(state, &mut fields);
    let mut bars = Vec::new();
    match database_figures(state).await {
        Ok((counts, oldest)) => {
            fields.insert("database".into(), json!("reachable"));
            for (status, n) in counts {
                let shown = if n > COUNT_CAP {
                    format!("{COUNT_CAP}+")
                } else {
                    n.to_string()
                };
                fields.insert(format!("status.{}", status.as_str()), json!(shown));
                bars.push((status.as_str().to_string(), n.min(COUNT_CAP + 1)));
            }
            let oldest = oldest.map_or_else(
                || "none waiting".to_string(),
                |at| age((chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0),
            );
            fields.insert("oldestWaiting".into(), json!(oldest));
        }
        Err(e) => {
            fields.insert("database".into(), json!(format!("unreachable: {e}")));
        }
    }
    fields.insert(
        "updatedAt".into(),
        json!(chrono::Utc::now().format("%H:%M:%S UTC").to_string()),
    );
    (fields, bars)
}

/// Jobs by status (bounded counts) and the oldest waiting job's creation time, within 2 s.
async fn database_figures(
    state: &AppState,
) -> Result<
    (
        Vec<(db::models::JobStatus, i64)>,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
    String,
> {
    let read = async {
        let mut conn = db::connection(&state.pool)
            .await
            .map_err(|e| e.to_string())?;
        let counts = db::console::status_counts(&mut conn, COUNT_CAP)
            .await
            .map_err(|e| e.to_string())?;
        let oldest = db::console::oldest_waiting(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok((counts, oldest))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), read)
        .await
        .unwrap_or_else(|_| Err("no answer within 2 s".into()))
}

/// `GET /ui/api/overview`: the live fields and the charts, polled every 2 s.
pub(super) async fn json(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    viewer(&req, &state)?;
    let ((fields, bars), (throughput, latency)) = tokio::join!(fields(&state), hour_charts(&state));
    Ok(live_json(json!({
        "fields": fields,
        "html": {
            "chart": pages::bar_chart("Jobs by status", &bars),
            "throughput": throughput,
            "latency": latency,
        }
    })))
}

/// A live endpoint's answer: never cached.
pub(super) fn live_json(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// A definition list entry whose value console.js keeps current.
fn live(label: &str, key: &str, fields: &Map<String, Value>) -> String {
    let value = fields.get(key).map(text_of).unwrap_or_else(|| "—".into());
    format!(
        "<div class=\"stat\"><dt>{}</dt><dd data-field=\"{}\">{}</dd></div>",
        esc(label),
        esc(key),
        esc(&value)
    )
}

/// `GET /ui`: the overview.
pub(super) async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = viewer(&req, &state)?;
    let ((fields, bars), (throughput, latency)) = tokio::join!(fields(&state), hour_charts(&state));
    let f = |label: &str, key: &str| live(label, key, &fields);
    let mut statuses = String::new();
    for status in db::models::JobStatus::ALL {
        statuses.push_str(&f(status.as_str(), &format!("status.{}", status.as_str())));
    }
    let body = format!(
        "<p class=\"note\">Updated <span data-field=\"updatedAt\">{}</span> \
         <span id=\"live\" aria-live=\"polite\"></span></p>\
         <section aria-labelledby=\"q\"><h2 id=\"q\">Queues</h2><dl class=\"stats\">{}{}{}{}</dl></section>\
         <section aria-labelledby=\"j\"><h2 id=\"j\">Jobs by status</h2>\
         <p class=\"note\">Counts stop at {COUNT_CAP} per status (an index scan bounded by a limit, never a full count).</p>\
         <dl class=\"stats\">{statuses}{}</dl><div id=\"chart\" class=\"chart\">{}</div></section>\
         <section aria-labelledby=\"h\"><h2 id=\"h\">Last hour</h2>\
         <p class=\"note\">Per minute, from the jobs that finished in it. Percentiles are of a sample: \
         at most {LATENCY_SAMPLE_PER_MINUTE} of each minute's finished jobs.</p>\
         <div class=\"charts\"><div id=\"throughput\">{throughput}</div><div id=\"latency\">{latency}</div></div></section>\
         <section aria-labelledby=\"d\"><h2 id=\"d\">Dependencies</h2><dl class=\"stats\">{}{}</dl></section>",
        esc(&fields.get("updatedAt").map(text_of).unwrap_or_default()),
        f("Main queue: visible", "main.visible"),
        f("Main queue: in flight", "main.inFlight"),
        f("DLQ: visible", "dlq.visible"),
        f("DLQ: in flight", "dlq.inFlight"),
        f("Oldest waiting job", "oldestWaiting"),
        pages::bar_chart("Jobs by status", &bars),
        f("PostgreSQL", "database"),
        f("SQS", "sqs"),
    );
    let page = Page {
        title: "Overview",
        tab: Tab::Overview,
        poll: Some("/ui/api/overview".into()),
        body,
    };
    Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))))
}

/// The Actors table's rows and this process's health word, from `/health`'s document and
/// the registry's restart times.
async fn actor_rows(state: &AppState) -> (String, &'static str) {
    let (health, healthy) = crate::api::health::health_body(state).await;
    let views = state.registry.snapshot();
    let mut rows = String::new();
    for actor in health["actors"].as_array().into_iter().flatten() {
        let restarted_age = views
            .iter()
            .find(|v| actor["name"].as_str() == Some(v.name.as_str()))
            .and_then(|v| v.last_restart_age_s);
        rows.push_str(&actor_row(actor, restarted_age));
    }
    (rows, if healthy { "healthy" } else { "unhealthy" })
}

/// Most processes the fleet table lists.
const MAX_PROCESSES: i64 = 200;

/// The fleet table's rows: every process registered in `processes`, stale ones marked.
async fn process_rows(state: &AppState) -> String {
    let read = async {
        let mut conn = db::connection(&state.pool)
            .await
            .map_err(|e| e.to_string())?;
        db::processes::list(&mut conn, MAX_PROCESSES)
            .await
            .map_err(|e| e.to_string())
    };
    let listed = match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => return unavailable_row(&e),
        Err(_) => return unavailable_row("no answer within 2 s"),
    };
    let mut rows = String::new();
    for listed in listed {
        let (p, heartbeat_age_s) = (listed.process, listed.heartbeat_age_s);
        let stale = heartbeat_age_s > crate::fleet::STALE_AFTER_S;
        let me = if p.id == state.process_id {
            " (this process)"
        } else {
            ""
        };
        let _ = write!(
            rows,
            "<tr class=\"{}\" data-testid=\"process-{}\"><th scope=\"row\"><code>{}</code>{me}</th>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td data-testid=\"process-state\">{}</td></tr>",
            if stale { "alert" } else { "ok" },
            p.id,
            esc(&p.id.to_string()[..8]),
            esc(&p.host),
            p.pid,
            esc(&p.roles),
            esc(&p.version),
            p.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            esc(&age(heartbeat_age_s.max(0.0))),
            if stale { "stale" } else { "live" },
        );
    }
    rows
}

/// A fleet table row saying why there are no rows.
fn unavailable_row(why: &str) -> String {
    format!(
        "<tr><td colspan=\"8\" class=\"error\">Processes unavailable: {}</td></tr>",
        esc(why)
    )
}

/// The fleet table around `rows`.
fn process_table(rows: &str) -> String {
    pages::live_table(
        "Processes sharing the database",
        &[
            "Process",
            "Host",
            "PID",
            "Roles",
            "Version",
            "Started",
            "Heartbeat age",
            "State",
        ],
        rows,
        "processes",
    )
}

/// `GET /ui/api/actors`: the Actors table's rows, polled every 2 s.
pub(super) async fn actors_json(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    viewer(&req, &state)?;
    let ((rows, overall), processes) = tokio::join!(actor_rows(&state), process_rows(&state));
    Ok(live_json(json!({
        "fields": {
            "health": overall,
            "updatedAt": chrono::Utc::now().format("%H:%M:%S UTC").to_string(),
        },
        "html": { "actors": rows, "processes": processes },
    })))
}

/// `GET /ui/actors`: every actor of this process, as `/health` reports it (live).
pub(super) async fn actors(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = viewer(&req, &state)?;
    let ((rows, overall), processes) = tokio::join!(actor_rows(&state), process_rows(&state));
    let body = format!(
        "<p>This process is <strong data-testid=\"health\" data-field=\"health\">{overall}</strong>. \
         Updated <span data-field=\"updatedAt\">{}</span> <span id=\"live\" aria-live=\"polite\"></span></p>\
         <p class=\"note\">A row in red is not running (a restart storm shows as <code>restarting</code>); \
         a marked row restarted within the last minute.</p>{}\
         <h2>Processes</h2><p class=\"note\">Every process registers itself and refreshes its row every {} s; \
         a row in red has missed three refreshes (stale: the process is stuck, cut off or killed). \
         A clean shutdown removes the row; a killed process's row goes after an hour.</p>{}",
        chrono::Utc::now().format("%H:%M:%S UTC"),
        pages::live_table(
            "Actors of this process",
            &[
                "Actor",
                "Kind",
                "State",
                "Restarts",
                "Last restart cause",
                "Heartbeat age",
                "Job in hand",
                "Details"
            ],
            &rows,
            "actors"
        ),
        crate::fleet::HEARTBEAT_INTERVAL.as_secs(),
        process_table(&processes),
    );
    let page = Page {
        title: "Actors",
        tab: Tab::Actors,
        poll: Some("/ui/api/actors".into()),
        body,
    };
    Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))))
}

/// One actor's row; a restart storm (`restarting`) or any non-running state stands out,
/// and so does a restart within the last minute (`restarted_age`: seconds since the last).
fn actor_row(actor: &Value, restarted_age: Option<f64>) -> String {
    let state = text_of(&actor["state"]);
    let recent = restarted_age.is_some_and(|s| s < RECENT_RESTART_S);
    let class = match (state == "running", recent) {
        (false, _) => "alert",
        (true, true) => "restarted",
        (true, false) => "ok",
    };
    let restarts = match restarted_age {
        Some(s) if recent => format!("{} (last {} ago)", text_of(&actor["restarts"]), age(s)),
        _ => text_of(&actor["restarts"]),
    };
    let job = match actor["job"].as_str() {
        Some(id) => format!(
            "<a href=\"/ui/jobs/{0}\">{0}</a> for {1}",
            esc(id),
            age(actor["jobAgeS"].as_f64().unwrap_or(0.0))
        ),
        None => "—".into(),
    };
    let heartbeat = actor["heartbeatAgeS"]
        .as_f64()
        .map_or_else(|| "—".into(), age);
    let details: Vec<String> = [
        "pendingWrites",
        "lastFlushMs",
        "consecutiveErrors",
        "waitingForDatabase",
        "idleWorkers",
        "busyWorkers",
    ]
    .iter()
    .filter(|k| !actor[**k].is_null())
    .map(|k| format!("{k}: {}", text_of(&actor[*k])))
    .collect();
    format!(
        "<tr class=\"{class}\"><th scope=\"row\">{}</th><td>{}</td><td data-testid=\"state\">{}</td>\
         <td data-testid=\"restarts\">{}</td><td>{}</td><td>{}</td><td>{job}</td><td>{}</td></tr>",
        esc(&text_of(&actor["name"])),
        esc(&text_of(&actor["kind"])),
        esc(&state),
        esc(&restarts),
        esc(&text_of(&actor["lastRestartCause"])),
        esc(&heartbeat),
        esc(&details.join(", "))
    )
}
