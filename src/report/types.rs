//! The report types a process knows: one generator per `[[report_types]]` entry, picked
//! per job by the payload's `type`. A payload without `type` (the original body) is a
//! `user-activity` report: its declaration makes it when config has one (config.toml
//! does), else the built-in Rust generator, which makes the same file.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::command::CommandGenerator;
use super::sql::{ReportConnections, SqlGenerator};
use super::{GeneratedReport, GeneratorError, JobContext, ReportGenerator};
use crate::config::report_types::{ReportKind, BUILT_IN_PARAMS, BUILT_IN_TYPE};
use crate::config::{ReportTypeSettings, Settings};
use crate::storage::ReportStore;

/// Dispatches each job to its type's generator: a payload without `type` (every
/// submission of the original body) is the built-in type's.
pub(crate) struct TypedGenerators {
    built_in: Arc<dyn ReportGenerator>,
    declared: HashMap<String, Arc<dyn ReportGenerator>>,
    /// The built-in type's declaration, when config has one (it then makes the files).
    built_in_declared: Option<ReportTypeSettings>,
}

impl TypedGenerators {
    /// One generator per declared type, besides `built_in`.
    pub(crate) fn new(
        settings: &Settings,
        store: &Arc<ReportStore>,
        built_in: Arc<dyn ReportGenerator>,
    ) -> Self {
        let public_url = &settings.server.public_url;
        let gzip = settings.storage.gzip;
        let connections = Arc::new(ReportConnections::new(
            settings.database.reports_url().to_string(),
            settings.workers.count,
        ));
        let declared = settings
            .report_types
            .iter()
            .map(|declared| {
                let generator: Arc<dyn ReportGenerator> = match declared.kind {
                    ReportKind::Sql => Arc::new(SqlGenerator::new(
                        connections.clone(),
                        declared.clone(),
                        store.clone(),
                        public_url,
                        gzip,
                    )),
                    ReportKind::Command => Arc::new(CommandGenerator::new(
                        declared.clone(),
                        store.clone(),
                        public_url,
                        gzip,
                    )),
                };
                (declared.name.clone(), generator)
            })
            .collect();
        let built_in_declared = settings.report_type(BUILT_IN_TYPE).cloned();
        Self {
            built_in,
            declared,
            built_in_declared,
        }
    }
}

impl TypedGenerators {
    /// A built-in report's stored payload is the original body `{userId, startDate,
    /// endDate}`; the declared type reads `{type, params}`, its defaults filled in.
    fn built_in_params(&self, payload: &Value) -> Result<Value, GeneratorError> {
        let declared = self.built_in_declared.as_ref().ok_or_else(|| {
            GeneratorError::Permanent(format!("report type `{BUILT_IN_TYPE}` is not declared"))
        })?;
        let fields = match payload {
            Value::Object(fields) => fields.clone(),
            _ => Map::new(),
        };
        let fields: Map<String, Value> = fields
            .into_iter()
            .filter(|(name, _)| BUILT_IN_PARAMS.iter().any(|(known, _)| known == name))
            .collect();
        let params = declared.parse_params(&fields).map_err(|e| {
            GeneratorError::Permanent(format!(
                "payload is not a report request: params.{}: {}",
                e.name, e.message
            ))
        })?;
        Ok(json!({"type": BUILT_IN_TYPE, "params": params}))
    }
}

impl ReportGenerator for TypedGenerators {
    fn generate(
        &self,
        mut job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let name = job.payload.get("type").and_then(|t| t.as_str());
        let name = name.unwrap_or(BUILT_IN_TYPE).to_string();
        let Some(generator) = self.declared.get(&name) else {
            if name == BUILT_IN_TYPE {
                return self.built_in.generate(job);
            }
            // Another process's config declared it: fail loudly, not silently.
            let error = GeneratorError::Permanent(format!(
                "report type `{name}` is not declared in this worker's config"
            ));
            return Box::pin(async move { Err(error) });
        };
        if name == BUILT_IN_TYPE {
            match self.built_in_params(&job.payload) {
                Ok(payload) => job.payload = payload,
                Err(error) => return Box::pin(async move { Err(error) }),
            }
        }
        generator.generate(job)
    }

    fn discard(&self, report_id: Uuid, attempt: i32) -> BoxFuture<'static, ()> {
        // Every generator writes the same temporary file name and uses the same store,
        // so the built-in generator's discard removes what any of them left.
        self.built_in.discard(report_id, attempt)
    }
}
