//! `/reports/{id}/webhooks`: a report's webhook deliveries, and re-sending them; and
//! the submission's `callbackUrl` check.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::reports::{find_report, parse_id};
use super::AppState;
use crate::config::WebhookSettings;
use crate::db::webhooks::{self as queries, DeliveryRecord};
use crate::db::{self};
use crate::webhooks::ssrf::HostPolicy;

/// How long a submission waits for its `callbackUrl`'s host to resolve.
const RESOLVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest accepted `callbackUrl`.
const MAX_CALLBACK_CHARS: usize = 2048;

/// A submission's `callbackUrl`, checked now (its addresses again at each delivery).
/// A refused URL is a 400 naming `callbackUrl`; nothing is written.
pub(crate) async fn parse_callback(
    object: &Map<String, Value>,
    settings: &WebhookSettings,
) -> Result<Option<String>, ApiError> {
    let invalid = |message: String| ApiError::invalid("callbackUrl", message);
    let raw = match object.get("callbackUrl") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(raw)) => raw,
        Some(_) => return Err(invalid("callbackUrl must be a string".into())),
    };
    if !settings.enabled() {
        return Err(invalid(
            "webhooks are off on this server (no webhooks.secret): callbackUrl cannot be used"
                .into(),
        ));
    }
    if raw.chars().count() > MAX_CALLBACK_CHARS {
        return Err(invalid(format!(
            "callbackUrl is longer than {MAX_CALLBACK_CHARS} characters"
        )));
    }
    // A name that does not resolve now (or not within RESOLVE_WITHIN) is refused too,
    // rather than retried for a day; the bound keeps a slow resolver from holding the
    // request.
    let url = tokio::time::timeout(RESOLVE_WITHIN, HostPolicy::new(settings).check(raw))
        .await
        .map_err(|_| {
            invalid(format!(
                "callbackUrl's host did not resolve within {} s",
                RESOLVE_WITHIN.as_secs()
            ))
        })?
        .map_err(|e| invalid(format!("callbackUrl {e}")))?;
    Ok(Some(url.to_string()))
}

/// One delivery as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Delivery {
    /// The `webhook-id` header: the same on every try, for receivers to deduplicate.
    id: uuid::Uuid,
    /// Where it goes.
    endpoint: String,
    /// `report.completed`, `report.failed` or `report.cancelled`.
    event: String,
    /// `pending` (tried again at `nextAttemptAt`), `delivered` (a 2xx), `stopped` (a 410)
    /// or `gave_up` (`webhooks.retry_for_s` ran out).
    state: String,
    /// Tries since it was recorded or redelivered.
    attempts: i32,
    /// The receiver's last HTTP status; null before an answer (or after a timeout).
    last_status_code: Option<i32>,
    /// Why the last try failed.
    last_error: Option<String>,
    /// When a pending delivery is tried next.
    next_attempt_at: chrono::DateTime<chrono::Utc>,
    /// When a receiver accepted it.
    delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<DeliveryRecord> for Delivery {
    fn from(row: DeliveryRecord) -> Self {
        Self {
            id: row.id,
            endpoint: row.endpoint,
            event: row.event,
            state: row.state,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            delivered_at: row.delivered_at,
        }
    }
}

/// `GET /reports/{id}/webhooks` and the redeliver answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Deliveries {
    /// The report's deliveries, oldest first; empty until it finished (and the sweeper,
    /// within `webhooks.poll_ms`, recorded them) or when it has no endpoint.
    pub(crate) items: Vec<Delivery>,
}

/// A report's deliveries, for the JSON API and the console's job page.
pub(crate) async fn deliveries(state: &AppState, id: uuid::Uuid) -> Result<Deliveries, ApiError> {
    let mut conn = db::connection(&state.pool).await?;
    let rows = queries::for_report(&mut conn, id).await?;
    Ok(Deliveries {
        items: rows.into_iter().map(Delivery::from).collect(),
    })
}

#[utoipa::path(
    get,
    path = "/reports/{id}/webhooks",
    tag = "reports",
    operation_id = "listReportWebhooks",
    summary = "A report's webhook deliveries",
    params(("id" = Uuid, Path, description = "The report's id")),
    responses(
        (status = 200, description = "The deliveries", body = Deliveries),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        super::schemas::ReadErrors,
        (status = 404, description = "No report with this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /reports/{id}/webhooks`.
pub(crate) async fn list(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    find_report(&state, id).await?;
    Ok(HttpResponse::Ok().json(deliveries(&state, id).await?))
}

#[utoipa::path(
    post,
    path = "/reports/{id}/webhooks/redeliver",
    tag = "reports",
    operation_id = "redeliverReportWebhooks",
    summary = "Send a report's webhooks again",
    description = "Every delivery of the report becomes pending and due now, with its \
        `webhook-id` kept, its tries counted from 0 and a fresh `webhooks.retry_for_s`. \
        The request has no body.",
    params(("id" = Uuid, Path, description = "The report's id")),
    responses(
        (status = 202, description = "The deliveries, pending again", body = Deliveries),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        super::schemas::ReadErrors,
        (status = 404, description = "No report with this id", body = ErrorBody),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
    ),
    security(("bearer" = []))
)]
/// `POST /reports/{id}/webhooks/redeliver`.
pub(crate) async fn redeliver(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    find_report(&state, id).await?;
    let retry_for_s = i64::try_from(state.settings.webhooks.retry_for_s).unwrap_or(i64::MAX);
    let mut conn = db::connection(&state.pool).await?;
    let reset = queries::redeliver(&mut conn, &[id], retry_for_s).await?;
    drop(conn);
    tracing::info!(report_id = %id, reset, "webhooks redelivered by an operator");
    Ok(HttpResponse::Accepted().json(deliveries(&state, id).await?))
}
