//! Retry or cancel everything matching the Jobs page's filter: a confirmation page that
//! states the (bounded) count, then the action in batches of one listing page, each job
//! through the same function as `POST /reports/{id}/retry` and `…/cancel`, audit-logged
//! with the viewer's token name, the action and the filter.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::jobs::{apply, filter_form, filter_query, listing_query, JobAction, FILTERS};
use super::pages::{self, csrf_input, esc, Page, Tab};
use super::session::Viewer;
use super::{acting_viewer, admin_viewer, html, outcome_page, ConsoleError, Form};
use crate::api::error::ApiError;
use crate::api::reports::parse_list_query;
use crate::api::AppState;
use crate::db;
use crate::db::reports::ListFilter;

/// Most jobs one bulk action counts and acts on; more matching are left for another run.
const MAX_BULK: usize = 10_000;

/// "Retry all matching…" and "Cancel all matching…" on the Jobs page (admins only).
pub(super) fn links(viewer: &Viewer, query: &str) -> String {
    if !viewer.is_admin() {
        return String::new();
    }
    let filters = filter_query(query);
    let href = |action: &str| {
        let sep = if filters.is_empty() { "" } else { "&" };
        esc(&format!("/ui/jobs/bulk?action={action}{sep}{filters}"))
    };
    format!(
        "<p class=\"actions\">Everything matching this filter: \
         <a href=\"{}\" data-testid=\"bulk-retry\">Retry all matching…</a> \
         <a href=\"{}\" data-testid=\"bulk-cancel\">Cancel all matching…</a></p>",
        href("retry"),
        href("cancel")
    )
}

/// The keys of every job matching `filter`, newest first, at most `MAX_BULK + 1` (one
/// more says "more than"), in one walk along the listing's index.
async fn matching(state: &AppState, filter: &ListFilter) -> Result<Vec<uuid::Uuid>, ApiError> {
    let all = ListFilter {
        limit: MAX_BULK as i64 + 1,
        after: None,
        ..filter.clone()
    };
    let mut conn = db::connection(&state.pool).await?;
    let keys = db::reports::list_keys(&mut conn, &all).await?;
    Ok(keys.into_iter().map(|(_, id)| id).collect())
}

/// How a count reads: "3 jobs", or "more than 10000 jobs".
fn count_text(n: usize) -> String {
    match n {
        n if n > MAX_BULK => format!("more than {MAX_BULK} jobs"),
        1 => "1 job".to_string(),
        n => format!("{n} jobs"),
    }
}

/// `GET /ui/jobs/bulk?action=retry|cancel&<filters>`: the confirmation, stating how many
/// jobs match (admins only; nothing changes here).
pub(super) async fn confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let viewer = admin_viewer(&req, &state)?;
    let raw = listing_query(req.query_string());
    let action = JobAction::parse(
        url::form_urlencoded::parse(req.query_string().as_bytes())
            .find(|(k, _)| k == "action")
            .map(|(_, v)| v.into_owned())
            .as_deref(),
    )?;
    let filters = filter_query(&raw);
    let filter = parse_list_query(&filters)?;
    let n = matching(&state, &filter).await?.len();
    let mut hidden = csrf_input(&viewer);
    for (k, v) in url::form_urlencoded::parse(filters.as_bytes()) {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(&k),
            esc(&v)
        ));
    }
    let what = if filters.is_empty() {
        "every job".to_string()
    } else {
        format!("the filter <code>{}</code>", esc(&filters))
    };
    let limit_note = if n > MAX_BULK {
        format!(
            "<p class=\"error\">More than {MAX_BULK} jobs match: the newest {MAX_BULK} are acted on; run it again for the rest.</p>"
        )
    } else {
        String::new()
    };
    let body = if n == 0 {
        format!("<p data-testid=\"bulk-count\">No job matches {what}.</p><p><a href=\"/ui/jobs?{}\">Back</a></p>", esc(&filters))
    } else {
        format!(
            "<p data-testid=\"bulk-count\">{} {} matching {what}?</p>{limit_note}\
             <p class=\"note\">Each job goes through the same function as <code>POST /reports/{{id}}/{}</code>; \
             jobs it does not apply to are counted as refused.</p>\
             <form method=\"post\" action=\"/ui/jobs/bulk\">{hidden}\
             <p class=\"actions\"><button type=\"submit\" name=\"action\" value=\"{}\">{} {}</button> \
             <a href=\"/ui/jobs?{}\">Back</a></p></form>",
            action.verb(),
            count_text(n),
            action.as_str(),
            action.as_str(),
            action.verb(),
            count_text(n.min(MAX_BULK)),
            esc(&filters)
        )
    };
    let page = Page {
        title: "Confirm",
        tab: Tab::Jobs,
        poll: None,
        body: format!("{}{body}", filter_form(&filters)),
    };
    Ok(html(StatusCode::OK, pages::layout(&page, Some(&viewer))))
}

/// `POST /ui/jobs/bulk` with `action`, the filters and `csrf`: acts on up to
/// [`MAX_BULK`] matching jobs, newest first; the outcome counts each result.
pub(super) async fn act(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::read(body, &state).await?;
    let viewer = acting_viewer(&req, &state, &form)?;
    let action = JobAction::parse(form.first("action"))?;
    let mut filters = url::form_urlencoded::Serializer::new(String::new());
    for key in FILTERS {
        if let Some(v) = form.first(key).filter(|v| !v.is_empty()) {
            filters.append_pair(key, v);
        }
    }
    let filters = filters.finish();
    let filter = parse_list_query(&filters)?;
    let mut ids = matching(&state, &filter).await?;
    let more = ids.len() > MAX_BULK;
    ids.truncate(MAX_BULK);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut done = 0;
    for id in &ids {
        let outcome = match apply(&state, action, *id).await {
            Ok(what) => {
                done += 1;
                what
            }
            Err(e) => format!("refused: {}", e.message),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    tracing::info!(
        who = %viewer.name, action = action.as_str(), filter = %filters,
        matched = ids.len(), more, done, "console bulk job action"
    );
    let lines: Vec<String> = outcomes
        .iter()
        .map(|(what, n)| format!("{n}: {what}"))
        .collect();
    let rest = if more {
        " More match: run it again for the rest."
    } else {
        ""
    };
    Ok(outcome_page(
        &viewer,
        &format!(
            "{}: {done} of {} matching jobs done.{rest}",
            action.verb(),
            ids.len()
        ),
        &lines,
        &format!("/ui/jobs?{filters}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_part_drops_the_cursor_and_the_page_size() {
        assert_eq!(
            filter_query("status=failed&cursor=abc&limit=5&error=x"),
            "status=failed&error=x"
        );
    }

    #[test]
    fn a_count_past_the_cap_reads_more_than() {
        assert_eq!(count_text(1), "1 job");
        assert_eq!(count_text(3), "3 jobs");
        assert_eq!(count_text(MAX_BULK + 1), "more than 10000 jobs");
    }
}
