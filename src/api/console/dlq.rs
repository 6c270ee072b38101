//! Dead letters: the DLQ's messages with their reports and reasons; redrive the
//! selection or all, discard the selection — through [`crate::dlq::DlqGate`], as
//! `/dlq`, `/dlq/redrive` and `DELETE /dlq/{messageId}` do.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::pages::{self, csrf_input, esc, Page, Tab};
use super::{acting_viewer, html, outcome_page, viewer, ConsoleError, Form};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::dlq::{DlqEntry, Selection};

/// How many messages the page lists (the JSON API's default).
const PAGE: usize = 100;

/// `GET /ui/api/dlq`: the DLQ's depth as the background refresh last read it, polled
/// every 2 s. The listing itself is not polled: it receives the messages from SQS.
pub(super) async fn live(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    viewer(&req, &state)?;
    let mut fields = serde_json::Map::new();
    super::overview::queue_fields(&state, &mut fields);
    fields.insert(
        "updatedAt".into(),
        chrono::Utc::now().format("%H:%M:%S UTC").to_string().into(),
    );
    Ok(super::overview::live_json(
        serde_json::json!({ "fields": fields }),
    ))
}

/// The live line above the listing: the DLQ's depth now.
fn depth_line(state: &AppState) -> String {
    let mut fields = serde_json::Map::new();
    super::overview::queue_fields(state, &mut fields);
    let shown = |key: &str| esc(&fields.get(key).map(pages::text_of).unwrap_or_default());
    format!(
        "<p class=\"note\">In the DLQ now: <span data-field=\"dlq.visible\" data-testid=\"dlq-visible\">{}</span> visible, \
         <span data-field=\"dlq.inFlight\">{}</span> in flight (live, from the depth refresh every 5 s; \
         updated <span data-field=\"updatedAt\">{}</span>) <span id=\"live\" aria-live=\"polite\"></span>. \
         The list below is as of loading the page: reload to list again.</p>",
        shown("dlq.visible"),
        shown("dlq.inFlight"),
        chrono::Utc::now().format("%H:%M:%S UTC")
    )
}

/// `GET /ui/dlq`.
pub(super) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = viewer(&req, &state)?;
    let entries = state
        .dlq
        .list(&state.queue, &state.pool, PAGE)
        .await
        .map_err(ApiError::from)?;
    let mut rows = String::new();
    for entry in &entries {
        rows.push_str(&entry_row(entry, viewer.is_admin()));
    }
    let table = pages::table(
        "Messages in the dead-letter queue",
        &[
            "", "Message", "Report", "Status", "Attempts", "Reason", "Sent",
        ],
        &rows,
    );
    let body = if viewer.is_admin() {
        format!(
            "{}<p data-testid=\"dlq-count\">{} messages.</p>\
             <form method=\"post\" action=\"/ui/dlq/action\" data-confirm=\"message\" data-total=\"{}\">{}\
             <p class=\"actions\"><label><input type=\"checkbox\" data-select-all> Select all</label>\
             <button type=\"submit\" name=\"action\" value=\"redrive\" data-verb=\"Redrive\">Redrive selected</button>\
             <button type=\"submit\" name=\"action\" value=\"redrive-all\" data-verb=\"Redrive\" data-all>Redrive all</button>\
             <button type=\"submit\" name=\"action\" value=\"discard\" data-verb=\"Discard\">Discard selected</button></p>{table}</form>",
            depth_line(&state),
            entries.len(),
            entries.len(),
            csrf_input(&viewer)
        )
    } else {
        format!(
            "{}<p data-testid=\"dlq-count\">{} messages.</p>{table}",
            depth_line(&state),
            entries.len()
        )
    };
    let page = Page {
        title: "Dead letters",
        tab: Tab::DeadLetters,
        poll: Some("/ui/api/dlq".into()),
        body,
    };
    Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))))
}

fn entry_row(entry: &DlqEntry, selectable: bool) -> String {
    let check = if selectable {
        format!(
            "<input type=\"checkbox\" name=\"ids\" value=\"{0}\" aria-label=\"Select {0}\">",
            esc(&entry.message_id)
        )
    } else {
        String::new()
    };
    let report = entry.report_id.map_or_else(
        || "—".to_string(),
        |id| format!("<a href=\"/ui/jobs/{id}\">{id}</a>"),
    );
    let reason = entry
        .poison_reason
        .as_deref()
        .or(entry.last_error.as_deref())
        .unwrap_or("");
    format!(
        "<tr><td>{check}</td><td><code>{}</code></td><td>{report}</td><td>{}</td><td>{}</td><td class=\"error-text\">{}</td><td>{}</td></tr>",
        esc(&entry.message_id),
        esc(entry.report_status.as_deref().unwrap_or("—")),
        entry.attempts.map_or_else(|| "—".into(), |a| a.to_string()),
        esc(reason),
        entry
            .sent_at
            .map_or_else(|| "—".into(), |at| at.format("%Y-%m-%d %H:%M:%S").to_string())
    )
}

/// `POST /ui/dlq/action` with `action=redrive|redrive-all|discard`, `ids=…`, `csrf`.
pub(super) async fn action(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::read(body, &state).await?;
    let viewer = acting_viewer(&req, &state, &form)?;
    let ids = form.all("ids");
    let action = form.first("action").unwrap_or_default().to_string();
    let all = action == "redrive-all";
    if ids.is_empty() && !all {
        return Err(ApiError::invalid("ids", "select at least one message").into());
    }
    let (title, lines) = match action.as_str() {
        "redrive" | "redrive-all" => {
            let selection = Selection {
                ids: if all { Vec::new() } else { ids.clone() },
                all,
            };
            let report = state
                .dlq
                .redrive(&state.queue, &state.pool, &selection)
                .await
                .map_err(ApiError::from)?;
            let mut lines: Vec<String> = report
                .moved
                .iter()
                .map(|id| format!("{id}: sent back"))
                .collect();
            lines.extend(
                report
                    .skipped
                    .iter()
                    .map(|s| format!("skipped: {}", serde_json::to_string(s).unwrap_or_default())),
            );
            lines.extend(
                report
                    .not_found
                    .iter()
                    .map(|id| format!("{id}: not in the DLQ")),
            );
            (format!("Redrove {} messages.", report.moved.len()), lines)
        }
        "discard" => discard(&state, &ids).await?,
        other => {
            return Err(ApiError::invalid(
                "action",
                format!("`{other}` is not redrive, redrive-all or discard"),
            )
            .into())
        }
    };
    tracing::info!(who = %viewer.name, action = %action, selected = ids.len(), "console DLQ action");
    Ok(outcome_page(&viewer, &title, &lines, "/ui/dlq"))
}

/// Discards each selected message; the lines say which were gone already.
async fn discard(state: &AppState, ids: &[String]) -> Result<(String, Vec<String>), ApiError> {
    let mut lines = Vec::with_capacity(ids.len());
    let mut done = 0;
    for id in ids {
        if state.dlq.discard(&state.queue, &state.pool, id).await? {
            done += 1;
            lines.push(format!("{id}: discarded"));
        } else {
            lines.push(format!("{id}: not in the DLQ"));
        }
    }
    Ok((format!("Discarded {done} messages."), lines))
}
