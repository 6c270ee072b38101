//! The schemas of the OpenAPI document that no Rust type of a handler carries: the bodies
//! the handlers build with `serde_json::json!` (the integration tests compare real
//! answers with them, field by field), the request bodies, and the error answers every
//! route shares. A leaf of `api`: the handlers' `#[utoipa::path]` attributes name these,
//! and `openapi` (which lists the handlers) builds the document from both.

use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, PartialSchema, ToResponse, ToSchema};
use uuid::Uuid;

use super::error::ErrorBody;
use crate::db::models::JobStatus;
use crate::dlq::DlqEntry;

// ---- Bodies built with `json!` ------------------------------------------------------

/// `JobStatus` as the API spells it: the enum is listed from [`JobStatus::ALL`], so a new
/// status cannot be missing from the document.
impl PartialSchema for JobStatus {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(JobStatus::ALL.iter().map(|s| s.as_str())))
            .description(Some("A report's place in its lifecycle"))
            .into()
    }
}

impl ToSchema for JobStatus {
    fn name() -> std::borrow::Cow<'static, str> {
        "ReportStatus".into()
    }
}

// The rules `reports::parse_submission` checks, one field at a time.
/// A report request. Two more rules (each a 400 when broken): `startDate` is not after
/// `endDate`, and the range is at most `api.max_range_days` long.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ReportRequest {
    /// The user whose activity the report covers.
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    pub user_id: i64,
    /// First instant covered: an RFC 3339 date-time or a `YYYY-MM-DD` date (its start),
    /// in the years 0001–9999, without a leap second.
    #[schema(schema_with = date_or_date_time)]
    pub start_date: String,
    /// Last instant covered; a date means the end of that day.
    #[schema(schema_with = date_or_date_time)]
    pub end_date: String,
    /// Seconds one attempt may run before it is aborted as a failure; 0 = no limit.
    /// Default: `jobs.max_runtime_s`.
    #[schema(minimum = 0, maximum = 604800)]
    pub max_runtime_s: Option<u32>,
    /// Start by then, or end `cancelled` with `cancelReason: "expired"`. Default:
    /// `jobs.expire_after_s` after acceptance, or never.
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Where this report's webhooks go besides `webhooks.endpoints`: https (http when
    /// `webhooks.allow_http`), a host that resolves to public addresses only (unless
    /// `webhooks.allow_private`) and in `webhooks.allowed_hosts` when that is set.
    /// Needs webhooks on (`webhooks.secret`).
    #[schema(format = "uri", max_length = 2048)]
    pub callback_url: Option<String>,
}

/// A report request of a named type (`GET /report-types` lists them and their
/// parameters). Also accepts `maxRuntimeS` and `notAfter` as in the original body.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct TypedReportRequest {
    /// The report type's name (`user-activity` is the built-in one).
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    /// The type's parameters by name; a bad one is a 400 naming `params.<name>`.
    pub params: Option<std::collections::HashMap<String, serde_json::Value>>,
    /// As in the original body.
    #[schema(minimum = 0, maximum = 604800)]
    pub max_runtime_s: Option<u32>,
    /// As in the original body.
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
}

/// The body of `POST /reports`: a named type with its parameters, or the original body
/// (the built-in `user-activity` type).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) enum SubmitRequest {
    /// `{"type", "params"}`.
    Typed(TypedReportRequest),
    /// `{"userId", "startDate", "endDate"}`.
    Original(ReportRequest),
}

/// The optional body of a cancel.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct CancelRequest {
    /// Why; kept as `cancelReason` (the first reason given stays): at most 500
    /// characters, no NUL.
    #[schema(max_length = 500, pattern = "^[^\\u0000]*$")]
    pub reason: Option<String>,
}

fn date_or_date_time() -> Schema {
    let format = |known| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(known)))
    };
    AnyOfBuilder::new()
        .item(format(KnownFormat::DateTime))
        .item(format(KnownFormat::Date))
        .into()
}

/// A report's payload as stored: what the submission said, with dates as date-times.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct StoredPayload {
    pub user_id: i64,
    pub start_date: chrono::DateTime<chrono::Utc>,
    pub end_date: chrono::DateTime<chrono::Utc>,
}

// As `reports::record_json` writes it.
/// One report.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct Report {
    pub id: Uuid,
    pub status: JobStatus,
    pub payload: StoredPayload,
    /// Where the file is, once `completed`.
    #[schema(required = true)]
    pub report_url: Option<String>,
    /// Claims by a worker so far.
    pub attempts: i32,
    /// Attempts that failed; `jobs.max_attempts` of them fail the report.
    pub failures: i32,
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[schema(required = true)]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[schema(required = true)]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When SQS took its current message (null: not sent yet).
    #[schema(required = true)]
    pub enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds one attempt may run (null: no limit).
    #[schema(required = true)]
    pub max_runtime_s: Option<i32>,
    /// Start by then or be cancelled as `expired` (null: never).
    #[schema(required = true)]
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
    /// When a cancel was asked for (null: never).
    #[schema(required = true)]
    pub cancel_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The cancel's reason, or `expired`.
    #[schema(required = true)]
    pub cancel_reason: Option<String>,
    /// The latest progress the generator reported; kept across a retry until the new
    /// attempt reports, 100 % once completed (null: never reported).
    #[schema(required = true)]
    pub progress: Option<ProgressReading>,
    /// Estimated seconds left, for a running report that reported progress in this
    /// attempt (null otherwise).
    #[schema(required = true)]
    pub eta_s: Option<u64>,
    /// The stored file of a completed report (null without one).
    #[schema(required = true)]
    pub file: Option<ReportFileInfo>,
}

/// A completed report's stored file, as `GET /reports/{id}` shows it.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ReportFileInfo {
    /// Bytes stored, and downloaded (compressed when stored with `gzip`).
    pub size_bytes: i64,
    /// Hex SHA-256 of the stored bytes, which a download returns unchanged.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// The content's media type, e.g. `text/csv; charset=utf-8`.
    pub content_type: String,
    /// s3 backend: when a download link fetched now stops working (now +
    /// `storage.presign_ttl_s`); null for the local backend.
    #[schema(required = true)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One event of `GET /reports/{id}/events` (the stream's `text/event-stream` lines, as
/// OpenAPI 3.1 tools read them).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ReportEvent {
    /// `status` (the data is the report as `GET /reports/{id}` shows it) or `progress`
    /// (the data is the progress reading).
    #[schema(pattern = "^(status|progress)$")]
    pub event: String,
    /// Send back as `Last-Event-ID` to resume (the row's `updated_at` in microseconds).
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    /// The event's JSON, as text.
    pub data: String,
}

/// How far a report is, as its generator said (written with the worker's heartbeat).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ProgressReading {
    #[schema(minimum = 0, maximum = 100)]
    pub percent: u8,
    /// What the generator is doing (at most 80 characters).
    #[schema(required = true)]
    pub stage: Option<String>,
    /// Items done, when the generator counts.
    #[schema(required = true)]
    pub done: Option<u64>,
    /// Items in all, when the generator counts.
    #[schema(required = true)]
    pub total: Option<u64>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The answer to an accepted submit or retry.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct Accepted {
    pub id: Uuid,
    pub status: JobStatus,
    pub links: ReportLinks,
}

/// Where to poll a report and fetch its file (under `server.public_url`).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ReportLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub file: String,
}

/// A page of `GET /reports`, newest first.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ReportPage {
    pub items: Vec<Report>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `POST /reports`'s optional header.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct SubmitHeaders {
    /// Makes retries safe: the same key with the same body answers the first report again
    /// (200); with another body, 409. 1–255 visible ASCII characters.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = r"^[\x20-\x7E]*[\x21-\x7E][\x20-\x7E]*$"
    )]
    pub idempotency_key: Option<String>,
}

/// `GET /reports`'s query; any other parameter is a 400 naming it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct ListReportsQuery {
    /// Only reports with this status.
    pub status: Option<JobStatus>,
    /// Only this user's reports.
    #[param(minimum = 1, maximum = 9223372036854775807_i64)]
    pub user_id: Option<i64>,
    /// Page size.
    #[param(minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page, as given (any other value is a 400).
    pub cursor: Option<String>,
    /// Only reports created at or after this instant: RFC 3339, or UTC without an offset
    /// (`2026-12-01T10:00`, `2026-12-01`).
    #[param(format = DateTime)]
    pub created_from: Option<String>,
    /// Only reports created before this instant (same forms); after `createdFrom`.
    #[param(format = DateTime)]
    pub created_to: Option<String>,
    /// Only failed reports whose `lastError` contains this text, any case (implies
    /// `status=failed`; another status is a 400).
    #[param(min_length = 1, max_length = 200)]
    pub error: Option<String>,
}

/// A look into the DLQ (nothing is consumed).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct DlqPage {
    pub items: Vec<DlqEntry>,
}

/// `GET /dlq`'s query; any other parameter is a 400 naming it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct DlqListQuery {
    /// Most messages to list.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
}

/// The part of a health answer that is always there; the rest (actors, dependencies,
/// queue depths) is detail for people and may change.
#[derive(ToSchema)]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) struct HealthStatus {
    pub status: HealthVerdict,
}

/// `ok` with a 200; `unhealthy` (`/health`, `/health/live`) or `unavailable`
/// (`/health/ready`) with a 503.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // A schema of the document only: utoipa reads its fields, nothing builds it.
pub(crate) enum HealthVerdict {
    Ok,
    Unhealthy,
    Unavailable,
}

/// `POST /dlq/redrive`'s body: `ids` (report or message ids; poison messages only by
/// message id), or `"all": true` (every message that has a report row), or both. Its
/// schema is written out: "at least one id or `all: true`" is beyond a derive.
pub(crate) struct RedriveRequest;

impl PartialSchema for RedriveRequest {
    fn schema() -> RefOr<Schema> {
        // Two whole objects rather than `allOf` + `anyOf`: the same rule, in the shape
        // test generators (schemathesis) handle best.
        let ids = |at_least_one: bool| {
            let ids = ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("Report ids or DLQ message ids"));
            if at_least_one {
                ids.min_items(Some(1))
            } else {
                ids.schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            }
        };
        let all = |must_be_true: bool| {
            let all =
                ObjectBuilder::new().description(Some("Every DLQ message that has a report row"));
            if must_be_true {
                all.schema_type(Type::Boolean).enum_values(Some([true]))
            } else {
                all.schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
            }
        };
        let body = |by_ids: bool| {
            ObjectBuilder::new()
                .property("ids", ids(by_ids))
                .property("all", all(!by_ids))
                .required(if by_ids { "ids" } else { "all" })
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        // At least one id, or `all: true`: anything else is a 400 naming `ids`.
        AnyOfBuilder::new()
            .item(body(true))
            .item(body(false))
            .into()
    }
}

impl ToSchema for RedriveRequest {}

// ---- Answers every route shares -----------------------------------------------------

/// An error answer in the one JSON shape.
fn error_answer(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                ErrorBody::name(),
            ))))
            .build(),
    )
}

/// Declares a reusable error answer, referenced by status from the handlers' attributes.
macro_rules! reusable_error {
    ($(#[$doc:meta])* $name:ident, $build:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl<'s> ToResponse<'s> for $name {
            fn response() -> (&'s str, RefOr<Response>) {
                (stringify!($name), $build.build().into())
            }
        }
    };
}

reusable_error!(
    /// 401: `api.tokens` is set and the bearer token is missing or wrong.
    Unauthorized,
    error_answer(
        "`api.tokens` is set and `Authorization: Bearer <token>` is missing or wrong \
         (`code: unauthorized`, `field: Authorization`)"
    )
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(String::schema())
            .description(Some("`Bearer realm=\"reportd\"`"))
            .build()
    )
);

reusable_error!(
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    error_answer("The route exists but not with this method (`code: method_not_allowed`)").header(
        "Allow",
        HeaderBuilder::new()
            .schema(String::schema())
            .description(Some("The methods the route has"))
            .build()
    )
);

reusable_error!(
    /// 408: the body was too slow.
    RequestTimeout,
    error_answer(
        "The body did not arrive within `server.request_timeout_s` of the headers \
         (`code: request_timeout`, `field: body`)"
    )
);

reusable_error!(
    /// 413: the body is too large.
    PayloadTooLarge,
    error_answer(
        "The body, or its `Content-Length`, is larger than `api.max_body_bytes` \
         (`code: payload_too_large`, `field: body`)"
    )
);

reusable_error!(
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    error_answer(
        "`Content-Type` is neither `application/json` nor `application/*+json` \
         (`code: unsupported_media_type`, `field: Content-Type`)"
    )
);

reusable_error!(
    /// 503: a dependency is away; retry later.
    Unavailable,
    error_answer(
        "The database, the StatusActor or SQS is unreachable; retry later (`code: unavailable`)"
    )
);

reusable_error!(
    /// 403: the token is known but has the `read` role, and the route changes something.
    Forbidden,
    error_answer(
        "The bearer token has the `read` role: it may only read (`code: forbidden`, \
         `field: Authorization`)"
    )
);

/// The error answers of a guarded route without a body: 401, 405, 503.
pub(crate) struct ReadErrors;

/// The error answers of a guarded route that takes a body: 401, 405, 408, 413, 415, 503.
pub(crate) struct WriteErrors;

/// References to the shared answers, by status.
fn shared_answers(answers: &[(&str, &str)]) -> std::collections::BTreeMap<String, RefOr<Response>> {
    answers
        .iter()
        .map(|(status, name)| {
            let reference = utoipa::openapi::Ref::from_response_name(*name);
            (status.to_string(), RefOr::Ref(reference))
        })
        .collect()
}

impl utoipa::IntoResponses for ReadErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        shared_answers(&[
            ("401", "Unauthorized"),
            ("405", "MethodNotAllowed"),
            ("503", "Unavailable"),
        ])
    }
}

impl utoipa::IntoResponses for WriteErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        shared_answers(&[
            ("401", "Unauthorized"),
            ("405", "MethodNotAllowed"),
            ("408", "RequestTimeout"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("503", "Unavailable"),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_enum_is_every_job_status() {
        let schema = serde_json::to_value(JobStatus::schema()).unwrap_or_default();
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .map(|v| v.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            listed,
            [
                "in-queue",
                "in-progress",
                "completed",
                "failed",
                "cancelled"
            ]
        );
    }
}
