//! Jobs: the filtered listing (the JSON API's query and keyset cursor), one job's page
//! (live status and progress), and retry / cancel of one job or a selection, through
//! the same functions `POST /reports/{id}/retry` and `…/cancel` run.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use uuid::Uuid;

use super::pages::{self, csrf_input, esc, text_of, Page, Tab};
use super::session::Viewer;
use super::{acting_viewer, html, outcome_page, viewer, ConsoleError, Form};
use crate::api::reports::{self, encode_cursor, find_report, parse_id, record_json};
use crate::api::AppState;
use crate::db::models::JobStatus;
use crate::db::{self};

/// Most jobs one bulk action takes (a page's worth: the selection is a page's checkboxes).
const MAX_SELECTION: usize = 200;

/// The listing's filters, as the form names them and the JSON API reads them.
pub(super) const FILTERS: [&str; 5] = ["status", "userId", "createdFrom", "createdTo", "error"];

/// The listing's query with empty fields (an unset filter) left out, so that the JSON
/// API's parser ([`reports::parse_list_query`]) reads exactly what it reads there.
pub(super) fn listing_query(raw: &str) -> String {
    url::form_urlencoded::parse(raw.as_bytes())
        .filter(|(k, v)| {
            !v.is_empty()
                && (FILTERS.contains(&k.as_ref()) || matches!(k.as_ref(), "cursor" | "limit"))
        })
        .fold(
            url::form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish()
}

/// The filter part of a listing query (no cursor, no page size).
pub(super) fn filter_query(query: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| FILTERS.contains(&k.as_ref()))
        .fold(
            url::form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish()
}

/// The first value of `key` in a query string, or "".
fn query_value(query: &str, key: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The filter form, filled with the query's values (valid or not, so a mistake can be
/// corrected in place).
pub(super) fn filter_form(query: &str) -> String {
    let status = query_value(query, "status");
    let mut options = String::from("<option value=\"\">any</option>");
    for s in JobStatus::ALL {
        let selected = if s.as_str() == status {
            " selected"
        } else {
            ""
        };
        options.push_str(&format!("<option{selected}>{}</option>", s.as_str()));
    }
    let v = |key: &str| esc(&query_value(query, key));
    format!(
        "<form method=\"get\" action=\"/ui/jobs\" class=\"filters\">\
         <label for=\"status\">Status</label><select id=\"status\" name=\"status\">{options}</select>\
         <label for=\"userId\">User id</label><input id=\"userId\" name=\"userId\" inputmode=\"numeric\" size=\"8\" value=\"{}\">\
         <label for=\"createdFrom\">Created from (UTC)</label><input id=\"createdFrom\" name=\"createdFrom\" type=\"datetime-local\" value=\"{}\">\
         <label for=\"createdTo\">to</label><input id=\"createdTo\" name=\"createdTo\" type=\"datetime-local\" value=\"{}\">\
         <label for=\"error\">Last error contains</label><input id=\"error\" name=\"error\" type=\"search\" maxlength=\"200\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>",
        v("userId"),
        v("createdFrom"),
        v("createdTo"),
        v("error"),
    )
}

/// One page of the listing for the console's `query` (already [`listing_query`]).
async fn listing(
    state: &AppState,
    query: &str,
) -> Result<(db::reports::ListFilter, Vec<db::models::ReportRecord>), ConsoleError> {
    let filter = reports::parse_list_query(query)?;
    let mut conn = db::connection(&state.pool)
        .await
        .map_err(crate::api::error::ApiError::from)?;
    let rows = db::reports::list(&mut conn, &filter)
        .await
        .map_err(crate::api::error::ApiError::from)?;
    Ok((filter, rows))
}

/// `GET /ui/api/jobs?…`: the rows of the same page, polled every 2 s (the page keeps its
/// rows while a checkbox is ticked, so a selection is never lost). A bad filter is a 400
/// naming it, as on `GET /reports`.
pub(super) async fn list_json(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = viewer(&req, &state)?;
    let (_, rows) = listing(&state, &listing_query(req.query_string())).await?;
    let mut table_rows = String::new();
    for row in &rows {
        table_rows.push_str(&job_row(row, viewer.is_admin()));
    }
    Ok(super::overview::live_json(json!({
        "fields": { "updatedAt": chrono::Utc::now().format("%H:%M:%S UTC").to_string() },
        "html": { "rows": table_rows },
    })))
}

/// The "Next page" link: the same filters, the last row's cursor.
fn next_link(
    query: &str,
    filter: &db::reports::ListFilter,
    rows: &[db::models::ReportRecord],
) -> String {
    let Some(last) = rows.last().filter(|_| rows.len() as i64 == filter.limit) else {
        return String::new();
    };
    let mut next = url::form_urlencoded::Serializer::for_suffix(filter_query(query), 0);
    next.append_pair("cursor", &encode_cursor(last.created_at, last.id));
    format!(
        "<p><a rel=\"next\" href=\"/ui/jobs?{}\">Next page</a></p>",
        esc(&next.finish())
    )
}

/// `GET /ui/jobs?status=&userId=&createdFrom=&createdTo=&error=&cursor=`: newest first, a
/// page at a time (live). A bad filter shows the form again with the reason (the page
/// answers 200, as the sign-in form does: the API's error middleware would turn an HTML
/// 400 into JSON).
pub(super) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = viewer(&req, &state)?;
    let query = listing_query(req.query_string());
    let (filter, rows) = match listing(&state, &query).await {
        Ok(listed) => listed,
        Err(ConsoleError::Api(e)) if e.status == StatusCode::BAD_REQUEST => {
            let body = format!(
                "{}<p class=\"error\" role=\"alert\" data-testid=\"filter-error\">{}: {}</p>",
                filter_form(&query),
                esc(e.field.as_deref().unwrap_or("filter")),
                esc(&e.message)
            );
            let page = Page {
                title: "Jobs",
                tab: Tab::Jobs,
                poll: None,
                body,
            };
            return Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))));
        }
        Err(e) => return Err(e),
    };
    let mut table_rows = String::new();
    for row in &rows {
        table_rows.push_str(&job_row(row, viewer.is_admin()));
    }
    let next = next_link(&query, &filter, &rows);
    let back = format!("/ui/jobs?{query}");
    let table = pages::live_table(
        "Jobs, newest first",
        &[
            "",
            "Id",
            "Status",
            "User",
            "Created",
            "Attempts",
            "Last error",
        ],
        &table_rows,
        "rows",
    );
    let body = format!(
        "{}{}<p class=\"note\">Updated <span data-field=\"updatedAt\">{}</span> \
         <span id=\"live\" aria-live=\"polite\"></span></p>{}{next}",
        filter_form(&query),
        super::bulk::links(&viewer, &query),
        chrono::Utc::now().format("%H:%M:%S UTC"),
        bulk_form(&viewer, &table, &back)
    );
    let page = Page {
        title: "Jobs",
        tab: Tab::Jobs,
        poll: Some(format!("/ui/api/jobs?{query}")),
        body,
    };
    Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))))
}

/// The table inside the bulk-action form (admins), or bare (readers: no buttons).
fn bulk_form(viewer: &Viewer, table: &str, back: &str) -> String {
    if !viewer.is_admin() {
        return table.to_string();
    }
    format!(
        "<form method=\"post\" action=\"/ui/jobs/action\" data-confirm=\"job\">{}\
         <input type=\"hidden\" name=\"back\" value=\"{}\">\
         <p class=\"actions\"><label><input type=\"checkbox\" data-select-all> Select all on this page</label>\
         <button type=\"submit\" name=\"action\" value=\"retry\" data-verb=\"Retry\">Retry selected</button>\
         <button type=\"submit\" name=\"action\" value=\"cancel\" data-verb=\"Cancel\">Cancel selected</button></p>\
         {table}</form>",
        csrf_input(viewer),
        esc(back)
    )
}

fn job_row(row: &db::models::ReportRecord, selectable: bool) -> String {
    let check = if selectable {
        format!(
            "<input type=\"checkbox\" name=\"ids\" value=\"{0}\" aria-label=\"Select {0}\">",
            row.id
        )
    } else {
        String::new()
    };
    format!(
        "<tr data-id=\"{id}\"><td>{check}</td><td><a href=\"/ui/jobs/{id}\">{id}</a></td>\
         <td><span class=\"status status-{s}\">{s}</span></td><td>{}</td><td>{}</td><td>{}</td><td class=\"error-text\">{}</td></tr>",
        row.user_id.map(|u| u.to_string()).unwrap_or_else(|| "—".into()),
        row.created_at.format("%Y-%m-%d %H:%M:%S"),
        row.attempts,
        esc(row.last_error.as_deref().unwrap_or("")),
        id = row.id,
        s = esc(&row.status),
    )
}

/// The live fields of one job, keyed as its page's `data-field` attributes.
fn job_fields(report: &Value) -> Value {
    let progress = &report["progress"];
    json!({
        "status": text_of(&report["status"]),
        "attempts": text_of(&report["attempts"]),
        "failures": text_of(&report["failures"]),
        "lastError": text_of(&report["lastError"]),
        "startedAt": text_of(&report["startedAt"]),
        "finishedAt": text_of(&report["finishedAt"]),
        "enqueuedAt": text_of(&report["enqueuedAt"]),
        "stage": text_of(&progress["stage"]),
        "percent": progress["percent"].as_f64().unwrap_or(0.0),
        "eta": report["etaS"].as_f64().map_or_else(|| "—".into(), pages::age),
    })
}

/// `GET /ui/api/jobs/{id}`: the job page's live fields, polled every 2 s.
pub(super) async fn json(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    viewer(&req, &state)?;
    let id = parse_id(&path)?;
    let record = find_report(&state, id).await?;
    let report = record_json(&record, state.store.link_ttl_s());
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({ "fields": job_fields(&report) })))
}

/// `GET /ui/jobs/{id}/file`: the report's file or its download link, as
/// `GET /reports/{id}/file` answers it, for a signed-in viewer.
pub(super) async fn file(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    viewer(&req, &state)?;
    Ok(reports::file(path, state).await?)
}

/// `GET /ui/jobs/{id}`: payload, timeline, progress, last error, file, webhooks, actions.
pub(super) async fn detail(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = viewer(&req, &state)?;
    let id = parse_id(&path)?;
    let record = find_report(&state, id).await?;
    let report = record_json(&record, state.store.link_ttl_s());
    let fields = job_fields(&report);
    let field = |key: &str| {
        format!(
            "<dd data-field=\"{key}\">{}</dd>",
            esc(&fields[key]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text_of(&fields[key])))
        )
    };
    let percent = fields["percent"].as_f64().unwrap_or(0.0);
    let payload = serde_json::to_string_pretty(&report["payload"]).unwrap_or_default();
    let body = format!(
        "<dl class=\"stats\"><div class=\"stat\"><dt>Status</dt>{}</div><div class=\"stat\"><dt>Attempts</dt>{}</div>\
         <div class=\"stat\"><dt>Failures</dt>{}</div><div class=\"stat\"><dt>ETA</dt>{}</div></dl>\
         <p><label for=\"progress\">Progress</label> <progress id=\"progress\" max=\"100\" value=\"{percent}\" data-bar=\"percent\">{percent}%</progress> {}</p>\
         <h2>Timeline</h2><dl class=\"timeline\"><dt>Created</dt><dd>{}</dd><dt>Enqueued</dt>{}<dt>Started</dt>{}<dt>Finished</dt>{}</dl>\
         <h2>Last error</h2><pre class=\"error-text\" data-field=\"lastError\">{}</pre>\
         <h2>File</h2>{}<h2>Payload</h2><pre>{}</pre><h2>Webhook deliveries</h2>{}{}",
        field("status"),
        field("attempts"),
        field("failures"),
        field("eta"),
        field("stage").replace("<dd", "<span").replace("</dd>", "</span>"),
        esc(&text_of(&report["createdAt"])),
        field("enqueuedAt"),
        field("startedAt"),
        field("finishedAt"),
        esc(&text_of(&report["lastError"])),
        file_block(&report, id),
        esc(&payload),
        webhooks_block(&state, id).await,
        actions_block(&viewer, id),
    );
    let title = format!("Job {id}");
    let page = Page {
        title: &title,
        tab: Tab::Jobs,
        poll: Some(format!("/ui/api/jobs/{id}")),
        body,
    };
    Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))))
}

/// The download link: `/ui/jobs/{id}/file`, the JSON API's `GET /reports/{id}/file`
/// behind the session cookie (a link cannot carry a bearer header).
fn file_block(report: &Value, id: Uuid) -> String {
    match report["file"].as_object() {
        Some(file) => format!(
            "<p><a href=\"/ui/jobs/{id}/file\">Download</a> ({} bytes, {}, SHA-256 <code>{}</code>)</p>",
            esc(&text_of(&file["sizeBytes"])),
            esc(&text_of(&file["contentType"])),
            esc(&text_of(&file["sha256"]))
        ),
        None => "<p>No file (yet).</p>".into(),
    }
}

/// The report's webhook deliveries, as `GET /reports/{id}/webhooks` lists them.
async fn webhooks_block(state: &AppState, id: Uuid) -> String {
    let deliveries = match crate::api::webhooks::deliveries(state, id).await {
        Ok(d) => serde_json::to_value(&d.items).unwrap_or(Value::Null),
        Err(e) => return format!("<p class=\"error\">{}</p>", esc(&e.to_string())),
    };
    let mut rows = String::new();
    for d in deliveries.as_array().into_iter().flatten() {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&text_of(&d["endpoint"])),
            esc(&text_of(&d["event"])),
            esc(&text_of(&d["state"])),
            esc(&text_of(&d["attempts"])),
            esc(&text_of(&d["lastStatusCode"])),
            esc(&text_of(&d["lastError"]))
        ));
    }
    if rows.is_empty() {
        return "<p>None.</p>".into();
    }
    pages::table(
        "Deliveries",
        &[
            "Endpoint",
            "Event",
            "State",
            "Tries",
            "Last status",
            "Last error",
        ],
        &rows,
    )
}

/// Retry and cancel buttons (admins only).
fn actions_block(viewer: &Viewer, id: Uuid) -> String {
    if !viewer.is_admin() {
        return String::new();
    }
    format!(
        "<h2>Actions</h2><form method=\"post\" action=\"/ui/jobs/action\" data-confirm=\"job\">{}\
         <input type=\"hidden\" name=\"ids\" value=\"{id}\"><input type=\"hidden\" name=\"back\" value=\"/ui/jobs/{id}\">\
         <button type=\"submit\" name=\"action\" value=\"retry\" data-verb=\"Retry\">Retry</button> \
         <button type=\"submit\" name=\"action\" value=\"cancel\" data-verb=\"Cancel\">Cancel</button></form>",
        csrf_input(viewer)
    )
}

/// What a console action does to each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobAction {
    Retry,
    Cancel,
}

impl JobAction {
    /// The form's spelling (`retry`, `cancel`), or a 400 naming `action`.
    pub(super) fn parse(raw: Option<&str>) -> Result<JobAction, crate::api::error::ApiError> {
        match raw {
            Some("retry") => Ok(JobAction::Retry),
            Some("cancel") => Ok(JobAction::Cancel),
            _ => Err(crate::api::error::ApiError::invalid(
                "action",
                "action must be retry or cancel",
            )),
        }
    }

    /// The verb, capitalised, for buttons and outcomes.
    pub(super) fn verb(self) -> &'static str {
        match self {
            JobAction::Retry => "Retry",
            JobAction::Cancel => "Cancel",
        }
    }

    /// The form's spelling.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            JobAction::Retry => "retry",
            JobAction::Cancel => "cancel",
        }
    }
}

/// Retries or cancels one job through the functions `POST /reports/{id}/retry` and
/// `…/cancel` run; the outcome in words.
pub(super) async fn apply(
    state: &web::Data<AppState>,
    action: JobAction,
    id: Uuid,
) -> Result<String, crate::api::error::ApiError> {
    match action {
        JobAction::Retry => reports::retry(web::Path::from(id.to_string()), state.clone())
            .await
            .map(|_| "retried".to_string()),
        JobAction::Cancel => reports::cancel_one(state, id, None)
            .await
            .map(|(_, record)| format!("now {}", record.status)),
    }
}

/// `POST /ui/jobs/action` with `action=retry|cancel`, `ids=…` (one or more), `csrf`.
pub(super) async fn action(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::read(body, &state).await?;
    let viewer = acting_viewer(&req, &state, &form)?;
    let action = JobAction::parse(form.first("action"))?;
    let ids = form.all("ids");
    if ids.is_empty() || ids.len() > MAX_SELECTION {
        return Err(crate::api::error::ApiError::invalid(
            "ids",
            format!("select between 1 and {MAX_SELECTION} jobs"),
        )
        .into());
    }
    let ids = ids
        .iter()
        .map(|raw| parse_id(raw))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lines = Vec::with_capacity(ids.len());
    let mut done = 0;
    for id in &ids {
        match apply(&state, action, *id).await {
            Ok(what) => {
                done += 1;
                lines.push(format!("{id}: {what}"));
            }
            Err(e) => lines.push(format!("{id}: refused: {e}")),
        }
    }
    tracing::info!(who = %viewer.name, action = ?action, selected = ids.len(), done, "console job action");
    let back = form
        .first("back")
        .filter(|b| b.starts_with("/ui"))
        .unwrap_or("/ui/jobs");
    let verb = if action == JobAction::Retry {
        "Retried"
    } else {
        "Cancelled"
    };
    Ok(outcome_page(
        &viewer,
        &format!("{verb} {done} of {} jobs.", ids.len()),
        &lines,
        back,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_query_drops_empty_and_foreign_fields() {
        assert_eq!(
            listing_query("status=&userId=7&flash=x&cursor=abc"),
            "userId=7&cursor=abc"
        );
        assert_eq!(listing_query(""), "");
        assert_eq!(
            listing_query("createdFrom=2026-01-01T10%3A00&createdTo=&error=time+out"),
            "createdFrom=2026-01-01T10%3A00&error=time+out"
        );
    }

    #[test]
    fn the_form_keeps_what_was_typed_even_when_it_is_wrong() {
        let form = filter_form("createdFrom=yesterday&error=%3Cb%3E");
        assert!(form.contains("value=\"yesterday\""), "{form}");
        assert!(form.contains("value=\"&lt;b&gt;\""), "{form}");
    }
}
