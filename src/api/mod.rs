//! The actix-web HTTP API, one module per resource.

pub(crate) mod all_events;
pub(crate) mod console;
pub(crate) mod dlq;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod health;
mod input;
pub(crate) mod openapi;
pub(crate) mod rate_limit;
pub(crate) mod report_types;
pub(crate) mod reports;
pub(crate) mod schemas;
pub(crate) mod webhooks;

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
use crate::config::{ApiToken, Settings, TokenRole};
use crate::db::DbPool;
use crate::metrics::Metrics;
use crate::outbox::Dispatcher;
use crate::queue::SqsQueue;
use error::ApiError;

/// What the handlers share.
pub(crate) struct AppState {
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
    /// `report_queue`'s upkeep figures, refreshed in the background (`db::hygiene`).
    pub(crate) db_hygiene: crate::db::hygiene::HygieneWatch,
    /// Per-user submit buckets (`api.submit_rate_per_user`).
    pub(crate) submit_limiter: rate_limit::SubmitLimiter,
    /// The StatusActor's flush figures, readable while its mailbox is full.
    pub status_probe: crate::actors::status::StatusProbe,
    /// Watched reports' changes for `GET /reports/{id}/events`, read by one task.
    pub(crate) feed: events::ReportFeed,
    /// Every report's changes for `GET /events`, read by one task while someone listens.
    pub(crate) all_feed: all_events::AllReportsFeed,
    /// The DLQ operations, one at a time (see [`crate::dlq::DlqGate`]).
    pub dlq: crate::dlq::DlqGate,
    /// The report store: where `GET /reports/{id}/file` finds a file or a download link.
    pub store: Arc<crate::storage::ReportStore>,
    /// This process's row in `processes` (the console marks it in the fleet view).
    pub(crate) process_id: uuid::Uuid,
}

/// The last queue depths read from SQS, refreshed every few seconds in the background
/// so that health checks never wait on SQS for them.
#[derive(Clone, Default)]
pub(crate) struct QueueDepths {
    inner: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
}

impl QueueDepths {
    /// The latest reading (with its error, if the last refresh failed).
    pub(crate) fn latest(&self) -> serde_json::Value {
        self.inner
            .lock()
            .map(|v| v.clone().unwrap_or(serde_json::Value::Null))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Refreshes every 5 s until the process stops; also sets the depth gauges.
    pub(crate) async fn refresh_forever(self, queue: SqsQueue, metrics: Arc<Metrics>) {
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
pub(crate) async fn record_http_metrics<B: MessageBody + 'static>(
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
    let method = method_label(req.method());
    let response = next.call(req).await;
    if let Some(metrics) = metrics {
        let status = match &response {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        metrics
            .http_requests
            .with_label_values(&[&route, method, &status.to_string()])
            .inc();
        metrics
            .http_seconds
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

/// The `method` label of a request. Any token is a valid HTTP method, so a client could
/// otherwise mint a new label series (and memory that is never freed) per request;
/// methods outside the standard set count as `other`. The `route` label is bounded
/// already: it is a registered pattern or `unmatched`.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics (text format 0.0.4)",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 405, response = schemas::MethodNotAllowed),
    ),
    security(())
)]
/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Registers the operations routes, and the producer API when `serve_api` (the `api`
/// role): a worker-only process answers health checks, not submits.
pub(crate) fn configure(cfg: &mut web::ServiceConfig, serve_api: bool) {
    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/health/live").route(web::get().to(health::live)))
        .service(resource("/health/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/openapi.json").route(web::get().to(openapi::document)))
        .service(resource("/docs").route(web::get().to(openapi::docs_page)))
        .service(resource(openapi::VIEWER_SCRIPT_PATH).route(web::get().to(openapi::docs_script)));
    if !serve_api {
        return;
    }
    console::configure(cfg);
    cfg.service(resource("/generate").route(web::get().to(reports::generate)))
        .service(resource("/report-types").route(web::get().to(report_types::list)))
        .service(
            resource("/reports")
                .route(web::post().to(reports::submit))
                .route(web::get().to(reports::list)),
        )
        .service(resource("/reports/{id}").route(web::get().to(reports::get)))
        .service(resource("/reports/{id}/file").route(web::get().to(reports::file)))
        .service(resource("/reports/{id}/retry").route(web::post().to(reports::retry)))
        .service(resource("/reports/{id}/cancel").route(web::post().to(reports::cancel)))
        .service(resource("/reports/{id}/events").route(web::get().to(events::report_events)))
        .service(resource("/reports/{id}/webhooks").route(web::get().to(webhooks::list)))
        .service(
            resource("/reports/{id}/webhooks/redeliver").route(web::post().to(webhooks::redeliver)),
        )
        .service(resource("/events").route(web::get().to(all_events::all_events)))
        .service(resource("/dlq").route(web::get().to(dlq::list)))
        .service(resource("/dlq/redrive").route(web::post().to(dlq::redrive)))
        .service(resource("/dlq/{messageId}").route(web::delete().to(dlq::discard)));
}

/// A resource with the rules every route shares: its body is bounded in size and time
/// ([`limit_body`]), and the answers actix-web builds itself, such as a 405, come in the
/// JSON error shape ([`json_errors`]).
fn resource(
    path: &str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path).wrap(actix_web::middleware::from_fn(limit_body))
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
        let chunk = chunk.map_err(|e| body_error(&e, limit))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What a client is told when its body could not be read: too large (413), too slow
/// (408, see [`limit_body`]), or broken off (400).
fn body_error(error: &actix_web::error::PayloadError, limit: usize) -> ApiError {
    use actix_web::error::PayloadError;
    match error {
        PayloadError::Overflow => ApiError::payload_too_large(limit),
        PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            ApiError::request_timeout(e.to_string())
        }
        other => ApiError::invalid("body", format!("could not read the body: {other}")),
    }
}

/// A `Content-Length` above `limit` (a number too long for a u64 included): such a
/// request is refused before its body is read.
fn declares_too_much(headers: &header::HeaderMap, limit: usize) -> bool {
    let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    else {
        return false;
    };
    match declared.parse::<u64>() {
        Ok(length) => length > limit as u64,
        Err(_) => true,
    }
}

/// Bounds every request body by `api.max_body_bytes` and `server.request_timeout_s`,
/// whichever extractor reads it. A declared `Content-Length` above the limit is answered
/// 413 at once, so no byte of the body is read; a body without one (chunked) fails with
/// an overflow as it passes the limit, and one that has not fully arrived
/// `request_timeout_s` after the headers fails with a timeout. actix-web's own
/// `client_request_timeout` covers the headers only, so without this a client sending
/// a byte a minute would hold its handler forever.
pub(crate) async fn limit_body<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let limits = req.app_data::<web::Data<AppState>>().map(|state| {
        let timeout = std::time::Duration::from_secs(state.settings.server.request_timeout_s);
        (state.settings.api.max_body_bytes, timeout)
    });
    let Some((limit, timeout)) = limits else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if declares_too_much(req.headers(), limit) {
        let response =
            actix_web::ResponseError::error_response(&ApiError::payload_too_large(limit));
        return Ok(req.into_response(response).map_into_right_body());
    }
    let payload = actix_web::HttpMessage::take_payload(&mut req);
    if !matches!(payload, actix_web::dev::Payload::None) {
        let deadline = tokio::time::Instant::now() + timeout;
        req.set_payload(bounded_payload(payload, limit, deadline, timeout));
    }
    // One middleware for both rules (a layer less on every request).
    json_errors(next.call(req).await?, limit)
}

/// A request body as a stream, the form `dev::Payload` is built from.
type BodyStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>>,
>;

/// `payload` that ends in `Overflow` once more than `limit` bytes came, and in a
/// `TimedOut` I/O error if it is not complete by `deadline`.
fn bounded_payload(
    payload: actix_web::dev::Payload,
    limit: usize,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
) -> actix_web::dev::Payload {
    use actix_web::error::PayloadError;
    // The state is None once the stream has ended in an error: nothing follows one. One
    // deadline for the whole body, polled only while a chunk is pending: a body that is
    // already buffered (the usual small JSON) never registers a timer.
    let late = Box::pin(tokio::time::sleep_until(deadline));
    let start = Some((payload, 0usize, late));
    let chunks = futures_util::stream::unfold(start, move |state| async move {
        let (mut payload, received, mut late) = state?;
        let next = tokio::select! {
            biased;
            next = payload.next() => next,
            () = &mut late => {
                let late = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the body did not arrive within {} s (server.request_timeout_s)",
                        timeout.as_secs()
                    ),
                );
                return Some((Err(PayloadError::Io(late)), None));
            }
        };
        match next {
            None => None,
            Some(Err(e)) => Some((Err(e), None)),
            Some(Ok(chunk)) if received + chunk.len() > limit => {
                Some((Err(PayloadError::Overflow), None))
            }
            Some(Ok(chunk)) => {
                let received = received + chunk.len();
                Some((Ok(chunk), Some((payload, received, late))))
            }
        }
    });
    let boxed: BodyStream = Box::pin(chunks);
    actix_web::dev::Payload::from(boxed)
}

/// Gives the error answers actix-web builds itself the JSON error shape every handler
/// uses: a 405 from a resource without the request's method (its `Allow` header is
/// kept), an extractor's 400 or 413. Answers already in JSON pass untouched.
fn json_errors<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
    limit: usize,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Ok(response.map_into_left_body());
    }
    let error = actix_answer_as_error(&response, limit);
    let (req, original) = response.into_parts();
    let mut answer = actix_web::ResponseError::error_response(&error);
    // Keep what the original said besides its body (e.g. `Allow`).
    let own: Vec<header::HeaderName> = answer.headers().keys().cloned().collect();
    for (name, value) in original.headers() {
        if !own.contains(name) && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(ServiceResponse::new(req, answer).map_into_right_body())
}

/// The [`ApiError`] an error answer built by actix-web stands for.
fn actix_answer_as_error<B>(response: &ServiceResponse<B>, limit: usize) -> ApiError {
    let status = response.status();
    if let Some(error) = response.response().error() {
        return match error.as_error::<actix_web::error::PayloadError>() {
            Some(payload_error) => body_error(payload_error, limit),
            None => ApiError::from_status(status, error.to_string()),
        };
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let request = response.request();
        let message = format!(
            "{} is not allowed on {}; allowed: {allowed}",
            request.method(),
            request.path()
        );
        return ApiError::from_status(status, message);
    }
    ApiError::from_status(status, status.canonical_reason().unwrap_or("error"))
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
pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such endpoint (see /openapi.json)"))
}

/// Paths anyone may read even when tokens are configured.
fn is_public(path: &str) -> bool {
    path == "/health"
        || path.starts_with("/health/")
        || path == "/metrics"
        || path == "/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
}

/// Bearer-token check for every non-public endpoint when `api.tokens` is set. Tokens
/// are compared, never logged. A `read` token may only GET (and HEAD): anything else
/// answers 403 in the JSON error shape. `/ui` checks its own session cookie instead.
pub(crate) async fn authenticate<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    // The shared state, not a copy of its token list: this runs on every request.
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let tokens: &[ApiToken] = state.as_ref().map_or(&[], |s| &s.settings.api.tokens);
    if tokens.is_empty() || is_public(req.path()) || console::is_console_path(req.path()) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let error = match caller_of(req.headers(), tokens) {
        Some(caller) if caller.may(req.method()) => {
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_left_body);
        }
        Some(caller) => ApiError::forbidden(format!(
            "the token `{}` has the `read` role: it may only GET",
            caller.name
        )),
        None => {
            ApiError::unauthorized("a valid `Authorization: Bearer <token>` header is required")
        }
    };
    let response = actix_web::ResponseError::error_response(&error);
    Ok(req.into_response(response).map_into_right_body())
}

/// Who made a request: the matching token's name (for the logs) and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// `name` of the token entry, or `tokens[<index>]` for a plain one.
    pub(crate) name: String,
    /// What it may do.
    pub(crate) role: TokenRole,
}

impl Caller {
    /// Whether this caller may send a request with `method`: a read token only reads.
    pub(crate) fn may(&self, method: &actix_web::http::Method) -> bool {
        use actix_web::http::Method;
        self.role == TokenRole::Admin || matches!(*method, Method::GET | Method::HEAD)
    }
}

/// The caller whose token `presented` is, compared in constant time against each.
pub(crate) fn caller_with(presented: &str, tokens: &[ApiToken]) -> Option<Caller> {
    tokens
        .iter()
        .enumerate()
        .find(|(_, t)| constant_time_eq(t.secret().as_bytes(), presented.as_bytes()))
        .map(|(index, t)| Caller {
            name: t.name(index),
            role: t.role(),
        })
}

/// The caller named by the request's `Authorization` header, if it carries a token.
fn caller_of(headers: &header::HeaderMap, tokens: &[ApiToken]) -> Option<Caller> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)?;
    caller_with(presented, tokens)
}

/// Whether the caller may see what only token holders see (job ids, raw error text):
/// always when no tokens are configured, else with a valid token.
pub(crate) fn is_trusted(req: &HttpRequest, tokens: &[ApiToken]) -> bool {
    tokens.is_empty() || caller_of(req.headers(), tokens).is_some()
}

/// The token of an `Authorization` header value in the `Bearer` scheme. Scheme names
/// are case-insensitive (RFC 7235 §2.1), so `bearer` and `BEARER` count too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::error::PayloadError;
    use actix_web::http::Method;
    use actix_web::web::Bytes;
    use std::time::Duration;

    #[test]
    fn standard_methods_keep_their_label_and_invented_ones_share_other() {
        for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let parsed = Method::from_bytes(method.as_bytes()).expect("a method");
            assert_eq!(method_label(&parsed), method);
        }
        for invented in ["FOO", "BAR1", "get", "PROPFIND", "TRACE", "CONNECT"] {
            let parsed = Method::from_bytes(invented.as_bytes()).expect("a method token");
            assert_eq!(method_label(&parsed), "other", "{invented}");
        }
    }

    #[test]
    fn a_read_token_may_only_get_and_head() {
        let tokens: Vec<ApiToken> = vec![
            "plain".into(),
            ApiToken::Named {
                name: "viewer".into(),
                token: "r".into(),
                role: TokenRole::Read,
            },
        ];
        let admin = caller_with("plain", &tokens).expect("known");
        assert_eq!(admin.name, "tokens[0]");
        assert!(admin.may(&Method::POST));
        let reader = caller_with("r", &tokens).expect("known");
        assert_eq!(reader.name, "viewer");
        assert!(reader.may(&Method::GET) && reader.may(&Method::HEAD));
        assert!(!reader.may(&Method::POST) && !reader.may(&Method::DELETE));
        assert!(caller_with("nope", &tokens).is_none());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR   tok  "] {
            assert_eq!(bearer_token(header), Some("tok"), "{header:?}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_no_bearer_token() {
        for header in [
            "Basic dG9rOg==",
            "Bearer",
            "Bearer ",
            "Bearertok",
            "tok",
            "",
        ] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }

    #[test]
    fn a_content_length_above_the_limit_is_too_much_and_at_the_limit_is_not() {
        let with_length = |length: &str| {
            let mut headers = header::HeaderMap::new();
            headers.insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from_str(length).expect("header value"),
            );
            headers
        };
        assert!(declares_too_much(&with_length("1025"), 1024));
        assert!(declares_too_much(
            &with_length("99999999999999999999"),
            1024
        ));
        assert!(!declares_too_much(&with_length("1024"), 1024));
        assert!(!declares_too_much(&header::HeaderMap::new(), 1024));
    }

    #[test]
    fn body_errors_map_to_413_408_and_400() {
        assert_eq!(
            body_error(&PayloadError::Overflow, 10).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "late");
        assert_eq!(
            body_error(&PayloadError::Io(late), 10).status,
            StatusCode::REQUEST_TIMEOUT
        );
        let cut = body_error(&PayloadError::Incomplete(None), 10);
        assert_eq!(
            (cut.status, cut.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("body"))
        );
    }

    #[test]
    fn a_bare_405_becomes_method_not_allowed_naming_the_method_and_the_allowed_ones() {
        let response = actix_web::test::TestRequest::default()
            .method(Method::DELETE)
            .uri("/reports")
            .to_srv_response(
                HttpResponse::MethodNotAllowed()
                    .insert_header((header::ALLOW, "POST, GET"))
                    .finish(),
            );
        let error = actix_answer_as_error(&response, 10);
        assert_eq!(error.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error.code, "method_not_allowed");
        assert_eq!(
            error.message,
            "DELETE is not allowed on /reports; allowed: POST, GET"
        );
        assert_eq!(error.field, None);
    }

    #[test]
    fn an_extractor_overflow_becomes_payload_too_large_on_the_body() {
        // As actix-web answers a failed extractor: the response keeps the error.
        let response = ServiceResponse::new(
            actix_web::test::TestRequest::default().to_http_request(),
            HttpResponse::from_error(PayloadError::Overflow),
        );
        let error = actix_answer_as_error(&response, 1024);
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error.field.as_deref(), Some("body"));
    }

    fn payload_of(chunks: Vec<&'static [u8]>) -> actix_web::dev::Payload {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, PayloadError>(Bytes::from_static(c))),
        );
        let boxed: BodyStream = Box::pin(stream);
        actix_web::dev::Payload::from(boxed)
    }

    fn far_deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_bounded_body_within_the_limit_arrives_whole() {
        let mut body = bounded_payload(
            payload_of(vec![b"abc", b"def"]),
            6,
            far_deadline(),
            Duration::from_secs(60),
        );
        let mut received = Vec::new();
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk.expect("no error"));
        }
        assert_eq!(received, b"abcdef");
    }

    #[tokio::test]
    async fn a_bounded_body_ends_in_overflow_as_it_passes_the_limit() {
        let mut body = bounded_payload(
            payload_of(vec![b"abc", b"defg", b"never read"]),
            6,
            far_deadline(),
            Duration::from_secs(60),
        );
        assert!(body.next().await.is_some_and(|c| c.is_ok()));
        assert!(matches!(
            body.next().await,
            Some(Err(PayloadError::Overflow))
        ));
        assert!(body.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_past_the_deadline_ends_in_a_timeout() {
        let stalled: BodyStream = Box::pin(futures_util::stream::pending());
        let timeout = Duration::from_secs(30);
        let mut body = bounded_payload(
            actix_web::dev::Payload::from(stalled),
            6,
            tokio::time::Instant::now() + timeout,
            timeout,
        );
        let started = tokio::time::Instant::now();
        match body.next().await {
            Some(Err(PayloadError::Io(e))) => {
                assert_eq!(started.elapsed(), timeout, "not before the deadline");
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
                assert!(e.to_string().contains("server.request_timeout_s"), "{e}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
