//! The actix-web HTTP API, one module per resource.

pub mod error;
pub mod health;
pub mod openapi;
pub mod reports;

use std::sync::Arc;

use actix::Addr;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use crate::actors::poller::PollerActor;
use crate::actors::status::StatusActor;
use crate::config::Settings;
use crate::db::DbPool;
use crate::queue::dispatcher::Dispatcher;
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
    pub queue: SqsQueue,
}

/// Registers the operations routes, and the producer API when `serve_api` (the `api`
/// role): a worker-only process answers health checks, not submits.
pub fn configure(cfg: &mut web::ServiceConfig, serve_api: bool) {
    cfg.service(web::resource("/health").route(web::get().to(health::health)))
        .service(web::resource("/health/live").route(web::get().to(health::live)))
        .service(web::resource("/health/ready").route(web::get().to(health::ready)))
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
        .service(web::resource("/reports/{id}/file").route(web::get().to(reports::file)));
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
