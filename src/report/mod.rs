//! Report generation: the [`ReportGenerator`] extension point, the built-in CSV
//! generator over the demo `user_activity` table, and the `[simulate]` wrapper.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::sql_types::{BigInt, Date, Timestamptz};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use futures_util::future::BoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::SimulateSettings;
use crate::db::models::ReportFile;
use crate::db::{self, DbPool};
use crate::storage::{ObjectInfo, ReportStore, StoreError};

pub(crate) mod command;
pub mod progress;
pub(crate) mod sink;
pub(crate) mod sql;
pub(crate) mod types;
pub(crate) mod xlsx;

pub use progress::{Progress, ProgressReporter};
pub use sql::{check_queries, ReportTypeError};

/// The payload stored with a report: who and which range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReportPayload {
    pub user_id: i64,
    pub start_date: DateTime<Utc>,
    pub end_date: DateTime<Utc>,
}

/// One job handed to a generator.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The report to produce (its row's id; the built-in generator names the file after it).
    pub report_id: Uuid,
    /// 1-based attempt number (claims, not SQS receives).
    pub attempt: i32,
    /// The accepted request as stored: `{"userId", "startDate", "endDate"}` (camelCase) for
    /// the built-in type, `{"type", "params"}` for a declared report type.
    pub payload: serde_json::Value,
    /// Where to say how far the report is; shown by `GET /reports/{id}`.
    pub progress: ProgressReporter,
}

/// A finished report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GeneratedReport {
    /// Where clients fetch it; `None` for zero-work jobs.
    pub report_url: Option<String>,
    /// The file as the report store holds it, recorded on the row with the completion;
    /// `None` when no file was stored.
    pub file: Option<ReportFile>,
}

/// Why a generation failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GeneratorError {
    /// Worth another attempt (a database hiccup, a full disk that may clear).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way every time (bad payload).
    #[error("{0}")]
    Permanent(String),
    /// The host, not the job, is in trouble (too many open files, disk full, the
    /// database or the report store unreachable): not counted as a failure; the worker
    /// hands the job back and its process pauses receiving for a while.
    #[error("{0}")]
    Environment(String),
}

impl GeneratorError {
    pub(crate) fn is_retryable(&self) -> bool {
        !matches!(self, GeneratorError::Permanent(_))
    }

    /// An I/O failure, classified: errors that describe the host's resources are
    /// [`GeneratorError::Environment`], the rest are retryable job failures.
    pub fn from_io(context: &str, error: &std::io::Error) -> Self {
        let text = format!("{context}: {error}");
        if crate::storage::is_host_trouble(error) {
            GeneratorError::Environment(text)
        } else {
            GeneratorError::Retryable(text)
        }
    }
}

/// What users implement to make reportd produce their reports. The future runs on a
/// tokio task; CPU-heavy parts belong in `tokio::task::spawn_blocking`.
pub trait ReportGenerator: Send + Sync + 'static {
    /// Produces the report for one attempt of `job`. Runs as a task of its own: a panic
    /// counts as a failed attempt, and the task is aborted when the shutdown grace ends.
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>>;

    /// Removes what attempt `attempt` of a report, stopped midway (cancelled, timed out,
    /// shut down), left behind. Called once the attempt's task has ended; it must leave
    /// other attempts' output alone (another attempt may have completed the report).
    /// The default does nothing.
    fn discard(&self, report_id: Uuid, attempt: i32) -> BoxFuture<'static, ()> {
        let _ = (report_id, attempt);
        Box::pin(async {})
    }
}

/// The built-in generator: per-day event counts and amounts of one user over the range,
/// from `user_activity`, written to a temporary file (gzip-compressed when `gzip`) and
/// handed to the report store as `<id>.csv` (`<id>.csv.gz`).
pub(crate) struct CsvReportGenerator {
    pool: DbPool,
    store: Arc<ReportStore>,
    public_url: String,
    /// `storage.gzip`: compress the file as it is written.
    gzip: bool,
    /// `report.query_timeout_s`: each activity query's `statement_timeout` (0 = none).
    query_timeout_s: u64,
}

impl CsvReportGenerator {
    pub(crate) fn new(
        pool: DbPool,
        store: Arc<ReportStore>,
        public_url: String,
        gzip: bool,
        query_timeout_s: u64,
    ) -> Self {
        Self {
            pool,
            store,
            public_url: public_url.trim_end_matches('/').to_string(),
            gzip,
            query_timeout_s,
        }
    }
}

/// The media type of the built-in generator's files.
pub(crate) const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// One line of the CSV.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub(crate) struct DailyFigures {
    #[diesel(sql_type = Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = BigInt)]
    pub events: i64,
    #[diesel(sql_type = BigInt)]
    pub amount_cents: i64,
}

/// Writes the CSV (header + one line per day that had activity), lines ended by CRLF
/// as RFC 4180 says and as the declared `sql` types write them: the file is the same
/// whether config declares `user-activity` or not.
fn write_csv(out: &mut dyn Write, rows: &[DailyFigures]) -> std::io::Result<()> {
    out.write_all(b"day,events,amount_cents\r\n")?;
    for row in rows {
        write!(out, "{},{},{}\r\n", row.day, row.events, row.amount_cents)?;
    }
    Ok(())
}

impl ReportGenerator for CsvReportGenerator {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let pool = self.pool.clone();
        let store = self.store.clone();
        let gzip = self.gzip;
        let timeout_s = self.query_timeout_s;
        let url = format!("{}/reports/{}/file", self.public_url, job.report_id);
        let progress = job.progress.clone();
        Box::pin(async move {
            let payload: ReportPayload =
                serde_json::from_value(job.payload.clone()).map_err(|e| {
                    GeneratorError::Permanent(format!("payload is not a report request: {e}"))
                })?;
            progress.report(5, "connecting to the database");
            // No connection at all is the host's trouble, not this job's.
            let mut conn = db::connection(&pool)
                .await
                .map_err(|e| GeneratorError::Environment(e.to_string()))?;
            let rows = read_activity(&mut conn, &payload, timeout_s, &progress).await?;
            drop(conn);
            progress.report(80, "writing the file");
            let file = store_report(&store, job.report_id, job.attempt, gzip, rows).await?;
            Ok(GeneratedReport {
                report_url: Some(url),
                file: Some(file),
            })
        })
    }

    fn discard(&self, report_id: Uuid, attempt: i32) -> BoxFuture<'static, ()> {
        // Only this attempt's temporary file and unfinished upload: the stored file may
        // be another attempt's completed report. A local rename already inside the store
        // cannot be stopped and may still put its file into place; such a file is never
        // served, since only a `completed` row's file is.
        let store = self.store.clone();
        Box::pin(async move {
            let temp = temporary_path(store.scratch_dir(), report_id, attempt);
            store.discard(&temp, report_id, attempt).await;
        })
    }
}

/// Writes the report to this attempt's temporary file, measuring it as it goes, and
/// hands it to the store.
async fn store_report(
    store: &ReportStore,
    id: Uuid,
    attempt: i32,
    gzip: bool,
    rows: Vec<DailyFigures>,
) -> Result<ReportFile, GeneratorError> {
    let dir = store.scratch_dir().to_path_buf();
    let temp = temporary_path(&dir, id, attempt);
    let path = temp.clone();
    // Compression, hashing and the file write are blocking work: keep them off the
    // actors' threads.
    let written = tokio::task::spawn_blocking(move || write_measured(&dir, &path, &rows, gzip))
        .await
        .map_err(|e| GeneratorError::Retryable(format!("writer task failed: {e}")))??;
    let key = store.key_for(id, gzip);
    let info = ObjectInfo {
        report_id: id,
        attempt,
        content_type: CSV_CONTENT_TYPE.into(),
        gzip,
        sha256: written.sha256.clone(),
        rows: written.rows,
    };
    store.put(&temp, &key, &info).await.map_err(store_failure)?;
    Ok(ReportFile {
        key,
        size_bytes: written.size_bytes,
        sha256: written.sha256,
        content_type: info.content_type,
        rows: written.rows,
        gzip,
    })
}

/// A store that could not take the file. When the store gave no answer at all (S3
/// unreachable, or the host out of files or space), it is `Environment`: like the
/// database being away, it fails every job alike, so counting it would use up the
/// jobs' attempts during an outage; the job is handed back uncounted and the process
/// pauses receiving until jobs complete again. An answer that refused the upload (no
/// such bucket, access denied) is the job's `Retryable` failure: retried with backoff
/// and counted, so a lasting misconfiguration ends in `failed` reports a person sees.
fn store_failure(error: StoreError) -> GeneratorError {
    let text = format!("cannot store the report file: {error}");
    if error.is_unreachable() {
        GeneratorError::Environment(text)
    } else {
        GeneratorError::Retryable(text)
    }
}

/// What [`write_measured`] wrote.
struct Written {
    /// Bytes in the file (compressed when gzip).
    size_bytes: i64,
    /// Hex SHA-256 of those bytes.
    sha256: String,
    /// CSV data rows.
    rows: i64,
}

/// Writes the CSV to `temp` in `dir` (gzip-compressed when `gzip`) and measures it; on
/// failure the temporary file is removed.
fn write_measured(
    dir: &Path,
    temp: &Path,
    rows: &[DailyFigures],
    gzip: bool,
) -> Result<Written, GeneratorError> {
    let measured = sink::write_measured_file(dir, temp, gzip, |out| write_csv(out, rows))?;
    Ok(Written {
        size_bytes: measured.size_bytes,
        sha256: measured.sha256,
        rows: i64::try_from(rows.len()).unwrap_or(i64::MAX),
    })
}

/// Where an attempt writes its file before handing it to the store: one name per
/// process and attempt.
fn temporary_path(dir: &Path, id: Uuid, attempt: i32) -> PathBuf {
    dir.join(format!(".{id}.csv.{}.{attempt}.tmp", std::process::id()))
}

/// Days of activity one query of the CSV generator reads: the unit of its progress.
const CHUNK_DAYS: i64 = 30;

/// Reads the payload's range chunk by chunk, reporting progress, in one transaction
/// whose `SET LOCAL statement_timeout` bounds each query by `report.query_timeout_s`.
/// `SET LOCAL` ends with the transaction, so the pooled connection goes back to the API
/// and the other generators without the limit whatever happens. Each query is a
/// statement of its own, so under READ COMMITTED the transaction holds no snapshot
/// between them.
async fn read_activity(
    conn: &mut diesel_async::AsyncPgConnection,
    payload: &ReportPayload,
    timeout_s: u64,
    progress: &ProgressReporter,
) -> Result<Vec<DailyFigures>, GeneratorError> {
    use diesel_async::AsyncConnection;
    let chunks = day_chunks(payload.start_date, payload.end_date, CHUNK_DAYS);
    let user_id = payload.user_id;
    let read = conn.transaction::<_, ActivityError, _>(async move |tx| {
        if timeout_s > 0 {
            // An integer in milliseconds: nothing from a request reaches this string.
            diesel::sql_query(format!(
                "SET LOCAL statement_timeout = {}",
                timeout_s.saturating_mul(1000)
            ))
            .execute(tx)
            .await?;
        }
        let mut rows: Vec<DailyFigures> = Vec::new();
        for (done, &(from, until)) in chunks.iter().enumerate() {
            // 20–80 % while reading, in steps of one chunk.
            let percent = 20 + 60 * done / chunks.len();
            let stage = format!(
                "reading the user's activity ({} of {})",
                done + 1,
                chunks.len()
            );
            progress.report(u8::try_from(percent).unwrap_or(80), &stage);
            rows.extend(daily_figures(tx, user_id, from, until).await?);
        }
        Ok(rows)
    });
    read.await
        .map_err(|ActivityError(e)| classify_query_error(e, timeout_s))
}

/// A failed activity read inside its transaction (diesel's error, classified once the
/// transaction has ended).
struct ActivityError(diesel::result::Error);

impl From<diesel::result::Error> for ActivityError {
    fn from(error: diesel::result::Error) -> Self {
        ActivityError(error)
    }
}

/// The generator error of a failed activity read: the database away is the host's
/// trouble; a query cancelled by `report.query_timeout_s` says so (retryable: the
/// database may be less busy next time); anything else is a retryable failure.
fn classify_query_error(error: diesel::result::Error, timeout_s: u64) -> GeneratorError {
    let error = crate::db::DbError::Query(error);
    let text = error.to_string();
    if error.is_database_away() {
        return GeneratorError::Environment(format!("activity query failed: {text}"));
    }
    if text.contains("canceling statement due to statement timeout") {
        return GeneratorError::Retryable(format!(
            "the activity query ran longer than report.query_timeout_s ({timeout_s} s) and was cancelled"
        ));
    }
    GeneratorError::Retryable(format!("activity query failed: {text}"))
}

/// Per-day figures of one user with `from <= occurred_at < until`.
async fn daily_figures(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: i64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> diesel::QueryResult<Vec<DailyFigures>> {
    diesel::sql_query(
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, count(*)::bigint AS events, \
         COALESCE(sum(amount_cents), 0)::bigint AS amount_cents \
         FROM user_activity WHERE user_id = $1 AND occurred_at >= $2 AND occurred_at < $3 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(until)
    .load(conn)
    .await
}

/// `[start, end]` as consecutive half-open ranges of at most `days` UTC days, cut at
/// UTC midnights so that every day (one CSV line) falls in exactly one range.
fn day_chunks(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    days: i64,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let until = end + chrono::Duration::microseconds(1);
    let first_midnight = start
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let mut chunks = Vec::new();
    let mut from = start;
    let mut step = 1;
    while from < until {
        let cut = (first_midnight + chrono::Duration::days(days * step)).min(until);
        chunks.push((from, cut));
        from = cut;
        step += 1;
    }
    chunks
}

/// Wraps a generator with the `[simulate]` knobs (demos and load tests).
pub(crate) struct SimulatedGenerator {
    inner: Arc<dyn ReportGenerator>,
    settings: SimulateSettings,
}

impl SimulatedGenerator {
    pub(crate) fn new(inner: Arc<dyn ReportGenerator>, settings: SimulateSettings) -> Self {
        Self { inner, settings }
    }
}

impl ReportGenerator for SimulatedGenerator {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let settings = self.settings.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some([min, max]) = settings.duration_ms {
                let ms = if max > min {
                    rand::rng().random_range(min..=max)
                } else {
                    min
                };
                simulate_work(Duration::from_millis(ms), &job.progress).await;
            }
            let attempt = u32::try_from(job.attempt).unwrap_or(0);
            if attempt <= settings.panic_first_attempts {
                panic!("simulated panic on attempt {attempt}");
            }
            if attempt <= settings.fail_first_attempts {
                return Err(GeneratorError::Retryable(format!(
                    "simulated failure on attempt {attempt}"
                )));
            }
            if settings.failure_rate > 0.0 && rand::rng().random_bool(settings.failure_rate) {
                return Err(GeneratorError::Retryable("simulated random failure".into()));
            }
            if settings.skip_generator {
                return Ok(GeneratedReport::default());
            }
            inner.generate(job).await
        })
    }

    fn discard(&self, report_id: Uuid, attempt: i32) -> BoxFuture<'static, ()> {
        self.inner.discard(report_id, attempt)
    }
}

/// Sleeps for `duration` in steps, reporting how much of it has passed, so a simulated
/// job shows a moving progress bar like a real one.
async fn simulate_work(duration: Duration, progress: &ProgressReporter) {
    const STEPS: u32 = 20;
    let step = duration / STEPS;
    for done in 0..STEPS {
        progress.report_counts(u64::from(done), u64::from(STEPS), "simulating work");
        tokio::time::sleep(step).await;
    }
}

/// Fills `user_activity` with three events per user per day over the last `days` days
/// (the demo data of `reportd seed-demo`); returns the rows inserted.
pub(crate) async fn seed_demo(
    url: &str,
    users: i64,
    days: i64,
) -> Result<usize, crate::db::DbError> {
    let mut conn = crate::db::establish(url).await?;
    let inserted = diesel::sql_query(
        "INSERT INTO user_activity (user_id, occurred_at, kind, amount_cents) \
         SELECT u, d + random() * interval '1 day', \
                (ARRAY['view', 'click', 'purchase'])[1 + floor(random() * 3)::int], \
                floor(random() * 10000)::bigint \
         FROM generate_series(1, $1) AS u, \
              generate_series(current_date - $2::int, current_date - 1, interval '1 day') AS d, \
              generate_series(1, 3) AS k",
    )
    .bind::<BigInt, _>(users)
    .bind::<diesel::sql_types::Integer, _>(i32::try_from(days).unwrap_or(i32::MAX))
    .execute(&mut conn)
    .await?;
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_chunks_cover_the_range_once_and_cut_only_at_midnights() {
        use chrono::TimeZone;
        let start = Utc.with_ymd_and_hms(2024, 1, 10, 15, 30, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2024, 4, 8, 23, 59, 59).unwrap();
        let chunks = day_chunks(start, end, 30);
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(chunks[0].0, start);
        assert_eq!(chunks[2].1, end + chrono::Duration::microseconds(1));
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "contiguous");
            assert_eq!(pair[0].1.time(), chrono::NaiveTime::MIN, "cut at midnight");
        }
        assert_eq!(
            chunks[0].1,
            Utc.with_ymd_and_hms(2024, 2, 9, 0, 0, 0).unwrap()
        );
        let instant = day_chunks(start, start, 30);
        assert_eq!(
            instant,
            vec![(start, start + chrono::Duration::microseconds(1))]
        );
    }

    #[test]
    fn too_many_open_files_and_a_full_disk_are_host_trouble() {
        for code in [24, 23, 28, 122, 12] {
            let error = std::io::Error::from_raw_os_error(code);
            assert!(
                matches!(
                    GeneratorError::from_io("write", &error),
                    GeneratorError::Environment(_)
                ),
                "os error {code}"
            );
        }
    }

    #[test]
    fn other_io_errors_are_retryable_job_failures() {
        let error = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let classified = GeneratorError::from_io("write", &error);
        assert!(matches!(classified, GeneratorError::Retryable(_)));
        assert!(classified.is_retryable());
    }
}
