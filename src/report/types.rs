//! The report types a process knows: the built-in `user-activity` generator plus one
//! generator per `[[report_types]]` entry, picked per job by the payload's `type`.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::command::CommandGenerator;
use super::sql::SqlGenerator;
use super::{GeneratedReport, GeneratorError, JobContext, ReportGenerator};
use crate::config::report_types::ReportKind;
use crate::config::Settings;
use crate::storage::ReportStore;

/// Dispatches each job to its type's generator: a payload without `type` (every
/// submission of the original body) is the built-in type's.
pub(crate) struct TypedGenerators {
    built_in: Arc<dyn ReportGenerator>,
    declared: HashMap<String, Arc<dyn ReportGenerator>>,
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
        let declared = settings
            .report_types
            .iter()
            .map(|declared| {
                let generator: Arc<dyn ReportGenerator> = match declared.kind {
                    ReportKind::Sql => Arc::new(SqlGenerator::new(
                        settings.database.reports_url().to_string(),
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
        Self { built_in, declared }
    }
}

impl ReportGenerator for TypedGenerators {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let name = job.payload.get("type").and_then(|t| t.as_str());
        match name {
            None | Some(crate::config::report_types::BUILT_IN_TYPE) => self.built_in.generate(job),
            Some(name) => match self.declared.get(name) {
                Some(generator) => generator.generate(job),
                None => {
                    // Another process's config declared it: fail loudly, not silently.
                    let error = GeneratorError::Permanent(format!(
                        "report type `{name}` is not declared in this worker's config"
                    ));
                    Box::pin(async move { Err(error) })
                }
            },
        }
    }

    fn discard(&self, report_id: Uuid, attempt: i32) -> BoxFuture<'static, ()> {
        // Every generator writes the same temporary file name and uses the same store,
        // so the built-in generator's discard removes what any of them left.
        self.built_in.discard(report_id, attempt)
    }
}
