//! `/dlq`: see why jobs failed, send them back, discard them.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::{ApiError, ErrorBody};
use super::input::{self, BodyShape};
use super::AppState;
use crate::dlq::{DlqError, Selection};

/// Most messages `GET /dlq` lists.
const MAX_LIMIT: i64 = 1000;

impl From<DlqError> for ApiError {
    fn from(error: DlqError) -> Self {
        tracing::error!(%error, "DLQ operation failed");
        ApiError::unavailable(error.to_string())
    }
}

#[utoipa::path(
    get,
    path = "/dlq",
    tag = "dlq",
    operation_id = "listDlq",
    summary = "The DLQ's messages with their reports, without consuming them",
    params(super::schemas::DlqListQuery),
    responses(
        (status = 200, description = "The messages", body = super::schemas::DlqPage),
        (status = 400, description = "A bad or unknown query parameter (`field` names it)", body = ErrorBody),
        super::schemas::ReadErrors,
    ),
    security(("bearer" = []))
)]
/// `GET /dlq?limit=`: the DLQ's messages, without consuming them.
pub(crate) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut limit = 100;
    for (_, value) in input::query_pairs(req.query_string(), &["limit"])? {
        limit = super::parse_limit(&value, MAX_LIMIT)?;
    }
    let entries = state
        .dlq
        .list(&state.queue, &state.pool, limit as usize)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": entries })))
}

/// The body of `POST /dlq/redrive`.
const REDRIVE: BodyShape = BodyShape {
    allowed: &["ids", "all"],
    expected: "{\"ids\": [...]} or {\"all\": true}",
};

#[utoipa::path(
    post,
    path = "/dlq/redrive",
    tag = "dlq",
    operation_id = "redriveDlq",
    summary = "Send failed reports in the DLQ back to the main queue",
    description = "Each chosen report is reset, sent a new message, and then its DLQ copy is \
        deleted. Messages whose report is not failed stay (`skipped`).",
    request_body(content = super::schemas::RedriveRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What moved, what stayed and why", body = crate::dlq::RedriveReport),
        (status = 400, description = "Empty or malformed JSON, an unknown field, no id and no `\"all\": true` (`field` names it)",
            body = ErrorBody),
        super::schemas::WriteErrors,
    ),
    security(("bearer" = []))
)]
/// `POST /dlq/redrive` with `{"ids": [...]}` (report or message ids) or `{"all": true}`.
///
/// Only `application/json` is taken (415 otherwise), so a cross-site form post cannot
/// redrive the DLQ; the body is bounded by `api.max_body_bytes` like every POST's.
pub(crate) async fn redrive(
    req: actix_web::HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let object =
        input::json_object(&req, body, state.settings.api.max_body_bytes, &REDRIVE).await?;
    let all = match object.get("all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("all", "all must be a boolean")),
    };
    let ids = match object.get("ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid("ids", "ids must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "ids",
                "ids must be an array of report or message ids",
            ))
        }
    };
    if ids.is_empty() && !all {
        return Err(ApiError::invalid(
            "ids",
            "name at least one id, or set \"all\": true",
        ));
    }
    let report = state
        .dlq
        .redrive(&state.queue, &state.pool, &Selection { ids, all })
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

#[utoipa::path(
    delete,
    path = "/dlq/{messageId}",
    tag = "dlq",
    operation_id = "discardDlqMessage",
    summary = "Discard one DLQ message (logged)",
    params(("messageId" = String, Path, description = "The SQS message id, as `GET /dlq` lists it")),
    responses(
        (status = 204, description = "Discarded"),
        super::schemas::ReadErrors,
        (status = 404, description = "No such message in the DLQ", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `DELETE /dlq/{messageId}`: discards one message (logged).
pub(crate) async fn discard(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let message_id = path.into_inner();
    if state
        .dlq
        .discard(&state.queue, &state.pool, &message_id)
        .await?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no message {message_id} in the DLQ"),
        )
        .with_field("messageId"))
    }
}
