//! `[[report_types]]`: report types declared in config — a SQL query with named
//! parameters, or an external command — and the parameter rules that both the API
//! (`POST /reports`) and the generators apply, so one owner decides what a valid value is.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ConfigError;

/// The name of the built-in report type: the original body `{userId, startDate, endDate}`
/// is a report of this type. `config.toml` declares it as SQL; a config that does not
/// declare it gets the Rust CSV generator over `user_activity`, which makes the same file.
pub const BUILT_IN_TYPE: &str = "user-activity";

/// The parameters of the built-in type: the original body's fields, with the types its
/// validation gives them (`startDate` / `endDate` are stored as RFC 3339 timestamps, a
/// plain `endDate` meaning the end of that day).
pub const BUILT_IN_PARAMS: [(&str, ParamType); 3] = [
    ("userId", ParamType::Integer),
    ("startDate", ParamType::Timestamp),
    ("endDate", ParamType::Timestamp),
];

/// Longest `statement_timeout_s` / `timeout_s` of a report type: a day.
const MAX_TYPE_TIMEOUT_S: u32 = 24 * 3600;

/// One `[[report_types]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportTypeSettings {
    /// What clients put in `"type"`: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Shown by `GET /report-types`.
    #[serde(default)]
    pub description: String,
    /// `sql` (the default) runs `query`; `command` runs `command`.
    #[serde(default)]
    pub kind: ReportKind,
    /// Output of a `sql` type: `csv` (a header line, then one line per row), `jsonl` or `xlsx`.
    #[serde(default)]
    pub format: ReportFormat,
    /// The `sql` type's query; `:name` marks a parameter, bound as a real parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The parameters clients send in `"params"`, by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// With parameters `startDate` and `endDate`: the longest range accepted, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_range_days: Option<u32>,
    /// `sql`: the query's `statement_timeout` in seconds (the transaction's own).
    #[serde(default = "default_statement_timeout_s")]
    pub statement_timeout_s: u32,
    /// `command`: the program and its arguments (no shell).
    #[serde(default)]
    pub command: Vec<String>,
    /// `command`: the media type of what the program writes to standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `command`: the file name extension (without the dot); default `bin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// `command`: seconds the program may run before it is stopped and the attempt fails.
    #[serde(default = "default_command_timeout_s")]
    pub timeout_s: u32,
    /// `command`: the program's whole environment besides `PATH` (nothing else is
    /// inherited, so the daemon's secrets do not leak into it).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_statement_timeout_s() -> u32 {
    300
}

fn default_command_timeout_s() -> u32 {
    600
}

/// How a report type makes its file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// A query against the database.
    #[default]
    Sql,
    /// An external program.
    Command,
}

/// The file format of a `sql` report type.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    /// RFC 4180 CSV with a header line.
    #[default]
    Csv,
    /// One JSON object per line, keyed by column name.
    Jsonl,
    /// An Excel workbook of one sheet: a header row, then one row per result row
    /// (numeric columns as numbers, the rest as text). Never gzip-compressed: it is a
    /// zip already.
    Xlsx,
}

impl ReportFormat {
    /// The file's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            ReportFormat::Csv => "text/csv; charset=utf-8",
            ReportFormat::Jsonl => "application/jsonl",
            ReportFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
        }
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Jsonl => "jsonl",
            ReportFormat::Xlsx => "xlsx",
        }
    }
}

/// The type of one parameter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A JSON integer (bound as `bigint`).
    Integer,
    /// A JSON number (bound as `double precision`).
    Number,
    /// A JSON string (bound as `text`).
    String,
    /// `true` / `false` (bound as `boolean`).
    Boolean,
    /// `YYYY-MM-DD` (bound as `date`).
    Date,
    /// An RFC 3339 date-time, or a date meaning its midnight UTC (bound as `timestamptz`).
    Timestamp,
}

impl ParamType {
    /// The name config and `GET /report-types` use.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::String => "string",
            ParamType::Boolean => "boolean",
            ParamType::Date => "date",
            ParamType::Timestamp => "timestamp",
        }
    }

    /// The PostgreSQL type the (text) parameter is cast to in the query.
    pub fn sql_type(self) -> &'static str {
        match self {
            ParamType::Integer => "bigint",
            ParamType::Number => "double precision",
            ParamType::String => "text",
            ParamType::Boolean => "boolean",
            ParamType::Date => "date",
            ParamType::Timestamp => "timestamptz",
        }
    }
}

/// A parameter: just its type (`userId = "integer"`), or a table with the options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ParamSpec {
    /// `name = "integer"`: required, no options.
    Short(ParamType),
    /// `name = { type = "string", max_len = 20, enum = [...], optional = true, default = ... }`.
    Full(FullParamSpec),
}

/// The table form of a parameter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FullParamSpec {
    /// The value's type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// May be left out (then `default`, or SQL NULL without one).
    #[serde(default)]
    pub optional: bool,
    /// The value used when the parameter is left out (implies `optional`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// `string`: the longest value, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// `string`: the only values accepted.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
}

impl ParamSpec {
    /// The table form (the short form is a required parameter without options).
    pub fn full(&self) -> FullParamSpec {
        match self {
            ParamSpec::Short(kind) => FullParamSpec {
                kind: *kind,
                optional: false,
                default: None,
                max_len: None,
                allowed: None,
            },
            ParamSpec::Full(full) => full.clone(),
        }
    }

    /// The parameter's type.
    pub fn kind(&self) -> ParamType {
        match self {
            ParamSpec::Short(kind) => *kind,
            ParamSpec::Full(full) => full.kind,
        }
    }
}

impl FullParamSpec {
    /// Checks a client's value and returns it in canonical form (dates as `YYYY-MM-DD`,
    /// timestamps as RFC 3339 UTC); the error says what was expected.
    pub fn parse_value(&self, value: &Value) -> Result<Value, String> {
        match (self.kind, value) {
            (ParamType::Integer, Value::Number(n)) if n.as_i64().is_some() => Ok(value.clone()),
            (ParamType::Integer, _) => Err(format!("must be an integer, got {value}")),
            (ParamType::Number, Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
                Ok(value.clone())
            }
            (ParamType::Number, _) => Err(format!("must be a number, got {value}")),
            (ParamType::Boolean, Value::Bool(_)) => Ok(value.clone()),
            (ParamType::Boolean, _) => Err(format!("must be true or false, got {value}")),
            (ParamType::String, Value::String(s)) => self.check_string(s).map(|()| value.clone()),
            (ParamType::String, _) => Err(format!("must be a string, got {value}")),
            (ParamType::Date, Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| Value::String(d.to_string()))
                .map_err(|_| format!("must be a date like 2024-01-31, got `{s}`")),
            (ParamType::Timestamp, Value::String(s)) => parse_timestamp(s)
                .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
                .ok_or_else(|| {
                    format!(
                        "must be an RFC 3339 date-time (2024-01-31T12:00:00Z) or a date, got `{s}`"
                    )
                }),
            (ParamType::Date | ParamType::Timestamp, _) => {
                Err(format!("must be a string, got {value}"))
            }
        }
    }

    fn check_string(&self, s: &str) -> Result<(), String> {
        if let Some(max) = self.max_len {
            if s.chars().count() > max {
                return Err(format!("is longer than {max} characters"));
            }
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|a| a == s) {
                return Err(format!("must be one of {allowed:?}, got `{s}`"));
            }
        }
        Ok(())
    }
}

/// A parameter the client got wrong: its name and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    /// The parameter's name (the API reports it as `params.<name>`).
    pub name: String,
    /// What is wrong with it.
    pub message: String,
}

impl ReportTypeSettings {
    /// Checks a submission's `params` against the declared ones: every required one
    /// present, each of its type, no unknown names, a date range within `max_range_days`.
    /// Returns the values to store (canonical, defaults filled in).
    pub fn parse_params(
        &self,
        given: &serde_json::Map<String, Value>,
    ) -> Result<serde_json::Map<String, Value>, ParamError> {
        let error = |name: &str, message: String| ParamError {
            name: name.to_string(),
            message,
        };
        if let Some(unknown) = given.keys().find(|k| !self.params.contains_key(*k)) {
            return Err(error(
                unknown,
                format!(
                    "`{unknown}` is not a parameter of report type `{}`",
                    self.name
                ),
            ));
        }
        let mut values = serde_json::Map::new();
        for (name, spec) in &self.params {
            let full = spec.full();
            let value = match given.get(name).filter(|v| !v.is_null()) {
                Some(value) => full
                    .parse_value(value)
                    .map_err(|e| error(name, format!("{name} {e}")))?,
                None if full.optional || full.default.is_some() => {
                    full.default.clone().unwrap_or(Value::Null)
                }
                None => return Err(error(name, format!("{name} is required"))),
            };
            values.insert(name.clone(), value);
        }
        self.check_range(&values).map_err(|m| error("endDate", m))?;
        Ok(values)
    }

    fn check_range(&self, values: &serde_json::Map<String, Value>) -> Result<(), String> {
        let Some(max_days) = self.max_range_days else {
            return Ok(());
        };
        let at = |name: &str| {
            values
                .get(name)
                .and_then(Value::as_str)
                .and_then(parse_timestamp)
        };
        let (Some(start), Some(end)) = (at("startDate"), at("endDate")) else {
            return Ok(());
        };
        if start > end {
            return Err("endDate must not be before startDate".into());
        }
        if end - start > chrono::Duration::days(i64::from(max_days)) {
            return Err(format!("the range is longer than {max_days} days"));
        }
        Ok(())
    }
}

/// An RFC 3339 date-time, or a plain date meaning its midnight UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
}

/// Whether `name` is a parameter name the query rewriter recognises after a `:`.
pub fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn invalid(key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidKey {
        key,
        reason: reason.into(),
    }
}

/// Checks every declared type; the error names the key, e.g. `report_types[2].params.startDate`.
pub(super) fn validate(types: &[ReportTypeSettings]) -> Result<(), ConfigError> {
    for (i, declared) in types.iter().enumerate() {
        let at = format!("report_types[{i}]");
        validate_name(types, i, &at)?;
        match declared.kind {
            ReportKind::Sql => validate_sql(declared, &at)?,
            ReportKind::Command => validate_command(declared, &at)?,
        }
        for (name, spec) in &declared.params {
            validate_param(name, spec, &format!("{at}.params.{name}"))?;
        }
        validate_range(declared, &at)?;
        if declared.name == BUILT_IN_TYPE {
            validate_built_in_params(declared, &at)?;
        }
    }
    Ok(())
}

/// A declaration of the built-in type takes the original body's fields as its
/// parameters, so it must declare each of them with the type the body gives it, and
/// anything else as optional (the original body cannot send it).
fn validate_built_in_params(declared: &ReportTypeSettings, at: &str) -> Result<(), ConfigError> {
    for (name, kind) in BUILT_IN_PARAMS {
        let key = format!("{at}.params.{name}");
        let full = declared.params.get(name).map(ParamSpec::full);
        match full {
            None => {
                return Err(invalid(
                    key,
                    format!("`{BUILT_IN_TYPE}` takes the original body's `{name}`: declare it"),
                ))
            }
            Some(spec) if spec.kind != kind || spec.optional || spec.default.is_some() => {
                return Err(invalid(
                    key,
                    format!(
                        "`{BUILT_IN_TYPE}` needs `{name}` as a required {} (the original body's type)",
                        kind.name()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let extra = declared.params.iter().find(|(name, spec)| {
        let full = spec.full();
        !BUILT_IN_PARAMS.iter().any(|(known, _)| known == name)
            && !full.optional
            && full.default.is_none()
    });
    if let Some((name, _)) = extra {
        return Err(invalid(
            format!("{at}.params.{name}"),
            format!("the original body of `{BUILT_IN_TYPE}` cannot send `{name}`: make it optional or give it a default"),
        ));
    }
    Ok(())
}

fn validate_name(types: &[ReportTypeSettings], i: usize, at: &str) -> Result<(), ConfigError> {
    let name = &types[i].name;
    let well_formed = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !well_formed {
        return Err(invalid(
            format!("{at}.name"),
            format!("`{name}` is not 1–64 lowercase letters, digits, `-` or `_`"),
        ));
    }
    if types[..i].iter().any(|t| &t.name == name) {
        return Err(invalid(
            format!("{at}.name"),
            format!("`{name}` is declared twice"),
        ));
    }
    Ok(())
}

fn validate_sql(declared: &ReportTypeSettings, at: &str) -> Result<(), ConfigError> {
    if declared
        .query
        .as_deref()
        .is_none_or(|q| q.trim().is_empty())
    {
        return Err(invalid(
            format!("{at}.query"),
            "a sql report type needs a query",
        ));
    }
    if !declared.command.is_empty() {
        return Err(invalid(
            format!("{at}.command"),
            "only a report type of kind = \"command\" runs a command",
        ));
    }
    if !(1..=MAX_TYPE_TIMEOUT_S).contains(&declared.statement_timeout_s) {
        return Err(invalid(
            format!("{at}.statement_timeout_s"),
            format!(
                "{} is outside 1..={MAX_TYPE_TIMEOUT_S} seconds",
                declared.statement_timeout_s
            ),
        ));
    }
    Ok(())
}

fn validate_command(declared: &ReportTypeSettings, at: &str) -> Result<(), ConfigError> {
    if declared.command.first().is_none_or(|p| p.is_empty()) {
        return Err(invalid(
            format!("{at}.command"),
            "a command report type needs the program and its arguments, e.g. [\"python3\", \"report.py\"]",
        ));
    }
    if declared.query.is_some() {
        return Err(invalid(
            format!("{at}.query"),
            "a command report type runs no query",
        ));
    }
    if !(1..=MAX_TYPE_TIMEOUT_S).contains(&declared.timeout_s) {
        return Err(invalid(
            format!("{at}.timeout_s"),
            format!(
                "{} is outside 1..={MAX_TYPE_TIMEOUT_S} seconds",
                declared.timeout_s
            ),
        ));
    }
    if let Some(ext) = &declared.extension {
        if ext.is_empty() || !ext.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(
                format!("{at}.extension"),
                format!("`{ext}` is not letters and digits (no dot)"),
            ));
        }
    }
    if let Some(bad) = declared
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(invalid(
            format!("{at}.env"),
            format!("`{bad}` is not an environment variable name"),
        ));
    }
    Ok(())
}

fn validate_param(name: &str, spec: &ParamSpec, key: &str) -> Result<(), ConfigError> {
    if !is_param_name(name) {
        return Err(invalid(
            key.to_string(),
            "a parameter name is a letter or `_`, then letters, digits or `_`",
        ));
    }
    let full = spec.full();
    if full.kind != ParamType::String && (full.max_len.is_some() || full.allowed.is_some()) {
        return Err(invalid(
            key.to_string(),
            "max_len and enum apply to string parameters only",
        ));
    }
    if let Some(default) = &full.default {
        full.parse_value(default)
            .map_err(|e| invalid(format!("{key}.default"), e))?;
    }
    Ok(())
}

fn validate_range(declared: &ReportTypeSettings, at: &str) -> Result<(), ConfigError> {
    if declared.max_range_days.is_none() {
        return Ok(());
    }
    let is_date = |name: &str| {
        declared
            .params
            .get(name)
            .is_some_and(|p| matches!(p.kind(), ParamType::Date | ParamType::Timestamp))
    };
    if !(is_date("startDate") && is_date("endDate")) {
        return Err(invalid(
            format!("{at}.max_range_days"),
            "needs date or timestamp parameters named startDate and endDate",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(kind: ParamType) -> FullParamSpec {
        ParamSpec::Short(kind).full()
    }

    #[test]
    fn values_are_checked_by_type_and_canonicalised() {
        assert_eq!(
            spec(ParamType::Integer).parse_value(&json!(7)),
            Ok(json!(7))
        );
        assert!(spec(ParamType::Integer).parse_value(&json!(1.5)).is_err());
        assert!(spec(ParamType::Integer).parse_value(&json!("7")).is_err());
        assert!(spec(ParamType::Number).parse_value(&json!(1.5)).is_ok());
        assert!(spec(ParamType::Boolean).parse_value(&json!(1)).is_err());
        assert_eq!(
            spec(ParamType::Date).parse_value(&json!("2024-02-29")),
            Ok(json!("2024-02-29"))
        );
        assert!(spec(ParamType::Date)
            .parse_value(&json!("2023-02-29"))
            .is_err());
        assert_eq!(
            spec(ParamType::Timestamp).parse_value(&json!("2024-01-01T01:00:00+01:00")),
            Ok(json!("2024-01-01T00:00:00Z"))
        );
        assert_eq!(
            spec(ParamType::Timestamp).parse_value(&json!("2024-01-01")),
            Ok(json!("2024-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn strings_obey_max_len_and_enum() {
        let mut s = spec(ParamType::String);
        s.max_len = Some(3);
        assert!(s.parse_value(&json!("abc")).is_ok());
        assert!(s.parse_value(&json!("abcd")).is_err());
        s.max_len = None;
        s.allowed = Some(vec!["eu".into(), "us".into()]);
        assert!(s.parse_value(&json!("eu")).is_ok());
        assert!(s.parse_value(&json!("asia")).is_err());
    }

    fn sql_type(params: BTreeMap<String, ParamSpec>) -> ReportTypeSettings {
        ReportTypeSettings {
            name: "t".into(),
            description: String::new(),
            kind: ReportKind::Sql,
            format: ReportFormat::Csv,
            query: Some("select 1".into()),
            params,
            max_range_days: None,
            statement_timeout_s: 10,
            command: Vec::new(),
            content_type: None,
            extension: None,
            timeout_s: 10,
            env: BTreeMap::new(),
        }
    }

    fn key_of(error: ConfigError) -> String {
        match error {
            ConfigError::InvalidKey { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn config_check_never_prints_a_command_environment_value() {
        let mut command = sql_type(BTreeMap::new());
        command.kind = ReportKind::Command;
        command.query = None;
        command.command = vec!["true".into()];
        command.env.insert("API_KEY".into(), "s3cret".into());
        let settings = super::super::Settings {
            report_types: vec![command],
            ..Default::default()
        };
        let shown = settings.to_redacted_toml();
        assert!(
            shown.contains("API_KEY") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn queries_use_reports_url_when_set_and_it_is_redacted_like_url() {
        let mut settings = super::super::Settings::default();
        assert_eq!(settings.database.reports_url(), settings.database.url);
        settings.database.reports_url = Some("postgres://ro:hunter2@replica/reports".into());
        assert_eq!(
            settings.database.reports_url(),
            "postgres://ro:hunter2@replica/reports"
        );
        let shown = settings.to_redacted_toml();
        assert!(
            shown.contains("replica") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(!format!("{settings:?}").contains("hunter2"));
        settings.database.reports_url = Some("mysql://x/y".into());
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                key: "database.reports_url",
                ..
            })
        ));
    }

    #[test]
    fn validation_names_the_key_at_fault() {
        let ok = sql_type(BTreeMap::new());
        assert!(validate(std::slice::from_ref(&ok)).is_ok());
        let mut range = ok.clone();
        range.name = "r".into();
        range.max_range_days = Some(3);
        range
            .params
            .insert("startDate".into(), ParamSpec::Short(ParamType::Integer));
        let error = validate(&[ok.clone(), range]).unwrap_err();
        assert_eq!(key_of(error), "report_types[1].max_range_days");
        let mut bad_default = ok.clone();
        bad_default.params.insert(
            "startDate".into(),
            ParamSpec::Full(FullParamSpec {
                default: Some(json!("yesterday")),
                optional: true,
                ..spec(ParamType::Date)
            }),
        );
        let error = validate(&[bad_default]).unwrap_err();
        assert_eq!(key_of(error), "report_types[0].params.startDate.default");
        let error = validate(&[ok.clone(), ok]).unwrap_err();
        assert_eq!(key_of(error), "report_types[1].name");
    }

    #[test]
    fn a_built_in_declaration_takes_exactly_what_the_original_body_sends() {
        let short = |kind| ParamSpec::Short(kind);
        let body_params = || -> BTreeMap<String, ParamSpec> {
            BUILT_IN_PARAMS
                .iter()
                .map(|(name, kind)| (name.to_string(), short(*kind)))
                .collect()
        };
        let built_in = |params| ReportTypeSettings {
            name: BUILT_IN_TYPE.into(),
            ..sql_type(params)
        };
        assert!(validate(&[built_in(body_params())]).is_ok());

        let mut missing = body_params();
        missing.remove("userId");
        let key = key_of(validate(&[built_in(missing)]).unwrap_err());
        assert_eq!(key, "report_types[0].params.userId");

        let mut retyped = body_params();
        retyped.insert("endDate".into(), short(ParamType::Date));
        let key = key_of(validate(&[built_in(retyped)]).unwrap_err());
        assert_eq!(key, "report_types[0].params.endDate");

        let mut extra = body_params();
        extra.insert("kind".into(), short(ParamType::String));
        let key = key_of(validate(&[built_in(extra.clone())]).unwrap_err());
        assert_eq!(key, "report_types[0].params.kind");

        let optional = ParamSpec::Full(FullParamSpec {
            optional: true,
            ..short(ParamType::String).full()
        });
        extra.insert("kind".into(), optional);
        assert!(
            validate(&[built_in(extra)]).is_ok(),
            "an optional extra is fine"
        );
    }
}
