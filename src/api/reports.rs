//! `/reports`: submit, read, list, the generated file, and the demo `/generate`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::input::{self, BodyShape};
use super::AppState;
use crate::actors::status;
use crate::config::{JobSettings, MAX_JOB_SECONDS};
use crate::db::models::{JobStatus, NewReport, ReportRecord};
use crate::db::reconcile::{self, retry_verdict, RetryVerdict};
use crate::db::reports::CancelOutcome;
use crate::db::{self, reports};
use crate::outbox::Timings;
use crate::report::{progress, ReportPayload};
use crate::storage::Download;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Listing page size when `limit` is absent, and its maximum.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

#[utoipa::path(
    post,
    path = "/reports",
    tag = "reports",
    operation_id = "submitReport",
    summary = "Submit a report job",
    params(super::schemas::SubmitHeaders),
    request_body(content = super::schemas::SubmitRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the report is queued", body = super::schemas::Accepted,
            headers(("Location" = String, description = "The report's path"))),
        (status = 200, description = "The same Idempotency-Key and body as an earlier request: that report",
            body = super::schemas::Accepted, headers(("Location" = String, description = "The report's path"))),
        (status = 400, description = "Empty or malformed JSON, a rule broken, an unknown field, a bad Idempotency-Key (`field` names it)",
            body = ErrorBody),
        super::schemas::WriteErrors,
        (status = 409, description = "The Idempotency-Key was used with another body (`code: idempotency_conflict`)", body = ErrorBody),
        (status = 429, description = "The user submits faster than `api.submit_rate_per_user` (`code: rate_limited`, `field: userId`)", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds until a submit is accepted again"))),
    ),
    security(("bearer" = []))
)]
/// `POST /reports`.
pub(crate) async fn submit(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let object =
        input::json_object(&req, body, state.settings.api.max_body_bytes, &SUBMISSION).await?;
    let submission = parse_typed_submission(&object, &state.settings)?;
    let limits = parse_job_limits(&object, &state.settings.jobs, Utc::now())?;
    let key = idempotency_key(&req)?;
    let callback = super::webhooks::parse_callback(&object, &state.settings.webhooks).await?;
    accept(&state, submission, limits, key, callback).await
}

#[utoipa::path(
    get,
    path = "/generate",
    tag = "reports",
    operation_id = "generateDemoReport",
    summary = "Demo: submit a report for a random user, covering now..now",
    responses(
        (status = 202, description = "Accepted: the report is queued", body = super::schemas::Accepted,
            headers(("Location" = String, description = "The report's path"))),
        super::schemas::ReadErrors,
    ),
    security(("bearer" = []))
)]
/// `GET /generate`: the original article's demo — a report for a random user, now..now.
pub(crate) async fn generate(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now = Utc::now();
    let payload = ReportPayload {
        user_id: rand::rng().random_range(1..=1000),
        start_date: now,
        end_date: now,
    };
    let limits = JobLimits::defaults(&state.settings.jobs, now);
    accept(&state, Submission::built_in(&payload)?, limits, None, None).await
}

/// What a submission stores: its payload and the user it is for (listing filters).
pub(crate) struct Submission {
    /// The `payload` column: the built-in type's `{userId, startDate, endDate}`, or a
    /// declared type's `{type, params}`.
    payload: Value,
    /// The `user_id` column: the built-in type's `userId`, or a declared type's integer
    /// parameter `userId` when it has one.
    user_id: Option<i64>,
}

impl Submission {
    fn built_in(payload: &ReportPayload) -> Result<Self, ApiError> {
        let json = serde_json::to_value(payload).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        Ok(Self {
            payload: json,
            user_id: Some(payload.user_id),
        })
    }
}

/// A typed submission's `params` (absent = none).
fn params_object(object: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match object.get("params") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(params)) => Ok(params.clone()),
        Some(other) => Err(ApiError::invalid(
            "params",
            format!("params must be an object, got {}", type_name(other)),
        )),
    }
}

/// `{"type": "user-activity", "params": {userId, startDate, endDate}}`: the original
/// body's rules, with the fields named `params.<name>`.
fn built_in_by_name(
    params: &Map<String, Value>,
    max_range_days: i64,
) -> Result<Submission, ApiError> {
    use crate::config::report_types::BUILT_IN_TYPE;
    if let Some(unknown) = params
        .keys()
        .find(|k| !BUILT_IN_PARAMS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            &format!("params.{unknown}"),
            format!("`{unknown}` is not a parameter of report type `{BUILT_IN_TYPE}`"),
        ));
    }
    let payload = parse_submission(params, max_range_days).map_err(|mut e| {
        e.field = e.field.map(|f| format!("params.{f}"));
        e
    })?;
    Submission::built_in(&payload)
}

/// The longest range of a built-in report: its declaration's `max_range_days` when
/// config declares the type with one, else `api.max_range_days`.
fn built_in_range_days(settings: &crate::config::Settings) -> i64 {
    use crate::config::report_types::BUILT_IN_TYPE;
    settings
        .report_type(BUILT_IN_TYPE)
        .and_then(|t| t.max_range_days)
        .map_or(settings.api.max_range_days, i64::from)
}

/// The parameters of the built-in type (the original body's fields).
pub(crate) const BUILT_IN_PARAMS: [&str; 3] = ["userId", "startDate", "endDate"];

/// Reads `{"type", "params"}` (a declared type, or `user-activity`) or the original
/// body `{userId, startDate, endDate}` (the built-in type); a bad parameter is named
/// `params.<name>`.
pub(crate) fn parse_typed_submission(
    object: &Map<String, Value>,
    settings: &crate::config::Settings,
) -> Result<Submission, ApiError> {
    use crate::config::report_types::BUILT_IN_TYPE;
    let name = match object.get("type") {
        None if object.contains_key("params") => {
            return Err(ApiError::invalid("type", "type is required with params"))
        }
        None => {
            let payload = parse_submission(object, built_in_range_days(settings))?;
            return Submission::built_in(&payload);
        }
        Some(Value::String(name)) => name.as_str(),
        Some(other) => {
            return Err(ApiError::invalid(
                "type",
                format!("type must be a string, got {}", type_name(other)),
            ))
        }
    };
    if let Some(field) = BUILT_IN_PARAMS
        .into_iter()
        .find(|f| object.contains_key(*f))
    {
        return Err(ApiError::invalid(
            field,
            format!("with type, {field} goes inside params"),
        ));
    }
    let params = params_object(object)?;
    if name == BUILT_IN_TYPE {
        return built_in_by_name(&params, built_in_range_days(settings));
    }
    let declared = settings
        .report_type(name)
        .ok_or_else(|| ApiError::invalid("type", format!("unknown report type `{name}`")))?;
    let values = declared
        .parse_params(&params)
        .map_err(|e| ApiError::invalid(&format!("params.{}", e.name), e.message))?;
    let user_id = values.get("userId").and_then(Value::as_i64);
    Ok(Submission {
        payload: json!({"type": name, "params": values}),
        user_id,
    })
}

/// Commits the row (through the StatusActor), then hands it to the dispatcher.
async fn accept(
    state: &AppState,
    submission: Submission,
    limits: JobLimits,
    key: Option<String>,
    callback_url: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let Submission {
        payload: payload_json,
        user_id,
    } = submission;
    // Before anything is written: a refused submit leaves no row and no message.
    if let Some(user) = user_id {
        let rate = state.settings.api.submit_rate_per_user;
        if let Err(retry_after_s) = state.submit_limiter.check(user, rate) {
            return Err(ApiError::too_many_requests(
                "userId",
                format!("user {user} submits more than {rate} reports per second (api.submit_rate_per_user, per process); retry after {retry_after_s} s"),
                retry_after_s,
            ));
        }
    }
    let request_hash = key.as_ref().map(|_| {
        let mut hashed = limits.hashed_with(&payload_json);
        // A callback is part of the request an idempotency key protects.
        if let Some(url) = &callback_url {
            hashed = format!("{hashed}|callbackUrl={url}");
        }
        hex::encode(Sha256::digest(hashed))
    });
    let id = Uuid::new_v4();
    let row = NewReport {
        id,
        payload: payload_json,
        status: JobStatus::InQueue.as_str().to_string(),
        idempotency_key: key.clone(),
        request_hash: request_hash.clone(),
        user_id,
        max_runtime_s: limits.max_runtime_s,
        not_after: limits.not_after,
        callback_url,
    };
    let inserted = status::insert(&state.status, row).await?;
    if !inserted {
        // The idempotency key exists: same body → the same report; else a conflict.
        let key = key.unwrap_or_default();
        let mut conn = db::connection(&state.pool).await?;
        let existing = reports::find_by_idempotency_key(&mut conn, &key)
            .await?
            .ok_or_else(|| ApiError::unavailable("the idempotency key vanished; retry"))?;
        if existing.request_hash != request_hash {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this Idempotency-Key was used with a different request body",
            )
            .with_field("Idempotency-Key"));
        }
        return Ok(HttpResponse::Ok()
            .insert_header((header::LOCATION, format!("/reports/{}", existing.id)))
            .json(accepted_body(
                &state.settings.server.public_url,
                existing.id,
                &existing.status,
            )));
    }
    state.metrics.jobs_accepted.inc();
    tracing::info!(report_id = %id, user_id, "report accepted");
    Ok(enqueue_and_accept(
        state,
        id,
        user_id,
        0,
        JobStatus::InQueue.as_str(),
    ))
}

/// Hands send number `generation` of a committed report to the dispatcher and answers
/// 202 with its links and `status`.
fn enqueue_and_accept(
    state: &AppState,
    id: Uuid,
    user_id: Option<i64>,
    generation: i32,
    status: &str,
) -> HttpResponse {
    match &state.dispatcher {
        Some(dispatcher) => dispatcher.enqueue(id, user_id, generation),
        None => {
            tracing::warn!(report_id = %id, "no dispatcher in this process; the reconciler of an api process will send it")
        }
    }
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/reports/{id}")))
        .json(accepted_body(&state.settings.server.public_url, id, status))
}

fn accepted_body(public_url: &str, id: Uuid, status: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    json!({
        "id": id,
        "status": status,
        "links": {
            "self": format!("{base}/reports/{id}"),
            "file": format!("{base}/reports/{id}/file"),
        }
    })
}

/// The body of `POST /reports`.
const SUBMISSION: BodyShape = BodyShape {
    allowed: &[
        "userId",
        "startDate",
        "endDate",
        "maxRuntimeS",
        "notAfter",
        "type",
        "params",
        "callbackUrl",
    ],
    expected: "a JSON object with type and params, or with userId, startDate, endDate (and an optional callbackUrl)",
};

/// How long a job's attempts may run and by when it must start: the submission's
/// `maxRuntimeS` and `notAfter`, else the `[jobs]` defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct JobLimits {
    /// Seconds an attempt may run; None = no limit.
    max_runtime_s: Option<i32>,
    /// Start by then or be cancelled as `expired`; None = never.
    not_after: Option<DateTime<Utc>>,
    /// Whether the submission named either (they then count in its idempotency hash).
    given: bool,
}

impl JobLimits {
    /// The `[jobs]` defaults for a report accepted at `now`.
    fn defaults(jobs: &JobSettings, now: DateTime<Utc>) -> Self {
        let expire_after = chrono::Duration::seconds(i64::from(jobs.expire_after_s));
        Self {
            max_runtime_s: positive(jobs.max_runtime_s),
            not_after: (jobs.expire_after_s > 0).then(|| now + expire_after),
            given: false,
        }
    }

    /// What an `Idempotency-Key` protects: the payload, plus the limits the client named
    /// (the defaults are not part of the request; a repeat after a config change is the
    /// same request).
    fn hashed_with(&self, payload: &Value) -> String {
        if !self.given {
            return payload.to_string();
        }
        let limits = json!({"maxRuntimeS": self.max_runtime_s, "notAfter": self.not_after});
        format!("{payload}|{limits}")
    }
}

/// A seconds setting where 0 means "none".
fn positive(seconds: u32) -> Option<i32> {
    i32::try_from(seconds).ok().filter(|s| *s > 0)
}

/// Reads `maxRuntimeS` (0..=a week, 0 = no limit) and `notAfter` (an RFC 3339
/// date-time; one in the past makes a job that expires unstarted), falling back to the
/// `[jobs]` defaults.
pub(crate) fn parse_job_limits(
    object: &Map<String, Value>,
    jobs: &JobSettings,
    now: DateTime<Utc>,
) -> Result<JobLimits, ApiError> {
    let mut limits = JobLimits::defaults(jobs, now);
    if let Some(value) = object.get("maxRuntimeS").filter(|v| !v.is_null()) {
        let seconds = value
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s <= MAX_JOB_SECONDS)
            .ok_or_else(|| {
                ApiError::invalid(
                    "maxRuntimeS",
                    format!("maxRuntimeS must be an integer in 0..={MAX_JOB_SECONDS} (0 = no limit), got {value}"),
                )
            })?;
        limits.max_runtime_s = positive(seconds);
        limits.given = true;
    }
    if let Some(value) = object.get("notAfter").filter(|v| !v.is_null()) {
        limits.not_after = Some(parse_not_after(value)?);
        limits.given = true;
    }
    Ok(limits)
}

fn parse_not_after(value: &Value) -> Result<DateTime<Utc>, ApiError> {
    let Value::String(raw) = value else {
        return Err(ApiError::invalid(
            "notAfter",
            format!(
                "notAfter must be an RFC 3339 date-time string, got {}",
                type_name(value)
            ),
        ));
    };
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|at| at.with_timezone(&Utc))
        .filter(|at| is_plain_instant(*at))
        .ok_or_else(|| {
            ApiError::invalid(
                "notAfter",
                format!("notAfter `{raw}` is not an RFC 3339 date-time (2024-01-31T12:00:00Z) in the years 0001–9999"),
            )
        })
}

/// Validates a submission, naming the field at fault.
pub(crate) fn parse_submission(
    object: &Map<String, Value>,
    max_range_days: i64,
) -> Result<ReportPayload, ApiError> {
    let user_id = parse_user_id(object)?;
    let start_date = parse_date(object, "startDate", false)?;
    let end_date = parse_date(object, "endDate", true)?;
    if start_date > end_date {
        return Err(ApiError::invalid(
            "startDate",
            "startDate must not be after endDate",
        ));
    }
    if end_date - start_date > chrono::Duration::days(max_range_days) {
        return Err(ApiError::invalid(
            "endDate",
            format!("the range is longer than {max_range_days} days"),
        ));
    }
    Ok(ReportPayload {
        user_id,
        start_date,
        end_date,
    })
}

fn parse_user_id(object: &Map<String, Value>) -> Result<i64, ApiError> {
    match object.get("userId") {
        None | Some(Value::Null) => Err(ApiError::invalid("userId", "userId is required")),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(id) if id > 0 => Ok(id),
            Some(_) => Err(ApiError::invalid(
                "userId",
                "userId must be a positive integer",
            )),
            None => Err(ApiError::invalid(
                "userId",
                format!("userId must be a positive integer, got {n}"),
            )),
        },
        Some(other) => Err(ApiError::invalid(
            "userId",
            format!(
                "userId must be a positive integer, got {}",
                type_name(other)
            ),
        )),
    }
}

/// An ISO-8601 date-time (with offset) or a date. A date as `endDate` means the end of
/// that day, so `2024-01-01..2024-01-01` covers the whole day.
fn parse_date(
    object: &Map<String, Value>,
    field: &str,
    end_of_day: bool,
) -> Result<DateTime<Utc>, ApiError> {
    let raw = match object.get(field) {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(field, format!("{field} is required")))
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} must be an ISO-8601 date or date-time string, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let parsed = match DateTime::parse_from_rfc3339(raw) {
        Ok(datetime) => Some(datetime.with_timezone(&Utc)),
        Err(_) => NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok().map(|date| {
            let time = if end_of_day {
                NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap_or(NaiveTime::MIN)
            } else {
                NaiveTime::MIN
            };
            Utc.from_utc_datetime(&date.and_time(time))
        }),
    };
    match parsed {
        Some(at) if is_plain_instant(at) => Ok(at),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} `{raw}` is outside the years 0001–9999 or names a leap second"),
        )),
        None => Err(ApiError::invalid(
            field,
            format!("{field} `{raw}` is not an ISO-8601 date (2024-01-31) or date-time (2024-01-31T12:00:00Z)"),
        )),
    }
}

/// An instant the API takes: years 1 to 9999 (what the reports' dates and the listing
/// cursor can mean), and no leap second (`23:59:60`, which chrono keeps as a 61st second
/// and PostgreSQL refuses).
fn is_plain_instant(at: DateTime<Utc>) -> bool {
    use chrono::{Datelike, Timelike};
    (1..=9999).contains(&at.year()) && at.nanosecond() < 1_000_000_000
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            format!("Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    Ok(Some(key.to_string()))
}

pub(crate) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("id", format!("`{raw}` is not a UUID")))
}

/// The record as clients see it. `file` is `{sizeBytes, sha256, contentType, expiresAt}`
/// (null without a file), where `expiresAt` is when a download link fetched now would
/// stop working: now + `link_ttl_s` (the s3 backend's `storage.presign_ttl_s`); null
/// for the local backend, whose file does not expire.
pub(crate) fn record_json(record: &ReportRecord, link_ttl_s: Option<u64>) -> Value {
    let file = record.file.to_file().map(|file| {
        let expires_at = link_ttl_s
            .and_then(|ttl| chrono::Duration::try_seconds(i64::try_from(ttl).ok()?))
            .map(|ttl| Utc::now() + ttl);
        json!({
            "sizeBytes": file.size_bytes,
            "sha256": file.sha256,
            "contentType": file.content_type,
            "expiresAt": expires_at,
        })
    });
    json!({
        "id": record.id,
        "status": record.status,
        "payload": record.payload,
        "reportUrl": record.report_url,
        "file": file,
        "attempts": record.attempts,
        "failures": record.failures,
        "lastError": record.last_error,
        "createdAt": record.created_at,
        "startedAt": record.started_at,
        "finishedAt": record.finished_at,
        "enqueuedAt": record.enqueued_at,
        "maxRuntimeS": record.max_runtime_s,
        "notAfter": record.not_after,
        "cancelRequestedAt": record.cancel_requested_at,
        "cancelReason": record.cancel_reason,
        "progress": record.progress,
        "etaS": eta_s(record, Utc::now()),
    })
}

/// One report, or a 404 naming the id.
pub(crate) async fn find_report(state: &AppState, id: Uuid) -> Result<ReportRecord, ApiError> {
    let mut conn = db::connection(&state.pool).await?;
    reports::find(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no report with id {id}")).with_field("id"))
}

#[utoipa::path(
    get,
    path = "/reports/{id}",
    tag = "reports",
    operation_id = "getReport",
    summary = "One report's status",
    params(("id" = Uuid, Path, description = "The report's id")),
    responses(
        (status = 200, description = "The report", body = super::schemas::Report,
            headers(("Retry-After" = u64, description = "While the report is not terminal: seconds \
                until polling is worth it again (a quarter of `etaS`, 1–30; 2 without an estimate)"))),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        super::schemas::ReadErrors,
        (status = 404, description = "No report with this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /reports/{id}`.
pub(crate) async fn get(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = find_report(&state, parse_id(&path)?).await?;
    let mut answer = HttpResponse::Ok();
    if !record.is_terminal() {
        // When polling is worth it again: sooner for a job about to finish.
        let wait = retry_after_s(eta_s(&record, Utc::now()));
        answer.insert_header((header::RETRY_AFTER, wait.to_string()));
    }
    Ok(answer.json(record_json(&record, state.store.link_ttl_s())))
}

/// Seconds a poller should wait: a quarter of the estimated time left, within 1–30 s;
/// 2 s without an estimate.
fn retry_after_s(eta_s: Option<u64>) -> u64 {
    eta_s.map_or(2, |eta| (eta / 4).clamp(1, 30))
}

/// The running attempt's estimated seconds left, from its latest progress; None when
/// it is not running, has not reported in this attempt, or is at 0 % or 100 %.
fn eta_s(record: &ReportRecord, now: DateTime<Utc>) -> Option<u64> {
    if record.status != JobStatus::InProgress.as_str() {
        return None;
    }
    eta_from(record.progress.as_ref()?, record.started_at?, now)
}

/// The pure rule of [`eta_s`]: the rest at the pace from `started` to the reading,
/// less the time since the reading.
fn eta_from(progress: &Value, started: DateTime<Utc>, now: DateTime<Utc>) -> Option<u64> {
    let reported: DateTime<Utc> = progress.get("updatedAt")?.as_str()?.parse().ok()?;
    if reported < started {
        // The previous attempt's reading: it says nothing about this attempt's pace.
        return None;
    }
    let percent = u8::try_from(progress.get("percent")?.as_u64()?).ok()?;
    let running_s = (reported - started).num_milliseconds() as f64 / 1e3;
    let left_at_report = progress::eta_s(percent, running_s)?;
    let since_report = u64::try_from((now - reported).num_seconds()).unwrap_or(0);
    Some(left_at_report.saturating_sub(since_report))
}

#[utoipa::path(
    get,
    path = "/reports/{id}/file",
    tag = "reports",
    operation_id = "getReportFile",
    summary = "The file of a completed report",
    params(("id" = Uuid, Path, description = "The report's id")),
    responses(
        (status = 200, description = "The file (local backend), with the content type recorded for it: CSV for the \
            built-in type and `csv` report types, JSON lines for `jsonl` ones, a workbook for `xlsx` ones, a command type's `content_type`",
            content((String = "text/csv"), (String = "application/jsonl"),
                (String = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"), (String = "application/octet-stream")),
            headers(
                ("Content-Disposition" = String, description = "`attachment; filename=\"<id>.<extension>\"` (`<id>.csv`, `<id>.jsonl`, …)"),
                ("Content-Encoding" = String, description = "`gzip` when the file is stored compressed (`storage.gzip`)"))),
        (status = 302, description = "s3 backend: a presigned GET URL of the object, valid for `storage.presign_ttl_s` \
            seconds, which downloads it as `<id>.<extension>`",
            headers(("Location" = String, description = "The presigned URL (carries `response-content-disposition`)"))),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 404, description = "No report with this id, not completed, or its file is not on this host", body = ErrorBody),
        (status = 405, response = super::schemas::MethodNotAllowed),
        (status = 503, description = "The database or the report store is unreachable, or the file unreadable; \
            retry later (`code: unavailable`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /reports/{id}/file`: the CSV, once the report is completed: this host's file
/// (local backend) or a redirect to a presigned URL (s3 backend).
pub(crate) async fn file(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let record = find_report(&state, id).await?;
    if record.status != JobStatus::Completed.as_str() {
        return Err(ApiError::not_found(format!(
            "report {id} is {}, not completed",
            record.status
        ))
        .with_field("id"));
    }
    let file = record.file.to_file();
    // A row completed before files were recorded has its file under the plain name.
    let csv = crate::report::CSV_CONTENT_TYPE.to_string();
    let (key, gzip, content_type) = match &file {
        Some(file) => (file.key.clone(), file.gzip, file.content_type.clone()),
        None if state.store.is_local() => (crate::storage::file_name(id, false), false, csv),
        None => {
            return Err(
                ApiError::not_found(format!("report {id} is completed but has no file"))
                    .with_field("id"),
            )
        }
    };
    let download = state
        .store
        .download(id, &key)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot reach the report file: {e}")))?;
    match download {
        Download::Redirect(url) => Ok(HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish()),
        Download::File(path) => local_file(id, &path, &key, gzip, &content_type).await,
    }
}

/// This host's copy of report `id`'s file, stored as `key`, of media type `content_type`
/// (the report type's format), saved by the browser under the key's name.
async fn local_file(
    id: Uuid,
    path: &std::path::Path,
    key: &str,
    gzip: bool,
    content_type: &str,
) -> Result<HttpResponse, ApiError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let mut answer = HttpResponse::Ok();
            answer.content_type(content_type).insert_header((
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    crate::storage::download_name(key)
                ),
            ));
            if gzip {
                answer.insert_header((header::CONTENT_ENCODING, "gzip"));
            }
            Ok(answer.body(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found(format!(
            "report {id} is completed but has no file on this host"
        ))
        .with_field("id")),
        Err(e) => Err(ApiError::unavailable(format!(
            "cannot read the report file: {e}"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/reports",
    tag = "reports",
    operation_id = "listReports",
    summary = "List reports, newest first",
    params(super::schemas::ListReportsQuery),
    responses(
        (status = 200, description = "A page of reports", body = super::schemas::ReportPage),
        (status = 400, description = "A bad or unknown query parameter (`field` names it)", body = ErrorBody),
        super::schemas::ReadErrors,
    ),
    security(("bearer" = []))
)]
/// `GET /reports?status=&userId=&createdFrom=&createdTo=&error=&limit=&cursor=`: newest
/// first, keyset pagination.
pub(crate) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let filter = parse_list_query(req.query_string())?;
    let mut conn = db::connection(&state.pool).await?;
    let rows = reports::list(&mut conn, &filter).await?;
    let next_cursor = if rows.len() as i64 == filter.limit {
        rows.last().map(|r| encode_cursor(r.created_at, r.id))
    } else {
        None
    };
    let ttl = state.store.link_ttl_s();
    let items: Vec<Value> = rows.iter().map(|r| record_json(r, ttl)).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "nextCursor": next_cursor })))
}

/// The longest `error` text a listing accepts.
const MAX_ERROR_TEXT: usize = 200;

/// Parses the listing's query string, naming the parameter at fault.
pub(crate) fn parse_list_query(query: &str) -> Result<reports::ListFilter, ApiError> {
    let pairs = input::query_pairs(
        query,
        &[
            "status",
            "userId",
            "limit",
            "cursor",
            "createdFrom",
            "createdTo",
            "error",
        ],
    )?;
    let mut filter = reports::ListFilter {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (key, value) in pairs {
        apply_list_param(&mut filter, &key, &value)?;
    }
    if let (Some(from), Some(to)) = (filter.created_from, filter.created_to) {
        if to <= from {
            return Err(ApiError::invalid("createdTo", "must be after createdFrom"));
        }
    }
    if filter.error_text.is_some() {
        match filter.status {
            None | Some(JobStatus::Failed) => filter.status = Some(JobStatus::Failed),
            Some(other) => {
                return Err(ApiError::invalid(
                    "error",
                    format!(
                        "searches the last error of failed reports; it cannot go with status `{}`",
                        other.as_str()
                    ),
                ))
            }
        }
    }
    Ok(filter)
}

/// Sets one listing parameter on `filter`.
fn apply_list_param(
    filter: &mut reports::ListFilter,
    key: &str,
    value: &str,
) -> Result<(), ApiError> {
    match key {
        "status" => {
            filter.status = Some(JobStatus::parse(value).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    format!(
                    "`{value}` is not one of in-queue, in-progress, completed, failed, cancelled"
                ),
                )
            })?)
        }
        "userId" => {
            filter.user_id = Some(value.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(
                || ApiError::invalid("userId", format!("`{value}` is not a positive integer")),
            )?)
        }
        "limit" => filter.limit = super::parse_limit(value, MAX_LIMIT)?,
        "cursor" => filter.after = Some(decode_cursor(value)?),
        "createdFrom" => filter.created_from = Some(parse_instant("createdFrom", value)?),
        "createdTo" => filter.created_to = Some(parse_instant("createdTo", value)?),
        "error" => {
            let text = value;
            if text.is_empty() || text.chars().count() > MAX_ERROR_TEXT {
                return Err(ApiError::invalid(
                    "error",
                    format!("must be 1 to {MAX_ERROR_TEXT} characters"),
                ));
            }
            filter.error_text = Some(text.to_string());
        }
        // query_pairs passed only the names above.
        other => {
            return Err(ApiError::invalid(
                other,
                format!("unknown query parameter `{other}`"),
            ))
        }
    }
    Ok(())
}

/// An instant of a listing filter: RFC 3339 (`2026-12-01T10:00:00Z`), or without an
/// offset (`2026-12-01T10:00`, as a browser's date-time field sends it) or a bare date,
/// both read as UTC.
pub(crate) fn parse_instant(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    let raw = raw.trim();
    // RFC 3339 and the bare date are the report parameters' own rule; a browser's
    // date-time field adds the offset-free forms.
    let parsed = crate::config::report_types::parse_timestamp(raw)
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|f| chrono::NaiveDateTime::parse_from_str(raw, f).ok())
                .map(|naive| naive.and_utc())
        })
        .filter(|at| is_plain_instant(*at));
    parsed.ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("`{raw}` is not a date-time (2026-12-01T10:00:00Z, 2026-12-01T10:00 or 2026-12-01, UTC)"),
        )
    })
}

/// A cursor is the last row's `(created_at, id)`, base64url-encoded.
pub(crate) fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{id}", created_at.timestamp_micros()))
}

fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    use base64::Engine;
    let bad = || {
        ApiError::invalid(
            "cursor",
            "not a cursor returned by this API (use nextCursor as given)",
        )
    };
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let created_at = DateTime::from_timestamp_micros(micros)
        .filter(|at| is_plain_instant(*at))
        .ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((created_at, id))
}

#[utoipa::path(
    post,
    path = "/reports/{id}/retry",
    tag = "reports",
    operation_id = "retryReport",
    summary = "Give a failed or stranded report a new message",
    description = "A failed report goes back to in-queue with its failures forgotten; an \
        in-queue or in-progress one that nothing touched for 3 visibility timeouts + 30 s \
        (its message is lost) is sent again. The request has no body.",
    params(("id" = Uuid, Path, description = "The report's id")),
    responses(
        (status = 202, description = "A new message is on its way; `status` is the report's status after the reset",
            body = super::schemas::Accepted, headers(("Location" = String, description = "The report's path"))),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        super::schemas::ReadErrors,
        (status = 404, description = "No report with this id", body = ErrorBody),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 409, description = "The report is completed, or in-queue/in-progress and alive (`code: not_retryable`)",
            body = ErrorBody),
        (status = 413, response = super::schemas::PayloadTooLarge),
    ),
    security(("bearer" = []))
)]
/// `POST /reports/{id}/retry`: gives a report a new message. A `failed` report goes
/// back to `in-queue` with its failures forgotten (attempts kept); a non-terminal one
/// that nothing touched for the reconciler's `stranded_after` (its message is lost)
/// goes back to `in-queue` too, failures kept. Either way the send generation is bumped first, so a FIFO queue
/// does not drop the new message as a duplicate of the old one. 409 for a live or
/// completed report.
pub(crate) async fn retry(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let stranded_after = Timings::from_settings(&state.settings).stranded_after;
    let mut conn = db::connection(&state.pool).await?;
    let row = reconcile::fate(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no report with id {id}")).with_field("id"))?;
    let status = row
        .job_status()
        .ok_or_else(|| not_retryable(id, &row.status, stranded_after))?;
    let resent = match retry_verdict(status, row.age(), stranded_after) {
        RetryVerdict::ResetFailed => reconcile::reset_failed(&mut conn, id).await?,
        // An operator's retry starts over from `in-queue`: the next claim must not wait
        // for a silent `in-progress` row to go stale.
        RetryVerdict::ResendStranded => {
            reconcile::resend_many(&mut conn, &[row.seen()], Some(JobStatus::InQueue))
                .await?
                .pop()
        }
        RetryVerdict::Refuse => return Err(not_retryable(id, &row.status, stranded_after)),
    };
    drop(conn);
    let Some(resent) = resent else {
        // A worker touched the row between the read and the update.
        let now = find_report(&state, id).await?;
        return Err(not_retryable(id, &now.status, stranded_after));
    };
    let status = JobStatus::InQueue;
    tracing::info!(report_id = %id, generation = resent.send_generation, was = %row.status, "report retried by an operator");
    Ok(enqueue_and_accept(
        &state,
        id,
        resent.user_id,
        resent.send_generation,
        status.as_str(),
    ))
}

/// The optional body of `POST /reports/{id}/cancel`.
const CANCEL: BodyShape = BodyShape {
    allowed: &["reason"],
    expected: "no body, or {\"reason\": \"…\"}",
};

/// Longest cancel reason kept.
const MAX_REASON_CHARS: usize = 500;

#[utoipa::path(
    post,
    path = "/reports/{id}/cancel",
    tag = "reports",
    operation_id = "cancelReport",
    summary = "Cancel a waiting or running report",
    description = "A waiting report is cancelled at once (200); a running one, on whichever \
        process runs it, stops at its worker's next heartbeat (202, `cancelRequestedAt` set). \
        Cancelling a cancelled report answers the same again. The body is optional.",
    params(("id" = Uuid, Path, description = "The report's id")),
    request_body(content = super::schemas::CancelRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The report, cancelled", body = super::schemas::Report),
        (status = 202, description = "The report, running; its worker stops it at its next heartbeat",
            body = super::schemas::Report),
        (status = 400, description = "`id` is not a UUID, or a bad body (`field` names it)", body = ErrorBody),
        super::schemas::WriteErrors,
        (status = 404, description = "No report with this id", body = ErrorBody),
        (status = 409, description = "The report is completed or failed (`code: not_cancellable`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /reports/{id}/cancel` with an optional `{"reason": "…"}`. A waiting job is
/// `cancelled` at once (200); a running one, on whichever process, stops at its
/// worker's next heartbeat (202, `cancelRequestedAt` set); a cancelled one answers the
/// same again (200); a completed or failed one 409.
pub(crate) async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let object =
        input::optional_json_object(&req, body, state.settings.api.max_body_bytes, &CANCEL).await?;
    let reason = object.as_ref().map(cancel_reason).transpose()?.flatten();
    let (status, record) = cancel_one(&state, id, reason).await?;
    Ok(HttpResponse::build(status).json(record_json(&record, state.store.link_ttl_s())))
}

/// Cancels report `id` (see [`cancel`]): 200 with the cancelled report, 202 when its
/// running worker stops it later; the console's cancel calls this too.
pub(crate) async fn cancel_one(
    state: &AppState,
    id: Uuid,
    reason: Option<String>,
) -> Result<(StatusCode, ReportRecord), ApiError> {
    let mut conn = db::connection(&state.pool).await?;
    let outcome = reports::request_cancel(&mut conn, id, reason.as_deref()).await?;
    let record = reports::find(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no report with id {id}")).with_field("id"))?;
    drop(conn);
    let status = match outcome {
        Some(CancelOutcome::Cancelled) => {
            state.metrics.jobs_cancelled.inc();
            tracing::info!(report_id = %id, reason = ?reason, "report cancelled before it ran");
            StatusCode::OK
        }
        Some(CancelOutcome::Requested) => {
            tracing::info!(report_id = %id, reason = ?reason, "cancel requested for a running report");
            StatusCode::ACCEPTED
        }
        None if record.status == JobStatus::Cancelled.as_str() => StatusCode::OK,
        None => return Err(not_cancellable(id, &record.status)),
    };
    Ok((status, record))
}

fn not_cancellable(id: Uuid, status: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_cancellable",
        format!("report {id} is {status}; only in-queue and in-progress reports can be cancelled"),
    )
    .with_field("id")
}

/// The `reason` of a cancel body: a string of at most [`MAX_REASON_CHARS`].
fn cancel_reason(object: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match object.get("reason") {
        None | Some(Value::Null) => Ok(None),
        // PostgreSQL text cannot hold a NUL: stored, it failed as a 503 (schemathesis).
        Some(Value::String(reason)) if reason.contains('\0') => Err(ApiError::invalid(
            "reason",
            "reason must not contain a NUL character",
        )),
        Some(Value::String(reason)) if reason.chars().count() <= MAX_REASON_CHARS => {
            Ok(Some(reason.clone()))
        }
        Some(Value::String(_)) => Err(ApiError::invalid(
            "reason",
            format!("reason is longer than {MAX_REASON_CHARS} characters"),
        )),
        Some(other) => Err(ApiError::invalid(
            "reason",
            format!("reason must be a string, got {}", type_name(other)),
        )),
    }
}

fn not_retryable(id: Uuid, status: &str, stranded_after: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_retryable",
        format!(
            "report {id} is {status}; only failed reports, and in-queue or in-progress ones untouched for {} s (stranded), can be retried",
            stranded_after.as_secs()
        ),
    )
    .with_field("id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_filters_parse_and_name_the_field_at_fault() {
        let f = parse_list_query("createdFrom=2026-01-01&createdTo=2026-01-02T10:30&error=503")
            .expect("valid");
        assert_eq!(
            f.created_from.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-01T00:00:00+00:00")
        );
        assert_eq!(
            f.created_to.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-01-02T10:30:00+00:00")
        );
        assert_eq!(f.error_text.as_deref(), Some("503"));
        assert_eq!(f.status, Some(JobStatus::Failed), "error implies failed");
        let field = |q: &str| parse_list_query(q).err().and_then(|e| e.field);
        assert_eq!(
            field("createdFrom=yesterday").as_deref(),
            Some("createdFrom")
        );
        assert_eq!(
            field("createdFrom=2026-01-02&createdTo=2026-01-01").as_deref(),
            Some("createdTo")
        );
        assert_eq!(field("error=x&status=completed").as_deref(), Some("error"));
        assert_eq!(
            field(&format!("error={}", "x".repeat(201))).as_deref(),
            Some("error")
        );
        assert!(parse_list_query("createdTo=2026-01-01T00:00:00%2B02:00").is_ok());
    }

    fn date(raw: &str) -> Result<DateTime<Utc>, ApiError> {
        let mut object = Map::new();
        object.insert("startDate".into(), Value::String(raw.into()));
        parse_date(&object, "startDate", false)
    }

    #[test]
    fn the_eta_is_the_rest_at_this_attempts_pace_less_the_time_since_the_reading() {
        let started = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        let reading = |percent: u64, after_s: i64| json!({"percent": percent, "updatedAt": started + chrono::Duration::seconds(after_s)});
        let at = |s: i64| started + chrono::Duration::seconds(s);
        // 25 % after 10 s: 30 s left then, 28 s two seconds later.
        assert_eq!(eta_from(&reading(25, 10), started, at(12)), Some(28));
        assert_eq!(eta_from(&reading(25, 10), started, at(100)), Some(0));
        assert_eq!(eta_from(&reading(0, 10), started, at(10)), None);
        // A reading from before this attempt started says nothing about it.
        assert_eq!(eta_from(&reading(50, -5), started, at(1)), None);
    }

    #[test]
    fn pollers_wait_a_quarter_of_the_eta_within_one_to_thirty_seconds() {
        assert_eq!(retry_after_s(None), 2);
        assert_eq!(retry_after_s(Some(0)), 1);
        assert_eq!(retry_after_s(Some(40)), 10);
        assert_eq!(retry_after_s(Some(10_000)), 30);
    }

    #[test]
    fn dates_outside_years_1_to_9999_and_leap_seconds_are_refused() {
        for raw in [
            "-5000-01-01",
            "+10000-01-01",
            "2024-06-30T23:59:60Z",
            "0000-01-01",
        ] {
            assert!(date(raw).is_err(), "{raw} accepted");
        }
        for raw in [
            "2024-01-31",
            "0001-01-01",
            "9999-12-31T23:59:59Z",
            "2024-01-31T12:00:00+02:00",
        ] {
            assert!(date(raw).is_ok(), "{raw} refused");
        }
    }

    #[test]
    fn a_cursor_round_trips_and_one_out_of_range_is_refused() {
        let id = Uuid::new_v4();
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).ok(), Some((at, id)));
        use base64::Engine;
        let far = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}|{id}", i64::MAX / 2));
        assert!(decode_cursor(&far).is_err());
        assert!(decode_cursor("not base64!").is_err());
    }
}
