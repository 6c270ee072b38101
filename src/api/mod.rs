//! The actix-web HTTP API, one module per resource.

pub mod dlq;
pub mod error;
pub mod health;
pub mod openapi;
pub mod reports;

use std::sync::Arc;

use actix::Addr;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::HttpRequest;
use actix_web::{web, HttpResponse};
use futures_util::StreamExt;

use crate::actors::poller::PollerActor;
use crate::actors::registry::ActorRegistry;
use crate::actors::status::StatusActor;
use crate::actors::worker::ReportWorker;
use crate::config::Settings;
use crate::db::DbPool;
use crate::metrics::Metrics;
use crate::outbox::Dispatcher;
use crate::queue::SqsQueue;
use error::ApiError;

/// What the handlers share.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: DbPool,
    pub status: Addr<StatusActor>,
    /// Present when this process runs the `api` role.
    pub dispatcher: Option<Dispatcher>,
    /// Present when this process runs the `worker` role.
    pub poller: Option<Addr<PollerActor>>,
    /// The worker pool (empty without the `worker` role); health pings each.
    pub workers: Vec<Addr<ReportWorker>>,
    pub queue: SqsQueue,
    pub metrics: Arc<Metrics>,
    /// Restarts, heartbeats and jobs in hand of every actor.
    pub registry: ActorRegistry,
    /// Queue depths, refreshed in the background.
    pub depths: QueueDepths,
    /// The StatusActor's flush figures, readable while its mailbox is full.
    pub status_probe: crate::actors::status::StatusProbe,
}

/// The last queue depths read from SQS, refreshed every few seconds in the background
/// so that health checks never wait on SQS for them.
#[derive(Clone, Default)]
pub struct QueueDepths {
    inner: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
}

impl QueueDepths {
    /// The latest reading (with its error, if the last refresh failed).
    pub fn latest(&self) -> serde_json::Value {
        self.inner
            .lock()
            .map(|v| v.clone().unwrap_or(serde_json::Value::Null))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Refreshes every 5 s until the process stops; also sets the depth gauges.
    pub async fn refresh_forever(self, queue: SqsQueue, metrics: Arc<Metrics>) {
        loop {
            let mut reading = serde_json::Map::new();
            for (name, url) in [
                ("main", queue.queue_url.clone()),
                ("dlq", queue.dlq_url.clone()),
            ] {
                match queue.depth(&url).await {
                    Ok(depth) => {
                        let number = |key: &str| {
                            depth
                                .get(key)
                                .and_then(|v| v.parse::<i64>().ok())
                                .unwrap_or(0)
                        };
                        let visible = number("ApproximateNumberOfMessages");
                        let in_flight = number("ApproximateNumberOfMessagesNotVisible");
                        metrics
                            .queue_depth
                            .with_label_values(&[name, "visible"])
                            .set(visible);
                        metrics
                            .queue_depth
                            .with_label_values(&[name, "in_flight"])
                            .set(in_flight);
                        reading.insert(
                            name.into(),
                            serde_json::json!({"approximateNumberOfMessages": visible, "approximateNumberOfMessagesNotVisible": in_flight}),
                        );
                    }
                    Err(e) => {
                        reading.insert(name.into(), serde_json::json!({"error": e.to_string()}));
                    }
                }
            }
            reading.insert("ageLimitS".into(), serde_json::json!(5));
            if let Ok(mut slot) = self.inner.lock() {
                *slot = Some(serde_json::Value::Object(reading));
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    }
}

/// Counts every request by route pattern, method and status, with its latency.
pub async fn record_http_metrics<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let started = std::time::Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let response = next.call(req).await;
    if let Some(metrics) = metrics {
        let status = match &response {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        metrics
            .http_requests
            .with_label_values(&[&route, &method, &status.to_string()])
            .inc();
        metrics
            .http_seconds
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Registers the operations routes, and the producer API when `serve_api` (the `api`
/// role): a worker-only process answers health checks, not submits.
pub fn configure(cfg: &mut web::ServiceConfig, serve_api: bool) {
    cfg.service(web::resource("/health").route(web::get().to(health::health)))
        .service(web::resource("/health/live").route(web::get().to(health::live)))
        .service(web::resource("/health/ready").route(web::get().to(health::ready)))
        .service(web::resource("/metrics").route(web::get().to(metrics)))
        .service(web::resource("/openapi.json").route(web::get().to(openapi::document)));
    if !serve_api {
        return;
    }
    cfg.service(web::resource("/generate").route(web::get().to(reports::generate)))
        .service(
            web::resource("/reports")
                .route(web::post().to(reports::submit))
                .route(web::get().to(reports::list)),
        )
        .service(web::resource("/reports/{id}").route(web::get().to(reports::get)))
        .service(web::resource("/reports/{id}/file").route(web::get().to(reports::file)))
        .service(web::resource("/reports/{id}/retry").route(web::post().to(reports::retry)))
        .service(web::resource("/dlq").route(web::get().to(dlq::list)))
        .service(web::resource("/dlq/redrive").route(web::post().to(dlq::redrive)))
        .service(web::resource("/dlq/{messageId}").route(web::delete().to(dlq::discard)));
}

pub(crate) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, got `{content_type}`"),
        )
        .with_field("Content-Type"))
    }
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
pub(crate) async fn read_limited(
    mut body: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid("body", format!("could not read the body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {limit} bytes"),
            )
            .with_field("body"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A `limit` query parameter: an integer in `1..=max`.
pub(crate) fn parse_limit(value: &str, max: i64) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|v| (1..=max).contains(v))
        .ok_or_else(|| {
            ApiError::invalid("limit", format!("`{value}` is not an integer in 1..={max}"))
        })
}

/// Unknown routes answer JSON too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such endpoint (see /openapi.json)"))
}

/// Paths anyone may read even when tokens are configured.
fn is_public(path: &str) -> bool {
    path == "/health"
        || path.starts_with("/health/")
        || path == "/metrics"
        || path == "/openapi.json"
}

/// Bearer-token check for every non-public endpoint when `api.tokens` is set. Tokens
/// are compared, never logged.
pub async fn authenticate<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let tokens = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.settings.api.tokens.clone())
        .unwrap_or_default();
    if tokens.is_empty() || is_public(req.path()) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let allowed = presented.is_some_and(|p| {
        tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), p.as_bytes()))
    });
    if allowed {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let error = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid `Authorization: Bearer <token>` header is required",
    )
    .with_field("Authorization");
    let response = actix_web::ResponseError::error_response(&error);
    Ok(req.into_response(response).map_into_right_body())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
