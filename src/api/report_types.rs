//! `/report-types`: the report types this process accepts, with their parameters.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::AppState;
use crate::config::report_types::{ParamType, ReportKind, BUILT_IN_PARAMS, BUILT_IN_TYPE};
use crate::config::{ReportTypeSettings, Settings};

/// `GET /report-types`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReportTypeList {
    /// The built-in type first, then the declared ones in config order.
    pub items: Vec<ReportTypeInfo>,
}

/// One report type as a client submits it: `{"type": name, "params": {…}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReportTypeInfo {
    /// The `type` of a submission.
    pub name: String,
    /// What the report is.
    pub description: String,
    /// `built-in`, `sql` or `command`.
    pub kind: &'static str,
    /// `csv`, `jsonl` or `xlsx` (a `sql` or the built-in type); absent for a command, whose
    /// `contentType` says what it makes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    /// The file's media type.
    pub content_type: String,
    /// The longest `startDate`..`endDate` range, in days, when limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_range_days: Option<i64>,
    /// The parameters, by name.
    pub params: BTreeMap<String, ParamInfo>,
}

/// One parameter of a report type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ParamInfo {
    /// `integer`, `number`, `string`, `boolean`, `date` (`YYYY-MM-DD`) or `timestamp`
    /// (RFC 3339, or a date meaning its midnight UTC).
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    /// Whether a submission must give it.
    pub required: bool,
    /// The value used when it is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// A string's longest length, in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// A string's only accepted values.
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    #[schema(rename = "enum")]
    pub allowed: Option<Vec<String>>,
}

fn type_name(kind: ParamType) -> String {
    kind.name().to_string()
}

fn required(kind: ParamType) -> ParamInfo {
    ParamInfo {
        kind: type_name(kind),
        required: true,
        default: None,
        max_len: None,
        allowed: None,
    }
}

/// The built-in type, described like a declared one.
fn built_in(settings: &Settings) -> ReportTypeInfo {
    ReportTypeInfo {
        name: BUILT_IN_TYPE.into(),
        description: "Per-day event counts and amounts of one user (the demo table user_activity)"
            .into(),
        kind: "built-in",
        format: Some("csv"),
        content_type: crate::report::CSV_CONTENT_TYPE.into(),
        max_range_days: Some(settings.api.max_range_days),
        params: BUILT_IN_PARAMS
            .into_iter()
            .map(|(name, kind)| (name.to_string(), required(kind)))
            .collect(),
    }
}

fn declared(t: &ReportTypeSettings) -> ReportTypeInfo {
    let params = t
        .params
        .iter()
        .map(|(name, spec)| {
            let full = spec.full();
            let info = ParamInfo {
                kind: type_name(full.kind),
                required: !full.optional && full.default.is_none(),
                default: full.default,
                max_len: full.max_len,
                allowed: full.allowed,
            };
            (name.clone(), info)
        })
        .collect();
    let (kind, format, content_type) = match t.kind {
        ReportKind::Sql => (
            "sql",
            Some(t.format.extension()),
            t.format.content_type().to_string(),
        ),
        ReportKind::Command => (
            "command",
            None,
            t.content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
        ),
    };
    ReportTypeInfo {
        name: t.name.clone(),
        description: t.description.clone(),
        kind,
        format,
        content_type,
        max_range_days: t.max_range_days.map(i64::from),
        params,
    }
}

#[utoipa::path(
    get,
    path = "/report-types",
    tag = "reports",
    operation_id = "listReportTypes",
    summary = "The report types a submission may name, with their parameters",
    responses(
        (status = 200, description = "The types", body = ReportTypeList),
        super::schemas::ReadErrors,
    ),
    security(("bearer" = []))
)]
/// `GET /report-types`.
pub(crate) async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings;
    // config.toml declares the built-in type; a config that does not still has it.
    let mut items = Vec::new();
    if settings.report_type(BUILT_IN_TYPE).is_none() {
        items.push(built_in(settings));
    }
    items.extend(settings.report_types.iter().map(|t| {
        let mut info = declared(t);
        if t.name == BUILT_IN_TYPE && info.max_range_days.is_none() {
            // The original body is held to api.max_range_days then.
            info.max_range_days = Some(settings.api.max_range_days);
        }
        info
    }));
    Ok(HttpResponse::Ok().json(ReportTypeList { items }))
}
