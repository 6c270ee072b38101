//! Job helpers shared by the consumer tests: simulated work, queue depth, row counts, a
//! recording generator, and settings for a child process on a free port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use reportd::config::{Settings, SimulateSettings};
use reportd::report::{GeneratedReport, GeneratorError, JobContext, ReportGenerator};
use uuid::Uuid;

use super::app::{free_port, TestApp};

/// Jobs that write no file and take `duration_ms` (a `[min, max]` range), if given.
pub(crate) fn zero_work(duration_ms: Option<[u64; 2]>) -> SimulateSettings {
    SimulateSettings {
        duration_ms,
        skip_generator: true,
        ..SimulateSettings::default()
    }
}

/// Messages visible, in flight and delayed on a queue.
pub(crate) async fn queue_depth(app: &TestApp, url: &str) -> u64 {
    let attributes = app.queue.depth(url).await.expect("queue attributes");
    [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    .iter()
    .filter_map(|k| attributes.get(*k).and_then(|v| v.parse::<u64>().ok()))
    .sum()
}

/// (id, status, attempts, failures) of every row, oldest first.
pub(crate) async fn job_rows(app: &TestApp) -> Vec<(Uuid, String, i32, i32)> {
    let client = super::pg_connect(&app.settings.database.url).await;
    client
        .query(
            "SELECT id::text, status, attempts, failures FROM report_queue ORDER BY created_at",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            (
                Uuid::parse_str(&id).expect("uuid"),
                r.get(1),
                r.get(2),
                r.get(3),
            )
        })
        .collect()
}

/// Rows with this status.
pub(crate) async fn count_by_status(app: &TestApp, status: &str) -> usize {
    let client = super::pg_connect(&app.settings.database.url).await;
    let row = client
        .query_one(
            "SELECT count(*) FROM report_queue WHERE status = $1",
            &[&status],
        )
        .await
        .expect("count");
    row.get::<_, i64>(0) as usize
}

/// The same settings on a free port, for one more child process.
pub(crate) fn on_free_port(settings: &Settings) -> Settings {
    let mut settings = settings.clone();
    let port = free_port();
    settings.server.bind = format!("127.0.0.1:{port}");
    settings.server.public_url = format!("http://127.0.0.1:{port}");
    settings
}

/// A run of a job: (report id, start, end).
pub(crate) type Run = (Uuid, Instant, Instant);

/// A generator that takes `run_for` per job and records when each job ran (FIFO order).
pub(crate) struct Recorder {
    pub runs: Arc<Mutex<Vec<Run>>>,
    pub run_for: Duration,
}

impl Recorder {
    pub(crate) fn new(run_for: Duration) -> (Arc<Self>, Arc<Mutex<Vec<Run>>>) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::new(Self {
            runs: runs.clone(),
            run_for,
        });
        (recorder, runs)
    }
}

impl ReportGenerator for Recorder {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let runs = self.runs.clone();
        let run_for = self.run_for;
        Box::pin(async move {
            let start = Instant::now();
            tokio::time::sleep(run_for).await;
            if let Ok(mut runs) = runs.lock() {
                runs.push((job.report_id, start, Instant::now()));
            }
            Ok(GeneratedReport::default())
        })
    }
}

/// The recorded runs, by start time.
pub(crate) fn runs_in_order(runs: &Mutex<Vec<Run>>) -> Vec<Run> {
    let mut runs = runs.lock().map(|r| r.clone()).unwrap_or_default();
    runs.sort_by_key(|r| r.1);
    runs
}
