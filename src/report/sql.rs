//! The `sql` report type: a declared query with `:name` parameters, rewritten to `$n`
//! placeholders and bound as real parameters, run in a READ ONLY transaction with the
//! type's statement timeout, its rows streamed to the file as CSV, JSON lines or XLSX.
//!
//! tokio-postgres is used directly (diesel-async runs on it): diesel binds a fixed list
//! of typed values, while a declared query has a list known only from config, and its
//! rows must stream instead of being loaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use super::sink::{Described, FileSink, CHUNK_BYTES};
use super::{xlsx, GeneratedReport, GeneratorError, JobContext, ReportGenerator};
use crate::config::report_types::{ParamSpec, ReportFormat};
use crate::config::ReportTypeSettings;
use crate::storage::ReportStore;

/// A query with its `:name` parameters replaced by `$n` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rewritten {
    /// The query PostgreSQL sees: `:name` became `($n::text)::<type>`.
    pub sql: String,
    /// The parameter bound to `$1`, `$2`, … in order.
    pub names: Vec<String>,
}

/// Why a query cannot be rewritten.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RewriteError {
    /// `:name` in the query, but no parameter of that name is declared.
    #[error("the query uses `:{0}`, which is not a declared parameter")]
    Undeclared(String),
    /// A declared parameter the query never uses (most likely a typo on one side).
    #[error("the parameter `{0}` is declared but the query never uses `:{0}`")]
    Unused(String),
    /// A quote or comment that never ends.
    #[error("the query has an unterminated {0}")]
    Unterminated(&'static str),
}

/// Replaces every `:name` outside string literals, quoted identifiers, dollar-quoted
/// strings and comments with a placeholder. `::` (a cast) is left alone, and so is a
/// `:` right after another `:`. Every value is bound as `text` and cast in the query to
/// the declared type, so that PostgreSQL, not reportd, parses it, and a value can never
/// become SQL.
pub(crate) fn rewrite(
    query: &str,
    params: &BTreeMap<String, ParamSpec>,
) -> Result<Rewritten, RewriteError> {
    let bytes = query.as_bytes();
    let mut sql = String::with_capacity(query.len() + 16);
    let mut names: Vec<String> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let skip_to = match bytes[i] {
            b'\'' => Some(quoted_end(bytes, i, b'\'', escapes_backslash(bytes, i))?),
            b'"' => Some(quoted_end(bytes, i, b'"', false)?),
            b'-' if bytes.get(i + 1) == Some(&b'-') => Some(line_end(bytes, i)),
            b'/' if bytes.get(i + 1) == Some(&b'*') => Some(block_comment_end(bytes, i)?),
            b'$' => dollar_quote_end(query, i)?,
            b':' if bytes.get(i + 1) == Some(&b':') => Some(i + 2),
            _ => None,
        };
        if let Some(end) = skip_to {
            i = end;
            continue;
        }
        if bytes[i] == b':' && (i == 0 || bytes[i - 1] != b':') {
            let name_len = query[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let name = &query[i + 1..i + 1 + name_len];
            if name_len > 0 && crate::config::report_types::is_param_name(name) {
                let spec = params
                    .get(name)
                    .ok_or_else(|| RewriteError::Undeclared(name.to_string()))?;
                let n = match names.iter().position(|known| known == name) {
                    Some(p) => p + 1,
                    None => {
                        names.push(name.to_string());
                        names.len()
                    }
                };
                sql.push_str(&query[copied..i]);
                let _ = write!(sql, "(${n}::text)::{}", spec.kind().sql_type());
                i += 1 + name_len;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    sql.push_str(&query[copied..]);
    if let Some(unused) = params.keys().find(|p| !names.contains(p)) {
        return Err(RewriteError::Unused(unused.clone()));
    }
    Ok(Rewritten { sql, names })
}

/// `E'…'` strings treat a backslash as an escape.
fn escapes_backslash(bytes: &[u8], quote: usize) -> bool {
    quote > 0
        && matches!(bytes[quote - 1], b'e' | b'E')
        && (quote < 2 || !(bytes[quote - 2].is_ascii_alphanumeric() || bytes[quote - 2] == b'_'))
}

/// The index after the closing `quote` of a literal opened at `start` (a doubled quote
/// is part of the literal).
fn quoted_end(
    bytes: &[u8],
    start: usize,
    quote: u8,
    backslash: bool,
) -> Result<usize, RewriteError> {
    let mut i = start + 1;
    while i < bytes.len() {
        if backslash && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(RewriteError::Unterminated(if quote == b'\'' {
        "string literal"
    } else {
        "quoted identifier"
    }))
}

fn line_end(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |p| start + p + 1)
}

/// PostgreSQL's block comments nest.
fn block_comment_end(bytes: &[u8], start: usize) -> Result<usize, RewriteError> {
    let mut depth = 0;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(RewriteError::Unterminated("comment"))
}

/// `$tag$ … $tag$` (or `$$ … $$`) opened at `start`: the index after its end. `None`
/// when the `$` opens no dollar quote (`$1`, or a `$` inside an identifier).
fn dollar_quote_end(query: &str, start: usize) -> Result<Option<usize>, RewriteError> {
    let bytes = query.as_bytes();
    if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
        return Ok(None);
    }
    let tag_len = query[start + 1..]
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let tag_end = start + 1 + tag_len;
    let starts_with_digit = tag_len > 0 && bytes[start + 1].is_ascii_digit();
    if starts_with_digit || bytes.get(tag_end) != Some(&b'$') {
        return Ok(None);
    }
    let tag = &query[start..=tag_end];
    match query[tag_end + 1..].find(tag) {
        Some(p) => Ok(Some(tag_end + 1 + p + tag.len())),
        None => Err(RewriteError::Unterminated("dollar-quoted string")),
    }
}

/// The query as the generator runs it: CSV reads every column cast to text (named
/// `c1`, `c2`, … by position, so duplicate or odd column names cannot clash); JSON
/// lines let PostgreSQL build each object (`row_to_json`), keeping the column types.
fn wrapped(rewritten: &str, format: ReportFormat, columns: usize) -> String {
    let inner = rewritten.trim().trim_end_matches(';');
    match format {
        ReportFormat::Jsonl => format!("SELECT row_to_json(q)::text FROM ({inner}\n) AS q"),
        ReportFormat::Csv | ReportFormat::Xlsx => {
            let aliases: Vec<String> = (1..=columns).map(|c| format!("c{c}")).collect();
            let texts: Vec<String> = aliases.iter().map(|c| format!("q.{c}::text")).collect();
            format!(
                "SELECT {} FROM ({inner}\n) AS q({})",
                texts.join(", "),
                aliases.join(", ")
            )
        }
    }
}

/// One CSV field (RFC 4180: quoted when it holds a comma, quote or line break).
fn csv_field(out: &mut Vec<u8>, value: Option<&str>) {
    let Some(value) = value else { return };
    if value.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(value.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(value.as_bytes());
    }
}

/// Why a report type's query cannot be used, found by preparing it (`config check`
/// and `serve` stop with exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("report type `{name}`: {problem}")]
pub struct ReportTypeError {
    /// The type's name.
    pub name: String,
    /// What is wrong (PostgreSQL's message for a bad query).
    pub problem: String,
}

/// Connects to `url` for one job or check; the connection runs on a task of its own
/// and ends when the client is dropped.
async fn connect(url: &str) -> Result<Client, crate::db::tls::PgConnectError> {
    crate::db::tls::client(url).await
}

/// On a fresh machine the database does not exist until `serve` or `migrate` creates it
/// (`database.create_if_missing`): say so rather than leave the operator guessing. The
/// connect error arrives as text (its cause chain), so PostgreSQL's message is matched.
fn missing_database_hint(error: &crate::db::tls::PgConnectError) -> &'static str {
    let text = error.to_string();
    if text.contains("database \"") && text.contains("does not exist") {
        "; `reportd migrate` (or `serve`) creates it when database.create_if_missing is on"
    } else {
        ""
    }
}

/// PostgreSQL's message, with its detail and hint and where in the query it points.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                let _ = write!(text, " ({detail})");
            }
            if let Some(hint) = db.hint() {
                let _ = write!(text, "; hint: {hint}");
            }
            text
        }
        None => error.to_string(),
    }
}

/// Prepares every `sql` type's query (and its wrapped form) in a READ ONLY transaction,
/// so that syntax errors, unknown columns and parameter type mismatches stop the start
/// instead of failing jobs later.
pub async fn check_queries(
    url: &str,
    types: &[ReportTypeSettings],
) -> Result<usize, ReportTypeError> {
    let sql_types: Vec<&ReportTypeSettings> = types.iter().filter(|t| t.query.is_some()).collect();
    if sql_types.is_empty() {
        return Ok(0);
    }
    let mut client = connect(url).await.map_err(|e| ReportTypeError {
        name: sql_types[0].name.clone(),
        problem: format!(
            "cannot connect to the database to check the query: {}{}",
            e,
            missing_database_hint(&e)
        ),
    })?;
    for declared in &sql_types {
        let problem = |problem: String| ReportTypeError {
            name: declared.name.clone(),
            problem,
        };
        let query = declared.query.as_deref().unwrap_or_default();
        let rewritten = rewrite(query, &declared.params).map_err(|e| problem(e.to_string()))?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| problem(describe(&e)))?;
        let statement = tx
            .prepare(&rewritten.sql)
            .await
            .map_err(|e| problem(format!("the query does not prepare: {}", describe(&e))))?;
        let outer = wrapped(&rewritten.sql, declared.format, statement.columns().len());
        tx.prepare(&outer).await.map_err(|e| {
            problem(format!(
                "the query cannot be read as a table: {}",
                describe(&e)
            ))
        })?;
        tx.rollback().await.map_err(|e| problem(describe(&e)))?;
    }
    Ok(sql_types.len())
}

/// Connections of the report queries kept between jobs: opening one per job cost a TCP
/// connection and a backend start on every report, which for small reports is most
/// of the work. A connection goes back only after its transaction ended cleanly; one
/// idle longer than [`IDLE_FOR`] is closed rather than reused, since the server or a
/// proxy between may have dropped it without the client knowing yet.
pub(crate) struct ReportConnections {
    url: String,
    idle: Mutex<Vec<(Client, Instant)>>,
    max_idle: usize,
}

/// How long a report connection may sit idle and still be reused.
const IDLE_FOR: Duration = Duration::from_secs(60);

impl ReportConnections {
    /// Connections to `url` (`database.reports_url`), at most `max_idle` kept.
    pub(crate) fn new(url: String, max_idle: usize) -> Self {
        Self {
            url,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An idle connection that is still open, else a new one.
    async fn take(&self) -> Result<Client, crate::db::tls::PgConnectError> {
        let reusable = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|(client, since)| !client.is_closed() && since.elapsed() < IDLE_FOR);
            idle.pop()
        };
        match reusable {
            Some((client, _)) => Ok(client),
            None => connect(&self.url).await,
        }
    }

    /// Keeps `client` for the next job (its transaction has ended).
    fn give_back(&self, client: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !client.is_closed() && idle.len() < self.max_idle {
            idle.push((client, Instant::now()));
        }
    }
}

/// Generates reports of one `sql` type.
pub(crate) struct SqlGenerator {
    /// Shared by every `sql` type of the process.
    connections: Arc<ReportConnections>,
    declared: Arc<ReportTypeSettings>,
    store: Arc<ReportStore>,
    public_url: String,
    gzip: bool,
}

impl SqlGenerator {
    pub(crate) fn new(
        connections: Arc<ReportConnections>,
        declared: ReportTypeSettings,
        store: Arc<ReportStore>,
        public_url: &str,
        gzip: bool,
    ) -> Self {
        Self {
            connections,
            declared: Arc::new(declared),
            store,
            public_url: public_url.trim_end_matches('/').to_string(),
            gzip,
        }
    }
}

/// A query failure: a lost connection is the host's trouble; a query PostgreSQL refuses
/// (syntax, types, a value it cannot cast) fails the same way again; anything else
/// (a statement timeout, a serialization failure) may pass next time.
fn query_failure(context: &str, error: &tokio_postgres::Error) -> GeneratorError {
    let text = format!("{context}: {}", describe(error));
    match error.as_db_error().map(|db| db.code().code()) {
        None => GeneratorError::Environment(text),
        Some(code) if code.starts_with("42") || code.starts_with("22") => {
            GeneratorError::Permanent(text)
        }
        Some(_) => GeneratorError::Retryable(text),
    }
}

/// The stored parameter values as text, in placeholder order (`None` binds NULL).
pub(crate) fn bound_values(payload: &Value, names: &[String]) -> Vec<Option<String>> {
    let params = payload.get("params");
    names
        .iter()
        .map(|name| match params.and_then(|p| p.get(name)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        })
        .collect()
}

impl ReportGenerator for SqlGenerator {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let connections = self.connections.clone();
        let declared = self.declared.clone();
        let store = self.store.clone();
        let gzip = self.gzip;
        let link = format!("{}/reports/{}/file", self.public_url, job.report_id);
        Box::pin(async move {
            let query = declared.query.as_deref().unwrap_or_default();
            let rewritten = rewrite(query, &declared.params)
                .map_err(|e| GeneratorError::Permanent(e.to_string()))?;
            let values = bound_values(&job.payload, &rewritten.names);
            job.progress.report(5, "connecting to the database");
            let mut client = connections
                .take()
                .await
                .map_err(|e| GeneratorError::Environment(format!("report query: {e}")))?;
            let (tx, inner, statement) = begin(&mut client, &declared, &rewritten).await?;
            let estimated_rows = estimate_rows(&tx, &rewritten.sql, &values).await;
            let run = Run {
                tx: &tx,
                statement: &statement,
                values: &values,
                estimated_rows,
                store: &store,
                job: &job,
            };
            let file = match declared.format {
                ReportFormat::Xlsx => {
                    let columns = xlsx_columns(&inner);
                    let sink = FileSink::open_with(&store, job.report_id, job.attempt, {
                        move |dir, temp, rows| xlsx::write_rows(dir, temp, rows, &columns)
                    });
                    run.write_file(sink, XlsxEncoder::default(), ReportFormat::Xlsx, false)
                        .await?
                }
                format => {
                    let sink = FileSink::open(&store, job.report_id, job.attempt, gzip);
                    let encoder = ByteEncoder::new(format, &inner);
                    run.write_file(sink, encoder, format, gzip).await?
                }
            };
            tx.rollback()
                .await
                .map_err(|e| query_failure("report query", &e))?;
            connections.give_back(client);
            Ok(GeneratedReport {
                report_url: Some(link),
                file: Some(file),
            })
        })
    }
}

/// The planner's estimate of the rows `sql` returns with `values` bound: a plan, not a
/// run, so it costs one round trip. Progress without it only counts rows; an EXPLAIN
/// that fails (it should not: the query was just prepared) leaves it at that.
async fn estimate_rows(tx: &Transaction<'_>, sql: &str, values: &[Option<String>]) -> Option<i64> {
    let params: Vec<&(dyn ToSql + Sync)> =
        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let lines = tx.query(&format!("EXPLAIN {sql}"), &params).await.ok()?;
    let top: String = lines.first()?.try_get(0).ok()?;
    plan_rows(&top)
}

/// `rows=N` of an EXPLAIN's first line, the top node: `Sort  (cost=1.2..3.4 rows=57 width=24)`.
fn plan_rows(top: &str) -> Option<i64> {
    let after = &top[top.find("rows=")? + "rows=".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Progress while rows stream: 10 % when reading starts, 95 % when storing starts, the
/// rows written against the planner's estimate between. An estimate is only that: once
/// the rows pass it the percent stays just under storing and the stage says so.
fn rows_progress(rows: i64, estimated: Option<i64>) -> (u8, String) {
    match estimated.filter(|e| *e > 0) {
        Some(estimated) => {
            let share = (rows.min(estimated) * 84) / estimated;
            let percent = u8::try_from(10 + share).unwrap_or(94).min(94);
            (percent, format!("{rows} of about {estimated} rows written"))
        }
        None => (50, format!("{rows} rows written")),
    }
}

/// Rows written between two progress readings.
const PROGRESS_EVERY_ROWS: i64 = 10_000;

/// Opens the READ ONLY transaction with the type's statement timeout and prepares the
/// query (for its column names) and the form that is run.
async fn begin<'c>(
    client: &'c mut Client,
    declared: &ReportTypeSettings,
    rewritten: &Rewritten,
) -> Result<(Transaction<'c>, Statement, Statement), GeneratorError> {
    let failed = |e: tokio_postgres::Error| query_failure("report query", &e);
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(failed)?;
    // SET LOCAL: the settings end with the transaction. UTC makes timestamps in the file
    // the same whatever the server's default.
    let settings = format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL TimeZone = 'UTC'",
        u64::from(declared.statement_timeout_s) * 1000
    );
    tx.batch_execute(&settings).await.map_err(failed)?;
    let inner = tx.prepare(&rewritten.sql).await.map_err(failed)?;
    let outer = wrapped(&rewritten.sql, declared.format, inner.columns().len());
    let statement = tx.prepare(&outer).await.map_err(failed)?;
    Ok((tx, inner, statement))
}

/// Turns result rows into what a format's writer takes, a batch at a time.
trait RowEncoder {
    /// What the writer receives.
    type Batch: Send + 'static;
    /// Adds one row; a full batch when one is ready to go.
    fn push(&mut self, row: &tokio_postgres::Row) -> Option<Self::Batch>;
    /// The rest.
    fn finish(self) -> Self::Batch;
}

/// CSV and JSON lines: bytes, in chunks of about [`CHUNK_BYTES`].
struct ByteEncoder {
    format: ReportFormat,
    chunk: Vec<u8>,
}

impl ByteEncoder {
    /// CSV starts with its header line.
    fn new(format: ReportFormat, inner: &Statement) -> Self {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        if format == ReportFormat::Csv {
            let header: Vec<Option<&str>> =
                inner.columns().iter().map(|c| Some(c.name())).collect();
            csv_line(&mut chunk, &header);
        }
        Self { format, chunk }
    }
}

impl RowEncoder for ByteEncoder {
    type Batch = Vec<u8>;

    fn push(&mut self, row: &tokio_postgres::Row) -> Option<Vec<u8>> {
        if self.format == ReportFormat::Jsonl {
            self.chunk
                .extend_from_slice(row.get::<_, &str>(0).as_bytes());
            self.chunk.push(b'\n');
        } else {
            let fields: Vec<Option<&str>> = (0..row.len()).map(|c| row.get(c)).collect();
            csv_line(&mut self.chunk, &fields);
        }
        (self.chunk.len() >= CHUNK_BYTES)
            .then(|| std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES)))
    }

    fn finish(self) -> Vec<u8> {
        self.chunk
    }
}

/// Rows handed to the XLSX writer at once.
const XLSX_BATCH_ROWS: usize = 1_000;

/// XLSX: rows of text fields, in batches of [`XLSX_BATCH_ROWS`].
#[derive(Default)]
struct XlsxEncoder {
    rows: xlsx::Rows,
}

impl RowEncoder for XlsxEncoder {
    type Batch = xlsx::Rows;

    fn push(&mut self, row: &tokio_postgres::Row) -> Option<xlsx::Rows> {
        let fields = (0..row.len())
            .map(|c| row.get::<_, Option<&str>>(c).map(str::to_string))
            .collect();
        self.rows.push(fields);
        (self.rows.len() >= XLSX_BATCH_ROWS).then(|| std::mem::take(&mut self.rows))
    }

    fn finish(self) -> xlsx::Rows {
        self.rows
    }
}

/// The sheet's header and which columns hold numbers, from the query's column types.
fn xlsx_columns(inner: &Statement) -> xlsx::Columns {
    use tokio_postgres::types::Type;
    let numeric = [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::OID,
    ];
    xlsx::Columns {
        names: inner
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        numeric: inner
            .columns()
            .iter()
            .map(|c| numeric.contains(c.type_()))
            .collect(),
    }
}

/// One job's query, running in its READ ONLY transaction.
struct Run<'a> {
    tx: &'a Transaction<'a>,
    statement: &'a Statement,
    values: &'a [Option<String>],
    /// The planner's row estimate, for progress (`None` when it gave none).
    estimated_rows: Option<i64>,
    store: &'a ReportStore,
    job: &'a JobContext,
}

impl Run<'_> {
    /// Streams the rows through `encoder` into `sink`, then stores the file. The rows
    /// arrive as the socket delivers them (tokio-postgres stops reading while the stream
    /// is not polled), so memory holds one batch, never the result.
    async fn write_file<E: RowEncoder>(
        &self,
        mut sink: FileSink<E::Batch>,
        mut encoder: E,
        format: ReportFormat,
        gzip: bool,
    ) -> Result<crate::db::models::ReportFile, GeneratorError> {
        let params = self.values.iter().map(|v| v as &(dyn ToSql + Sync));
        let stream = self
            .tx
            .query_raw(self.statement, params)
            .await
            .map_err(|e| query_failure("report query", &e))?;
        futures_util::pin_mut!(stream);
        self.job.progress.report(10, "reading rows");
        let mut rows: i64 = 0;
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| query_failure("reading the report's rows", &e))?;
            if let Some(batch) = encoder.push(&row) {
                sink.write(batch).await?;
            }
            rows += 1;
            if rows % PROGRESS_EVERY_ROWS == 0 {
                let (percent, stage) = rows_progress(rows, self.estimated_rows);
                self.job.progress.report(percent, &stage);
            }
        }
        sink.write(encoder.finish()).await?;
        self.job.progress.report(95, "storing the file");
        let described = Described {
            content_type: format.content_type(),
            extension: format.extension(),
            gzip,
            rows,
        };
        let (id, attempt) = (self.job.report_id, self.job.attempt);
        sink.store(self.store, id, attempt, described).await
    }
}

fn csv_line(out: &mut Vec<u8>, fields: &[Option<&str>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(out, *field);
    }
    out.extend_from_slice(b"\r\n");
}

/// The rewriting is where a mistake would splice or misread a parameter: unit-tested.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::report_types::ParamType;

    fn params(names: &[(&str, ParamType)]) -> BTreeMap<String, ParamSpec> {
        names
            .iter()
            .map(|(n, t)| (n.to_string(), ParamSpec::Short(*t)))
            .collect()
    }

    #[test]
    fn named_parameters_become_numbered_typed_placeholders() {
        let p = params(&[("userId", ParamType::Integer), ("from", ParamType::Date)]);
        let r = rewrite(
            "select * from t where u = :userId and d >= :from and e = :userId",
            &p,
        )
        .unwrap();
        assert_eq!(
            r.sql,
            "select * from t where u = ($1::text)::bigint and d >= ($2::text)::date and e = ($1::text)::bigint"
        );
        assert_eq!(r.names, vec!["userId", "from"]);
    }

    #[test]
    fn casts_literals_identifiers_comments_and_dollar_quotes_are_left_alone() {
        let p = params(&[("x", ParamType::String)]);
        let query = "select ':no', \"a:b\", E'\\':no', $$ :no $$, $t$ :no $t$, 1::int, \
                     x[1:2] -- :no\n /* :no /* :no */ */ from t where a = :x::text";
        let r = rewrite(query, &p).unwrap();
        assert_eq!(r.names, vec!["x"]);
        assert!(r.sql.ends_with("a = ($1::text)::text::text"), "{}", r.sql);
        assert!(r.sql.contains("':no'") && r.sql.contains("\"a:b\"") && r.sql.contains("1::int"));
        assert!(r.sql.contains("$t$ :no $t$") && r.sql.contains("-- :no\n"));
    }

    #[test]
    fn undeclared_unused_and_unterminated_are_refused() {
        let p = params(&[("x", ParamType::String)]);
        assert_eq!(
            rewrite("select :y, :x", &p),
            Err(RewriteError::Undeclared("y".into()))
        );
        assert_eq!(
            rewrite("select 1", &p),
            Err(RewriteError::Unused("x".into()))
        );
        assert_eq!(
            rewrite("select ':x", &p),
            Err(RewriteError::Unterminated("string literal"))
        );
    }

    #[test]
    fn a_value_is_never_part_of_the_query_text() {
        let p = params(&[("name", ParamType::String)]);
        let r = rewrite("select * from t where name = :name", &p).unwrap();
        let payload = serde_json::json!({"params": {"name": "1; drop table t"}});
        assert!(!r.sql.contains("drop"));
        assert_eq!(
            bound_values(&payload, &r.names),
            vec![Some("1; drop table t".to_string())]
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed_and_null_is_empty() {
        let mut out = Vec::new();
        csv_line(
            &mut out,
            &[Some("a"), None, Some("b,c"), Some("say \"hi\"")],
        );
        assert_eq!(out, b"a,,\"b,c\",\"say \"\"hi\"\"\"\r\n");
    }

    #[test]
    fn the_estimate_is_read_off_the_plans_top_line() {
        assert_eq!(
            plan_rows("Sort  (cost=10.23..10.30 rows=57 width=24)"),
            Some(57)
        );
        assert_eq!(
            plan_rows("Result  (cost=0.00..0.01 rows=1 width=4)"),
            Some(1)
        );
        assert_eq!(plan_rows("Seq Scan on t"), None);
    }

    #[test]
    fn progress_follows_the_estimate_and_never_claims_storing_early() {
        assert_eq!(rows_progress(0, Some(1000)).0, 10);
        assert_eq!(rows_progress(500, Some(1000)).0, 52);
        assert_eq!(rows_progress(1000, Some(1000)).0, 94);
        let (percent, stage) = rows_progress(5000, Some(1000));
        assert_eq!(percent, 94, "past the estimate it waits just under storing");
        assert_eq!(stage, "5000 of about 1000 rows written");
        assert_eq!(
            rows_progress(20_000, None),
            (50, "20000 rows written".into())
        );
        assert_eq!(rows_progress(10, Some(0)).0, 50, "an estimate of 0 is none");
    }
}
