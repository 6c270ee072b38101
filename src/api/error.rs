//! The API's error type: every error answers `{"error": {"code", "message", "field"}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The challenge every 401 carries (RFC 7235 §3.1 requires one): the scheme the client
/// must use and the protection space it applies to.
pub(crate) const BEARER_CHALLENGE: &str = "Bearer realm=\"reportd\"";

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable code (`invalid_field`, `not_found`, ...).
    pub code: &'static str,
    pub message: String,
    /// The request field (body field, query parameter, path segment or header) at fault.
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (a 429); None: no such header.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    pub(crate) fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 for a field that breaks a rule.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: a dependency is away; the client may retry.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 403: a known token whose role does not allow the request (`read` on an action).
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message).with_field("Authorization")
    }

    /// 401: no valid bearer token. The answer carries [`BEARER_CHALLENGE`].
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message).with_field("Authorization")
    }

    /// 413: the body is (or says it is) larger than `api.max_body_bytes`.
    pub(crate) fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
        .with_field("body")
    }

    /// 429: `field` is over its rate; try again after `retry_after_s` seconds.
    pub(crate) fn too_many_requests(
        field: &str,
        message: impl Into<String>,
        retry_after_s: u64,
    ) -> Self {
        let mut error =
            Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).with_field(field);
        error.retry_after_s = Some(retry_after_s);
        error
    }

    /// 408: the body did not arrive within `server.request_timeout_s`.
    pub(crate) fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message).with_field("body")
    }

    /// An answer actix-web built itself (a 405, an extractor's 400), in the same shape:
    /// the code is derived from the status.
    pub(crate) fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, code_for_status(status), message)
    }
}

/// The `code` of an error answer actix-web built, named after its status.
pub(crate) fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

// What [`ApiError`] serialises to, and what the OpenAPI document describes.
/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

// The fields are in alphabetical order, as the body (a `json!` map) has always had them.
/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorDetail<'a> {
    /// Stable, machine-readable code (`invalid_field`, `not_found`, ...).
    pub code: &'a str,
    /// The request field (body field, query parameter, path segment or header) at fault.
    #[schema(required = true)]
    pub field: Option<&'a str>,
    /// For people; may change.
    pub message: &'a str,
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> Self {
        tracing::error!(%error, "database error while answering a request");
        ApiError::unavailable(format!("the database is unavailable: {error}"))
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        crate::db::DbError::Query(error).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, BEARER_CHALLENGE));
        }
        if let Some(seconds) = self.retry_after_s {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                field: self.field.as_deref(),
                message: &self.message,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_401_carries_the_bearer_challenge() {
        let response = ApiError::unauthorized("no token").error_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE),
            Some(&header::HeaderValue::from_static(
                "Bearer realm=\"reportd\""
            ))
        );
    }

    #[test]
    fn other_errors_carry_no_challenge() {
        let response = ApiError::invalid("userId", "bad").error_response();
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn codes_derived_from_a_status_are_stable_snake_case_names() {
        assert_eq!(
            code_for_status(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(
            code_for_status(StatusCode::PAYLOAD_TOO_LARGE),
            "payload_too_large"
        );
        assert_eq!(
            code_for_status(StatusCode::REQUEST_TIMEOUT),
            "request_timeout"
        );
        assert_eq!(code_for_status(StatusCode::IM_A_TEAPOT), "bad_request");
        assert_eq!(code_for_status(StatusCode::BAD_GATEWAY), "internal");
    }
}
