//! `reportd-bench`: the load drivers and measurements behind `bench/run` (issue 7).
//!
//! Every subcommand reads the same configuration as `reportd` itself (`--config` plus the
//! `REPORTD_<SECTION>__<KEY>` environment), so `bench/run` describes a scenario once and
//! both processes agree on the database and the queue. `--database-url` and `--queue`
//! override the two for use by hand. Every subcommand prints one JSON object on stdout.
//!
//! - `ceiling`: tight aws-sdk-sqs loops (SendMessageBatch of 10, then ReceiveMessage(10) +
//!   DeleteMessageBatch) at a given concurrency: the physical limit of the SQS endpoint.
//! - `seed`: N `in-queue` rows in `report_queue` plus their `{"id":"<uuid>"}` messages.
//! - `submit`: POSTs N report requests to a running reportd (own tiny HTTP/1.1 client,
//!   keep-alive, C connections, optionally paced at R requests/s).
//! - `wait`: until N jobs are `completed` (or a timeout), then `stats`.
//! - `stats`: timings of completed jobs from SQL (percentiles, span, peak concurrency).
//! - `count`: rows by status. `check`: are PostgreSQL and SQS there?
//! - `drop-database`, `drop-queues`: clean up after a scenario. `free-port`: a loopback port.
//!
//! All loops are bounded in count and in time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use reportd::config::Settings;
use reportd::queue::provision::ensure_queues;
use reportd::queue::{build_client, OutgoingMessage, SqsQueue};

#[derive(Debug, Parser)]
#[command(
    name = "reportd-bench",
    about = "Load drivers and measurements for bench/run"
)]
struct Cli {
    /// reportd configuration file (REPORTD_* environment overrides apply, as for reportd).
    #[arg(
        long,
        global = true,
        default_value = "./config.toml",
        env = "REPORTD_CONFIG"
    )]
    config: PathBuf,
    /// Overrides database.url.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Overrides sqs.queue_name (the DLQ is <name>-dlq).
    #[arg(long, global = true)]
    queue: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// SendMessageBatch(10) loop, then ReceiveMessage(10)+DeleteMessageBatch loop.
    Ceiling {
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Inserts N in-queue rows and sends their messages.
    Seed {
        #[arg(long)]
        jobs: usize,
        /// Concurrent SendMessageBatch calls.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Users are 1..=users (payload userId and user_id).
        #[arg(long, default_value_t = 1000)]
        users: i64,
        /// Report range in days, ending now.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Pace the sends to this many messages/s (0 = as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// POSTs N report requests to http://<url>/reports.
    Submit {
        /// Base URL of reportd, e.g. http://127.0.0.1:8080 (loopback only).
        #[arg(long)]
        url: String,
        #[arg(long)]
        jobs: usize,
        /// Connections (each runs one request at a time, keep-alive).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Pace to this many requests/s in total (0 = as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 1000)]
        users: i64,
        /// User ids are first_user..first_user+users (a scenario can keep one user apart
        /// from the others, e.g. the noisy user).
        #[arg(long, default_value_t = 1)]
        first_user: i64,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Waits until N jobs are completed, then prints their timings.
    Wait {
        #[arg(long)]
        jobs: i64,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// Only rows created at or after this Unix time (seconds, fractional).
        #[arg(long)]
        since: Option<f64>,
        /// Poll interval.
        #[arg(long, default_value_t = 200)]
        poll_ms: u64,
        /// Also wait for this status to reach N (e.g. in-progress); prints when it did.
        #[arg(long)]
        first_reach: Option<String>,
        /// Give up early when the completed count has not moved for this long (a stuck
        /// process); 0 = never.
        #[arg(long, default_value_t = 60)]
        stall_s: u64,
    },
    /// Timings of completed jobs (no waiting).
    Stats {
        #[arg(long)]
        since: Option<f64>,
    },
    /// Rows by status, and how many reached SQS (enqueued_at set).
    Count,
    /// Checks that PostgreSQL (maintenance database of database.url's server) and the
    /// SQS endpoint answer; exits 1 naming the missing one.
    Check,
    /// DROP DATABASE ... WITH (FORCE) for database.url.
    DropDatabase,
    /// Deletes the main queue and its DLQ.
    DropQueues,
    /// Opens one `GET /reports/{id}/events` stream for each of the newest N reports and
    /// reads them until their terminal event; reports commit → event latencies.
    Subscribe {
        /// The API's base URL.
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Prints a free loopback TCP port.
    FreePort,
    /// Prints the current Unix time in seconds (fractional), the clock `--since` uses.
    Now,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reportd-bench: cannot start tokio: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(value) => {
            println!("{value}");
            if value.get("ok").and_then(Value::as_bool) == Some(false) {
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("reportd-bench: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings =
        Settings::load(&cli.config).with_context(|| format!("loading {}", cli.config.display()))?;
    if let Some(url) = &cli.database_url {
        settings.database.url = url.clone();
    }
    if let Some(queue) = &cli.queue {
        settings.sqs.queue_name = queue.clone();
    }
    Ok(settings)
}

async fn run(cli: Cli) -> anyhow::Result<Value> {
    match &cli.command {
        Cmd::FreePort => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            Ok(json!(listener.local_addr()?.port()))
        }
        Cmd::Now => Ok(json!(unix_now())),
        Cmd::Subscribe {
            url,
            subscribers,
            timeout_s,
        } => {
            let s = settings(&cli)?;
            subscribe(&s, url, *subscribers, Duration::from_secs(*timeout_s)).await
        }
        Cmd::Ceiling {
            messages,
            concurrency,
            timeout_s,
        } => {
            let s = settings(&cli)?;
            ceiling(&s, *messages, *concurrency, Duration::from_secs(*timeout_s)).await
        }
        Cmd::Seed {
            jobs,
            concurrency,
            users,
            days,
            rate,
            timeout_s,
        } => {
            let s = settings(&cli)?;
            seed(
                &s,
                *jobs,
                *concurrency,
                *users,
                *days,
                *rate,
                Duration::from_secs(*timeout_s),
            )
            .await
        }
        Cmd::Submit {
            url,
            jobs,
            concurrency,
            rate,
            users,
            first_user,
            timeout_s,
        } => {
            submit(
                url,
                *jobs,
                *concurrency,
                *rate,
                (*first_user, *users),
                Duration::from_secs(*timeout_s),
            )
            .await
        }
        Cmd::Wait {
            jobs,
            timeout_s,
            since,
            poll_ms,
            first_reach,
            stall_s,
        } => {
            let s = settings(&cli)?;
            wait(
                &s.database.url,
                *jobs,
                Duration::from_secs(*timeout_s),
                *since,
                Duration::from_millis((*poll_ms).max(20)),
                first_reach.as_deref(),
                *stall_s,
            )
            .await
        }
        Cmd::Stats { since } => {
            let s = settings(&cli)?;
            let mut conn = connect(&s.database.url).await?;
            stats(&mut conn, *since).await
        }
        Cmd::Count => {
            let s = settings(&cli)?;
            let mut conn = connect(&s.database.url).await?;
            counts(&mut conn, None).await
        }
        Cmd::Check => {
            let s = settings(&cli)?;
            check(&s).await
        }
        Cmd::DropDatabase => {
            let s = settings(&cli)?;
            drop_database(&s.database.url).await
        }
        Cmd::DropQueues => {
            let s = settings(&cli)?;
            let client = build_client(&s.sqs).await;
            let mut dropped = Vec::new();
            for name in [s.sqs.queue_name.clone(), s.sqs.dlq_name()] {
                if let Ok(out) = client.get_queue_url().queue_name(&name).send().await {
                    if let Some(url) = out.queue_url() {
                        if client.delete_queue().queue_url(url).send().await.is_ok() {
                            dropped.push(name);
                        }
                    }
                }
            }
            Ok(json!({ "dropped": dropped }))
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(url).await.with_context(|| {
        format!(
            "PostgreSQL is not reachable at {} (run scripts/dev-services)",
            reportd::config::redact_url(url)
        )
    })
}

// ---------------------------------------------------------------------------------------
// Services

async fn check(s: &Settings) -> anyhow::Result<Value> {
    let mut maintenance = url::Url::parse(&s.database.url).context("database.url")?;
    maintenance.set_path("/postgres");
    let pg = match tokio::time::timeout(
        Duration::from_secs(5),
        AsyncPgConnection::establish(maintenance.as_str()),
    )
    .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 5 s".to_string()),
    };
    let endpoint = s.sqs.endpoint_url.clone().unwrap_or_default();
    let client = build_client(&s.sqs).await;
    let sqs = match tokio::time::timeout(
        Duration::from_secs(5),
        client.list_queues().max_results(1).send(),
    )
    .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e))),
        Err(_) => Some("no answer within 5 s".to_string()),
    };
    let mut problems = Vec::new();
    if let Some(e) = &pg {
        problems.push(format!(
            "PostgreSQL is not reachable at {} ({e}): start it with scripts/dev-services",
            reportd::config::redact_url(maintenance.as_str())
        ));
    }
    if let Some(e) = &sqs {
        problems.push(format!(
            "LocalStack SQS is not reachable at {endpoint} ({e}): start it with scripts/dev-services"
        ));
    }
    for p in &problems {
        eprintln!("reportd-bench: {p}");
    }
    Ok(json!({ "ok": problems.is_empty(), "problems": problems }))
}

async fn drop_database(url: &str) -> anyhow::Result<Value> {
    use diesel_async::RunQueryDsl;
    let parsed = url::Url::parse(url).context("database.url")?;
    let name = parsed.path().trim_start_matches('/').to_string();
    if name.is_empty() || name == "postgres" {
        bail!("refusing to drop database {name:?}");
    }
    let mut maintenance = parsed.clone();
    maintenance.set_path("/postgres");
    let mut conn = connect(maintenance.as_str()).await?;
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    ))
    .execute(&mut conn)
    .await?;
    Ok(json!({ "dropped": name }))
}

// ---------------------------------------------------------------------------------------
// Ceiling

async fn queue_for(s: &Settings) -> anyhow::Result<SqsQueue> {
    let client = build_client(&s.sqs).await;
    ensure_queues(&client, &s.sqs).await?;
    Ok(SqsQueue::connect(client, &s.sqs).await?)
}

/// Sends `ids` in batches of 10 with `concurrency` calls in flight; retries what SQS did
/// not accept (bounded). Returns (sent, elapsed).
async fn send_all(
    queue: &SqsQueue,
    ids: Arc<Vec<Uuid>>,
    concurrency: usize,
    rate: f64,
    deadline: Instant,
) -> anyhow::Result<(usize, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, ids, next, sent) = (queue.clone(), ids.clone(), next.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(10, Ordering::Relaxed);
                if start >= ids.len() {
                    return Ok::<(), anyhow::Error>(());
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(start as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut pending: Vec<OutgoingMessage> = ids[start..(start + 10).min(ids.len())]
                    .iter()
                    .map(|id| OutgoingMessage::for_report(*id, None, 0))
                    .collect();
                for attempt in 0..6 {
                    if Instant::now() > deadline {
                        bail!("sending did not finish in time");
                    }
                    match queue.send_batch(&pending).await {
                        Ok(accepted) => {
                            sent.fetch_add(accepted.len(), Ordering::Relaxed);
                            pending.retain(|m| !accepted.contains(&m.report_id));
                        }
                        Err(e) if attempt < 5 => {
                            eprintln!("reportd-bench: SendMessageBatch failed, retrying: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if pending.is_empty() {
                        break;
                    }
                }
                if !pending.is_empty() {
                    bail!("SQS refused {} messages 6 times", pending.len());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((sent.load(Ordering::Relaxed), started.elapsed()))
}

async fn ceiling(
    s: &Settings,
    messages: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    let queue = queue_for(s).await?;
    let ids: Arc<Vec<Uuid>> = Arc::new((0..messages).map(|_| Uuid::new_v4()).collect());
    let (sent, send_elapsed) = send_all(&queue, ids, concurrency, 0.0, deadline).await?;

    // Receive + delete: each task long-polls 10, deletes them in one call, repeats.
    let received = Arc::new(AtomicUsize::new(0));
    let deleted = Arc::new(AtomicUsize::new(0));
    let last_delete_ns = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, received, deleted, last) = (
            queue.clone(),
            received.clone(),
            deleted.clone(),
            last_delete_ns.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut empty = 0;
            while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                let batch = match queue.receive(10, 1, None).await {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("reportd-bench: ReceiveMessage failed: {e}");
                        empty += 1;
                        if empty > 5 {
                            break;
                        }
                        continue;
                    }
                };
                if batch.is_empty() {
                    empty += 1;
                    if empty > 3 {
                        break;
                    }
                    continue;
                }
                empty = 0;
                received.fetch_add(batch.len(), Ordering::Relaxed);
                let handles: Vec<String> = batch.into_iter().map(|m| m.receipt_handle).collect();
                match queue.delete_batch(&handles).await {
                    Ok(failed) => {
                        deleted.fetch_add(handles.len() - failed.len(), Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("reportd-bench: DeleteMessageBatch failed: {e}"),
                }
                last.fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let recv_elapsed = Duration::from_nanos(last_delete_ns.load(Ordering::Relaxed));
    let deleted = deleted.load(Ordering::Relaxed);
    let ok = sent == messages && deleted == sent;
    Ok(json!({
        "ok": ok,
        "concurrency": concurrency,
        "messages": messages,
        "sent": sent,
        "send_s": round(send_elapsed.as_secs_f64(), 3),
        "send_msg_per_s": round(sent as f64 / send_elapsed.as_secs_f64().max(1e-9), 1),
        "received": received.load(Ordering::Relaxed),
        "deleted": deleted,
        "receive_delete_s": round(recv_elapsed.as_secs_f64(), 3),
        "receive_delete_msg_per_s": round(deleted as f64 / recv_elapsed.as_secs_f64().max(1e-9), 1),
    }))
}

// ---------------------------------------------------------------------------------------
// Seed

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

async fn seed(
    s: &Settings,
    jobs: usize,
    concurrency: usize,
    users: i64,
    days: i64,
    rate: f64,
    timeout: Duration,
) -> anyhow::Result<Value> {
    use diesel_async::RunQueryDsl;
    let deadline = Instant::now() + timeout;
    let mut conn = connect(&s.database.url).await?;
    let queue = queue_for(s).await?;
    let end = chrono::Utc::now();
    let start = end - chrono::Duration::days(days.max(0));
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let started = Instant::now();
    let mut ids: Vec<Uuid> = Vec::with_capacity(jobs);
    const CHUNK: usize = 5000;
    let mut offset = 0usize;
    while offset < jobs {
        let n = CHUNK.min(jobs - offset);
        // enqueued_at is set: the messages are sent right below, and no reconciler should
        // send them a second time.
        let rows: Vec<IdRow> = diesel::sql_query(
            "INSERT INTO report_queue (id, payload, status, user_id, created_at, updated_at, enqueued_at) \
             SELECT gen_random_uuid(), \
                    jsonb_build_object('userId', u, 'startDate', $1::text, 'endDate', $2::text), \
                    'in-queue', u, now(), now(), now() \
             FROM (SELECT ((g + $3) % $4) + 1 AS u FROM generate_series(0, $5 - 1) AS g) AS s \
             RETURNING id",
        )
        .bind::<Text, _>(fmt(start))
        .bind::<Text, _>(fmt(end))
        .bind::<BigInt, _>(offset as i64)
        .bind::<BigInt, _>(users.max(1))
        .bind::<BigInt, _>(n as i64)
        .load(&mut conn)
        .await
        .context("inserting report_queue rows")?;
        ids.extend(rows.into_iter().map(|r| r.id));
        offset += n;
    }
    let insert_elapsed = started.elapsed();
    let (sent, send_elapsed) = send_all(&queue, Arc::new(ids), concurrency, rate, deadline).await?;
    Ok(json!({
        "ok": sent == jobs,
        "jobs": jobs,
        "inserted_s": round(insert_elapsed.as_secs_f64(), 3),
        "sent": sent,
        "send_s": round(send_elapsed.as_secs_f64(), 3),
        "send_msg_per_s": round(sent as f64 / send_elapsed.as_secs_f64().max(1e-9), 1),
    }))
}

// ---------------------------------------------------------------------------------------
// Submit: a minimal HTTP/1.1 keep-alive client (the crate has no HTTP client dependency).

struct Http {
    addr: String,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Http {
    fn new(base: &str) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(base).context("--url")?;
        if parsed.scheme() != "http" {
            bail!("--url must be http://");
        }
        let host = parsed.host_str().context("--url has no host")?.to_string();
        if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]" | "::1") {
            bail!("--url must be a loopback address, got {host}");
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        Ok(Self {
            addr: format!("{host}:{port}"),
            host: format!("{host}:{port}"),
            stream: None,
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` as JSON; returns the status code.
    async fn post_json(&mut self, path: &str, body: &str) -> anyhow::Result<u16> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.addr)
                    .await
                    .with_context(|| format!("connecting to {}", self.addr))?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
                self.buf.clear();
            }
            match self.exchange(path, body).await {
                Ok(status) => return Ok(status),
                // A keep-alive connection the server closed: reconnect once.
                Err(e) if attempt == 0 => {
                    self.stream = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    async fn exchange(&mut self, path: &str, body: &str) -> anyhow::Result<u16> {
        let stream = self.stream.as_mut().context("no connection")?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..header_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status code")?;
        let mut length = None;
        let mut close = false;
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" {
                bail!("chunked responses are not supported by this client");
            } else if name == "connection" && value.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let length = length.unwrap_or(0);
        while self.buf.len() < header_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

/// A submit request that takes longer counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn submit(
    url: &str,
    jobs: usize,
    concurrency: usize,
    rate: f64,
    (first_user, users): (i64, i64),
    timeout: Duration,
) -> anyhow::Result<Value> {
    let base = url.trim_end_matches('/').to_string();
    Http::new(&base)?; // validate early
    let deadline = Instant::now() + timeout;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let started_unix = unix_now();
    let concurrency = concurrency.max(1);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (base, next) = (base.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::new(&base)?;
            let mut latencies_ms = Vec::new();
            let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
            let mut errors = 0usize;
            let mut consecutive_errors = 0usize;
            let today = chrono::Utc::now().date_naive();
            let from = today - chrono::Duration::days(30);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs || Instant::now() > deadline {
                    break;
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = format!(
                    "{{\"userId\":{},\"startDate\":\"{from}\",\"endDate\":\"{today}\"}}",
                    first_user + (i as i64 % users.max(1))
                );
                let t = Instant::now();
                let result =
                    match tokio::time::timeout(REQUEST_TIMEOUT, http.post_json("/reports", &body))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => {
                            http.stream = None;
                            Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
                        }
                    };
                match result {
                    Ok(status) => {
                        consecutive_errors = 0;
                        latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                        *statuses.entry(status).or_default() += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        consecutive_errors += 1;
                        if errors <= 3 {
                            eprintln!("reportd-bench: POST /reports failed: {e:#}");
                        }
                        if consecutive_errors >= 5 {
                            eprintln!("reportd-bench: 5 failed requests in a row; this connection gives up");
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies_ms, statuses, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut errors = 0;
    for t in tasks {
        let (l, s, e) = t.await??;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let accepted = statuses.get(&202).copied().unwrap_or(0);
    Ok(json!({
        "ok": accepted == jobs,
        "jobs": jobs,
        "started_unix": started_unix,
        "accepted": accepted,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "accepted_per_s": round(accepted as f64 / elapsed.max(1e-9), 1),
        "latency_ms": {
            "p50": round(percentile(&latencies, 50.0), 2),
            "p90": round(percentile(&latencies, 90.0), 2),
            "p99": round(percentile(&latencies, 99.0), 2),
            "max": round(latencies.last().copied().unwrap_or(0.0), 2),
        }
    }))
}

// ---------------------------------------------------------------------------------------
// Wait / stats / count

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count_status(
    conn: &mut AsyncPgConnection,
    status: &str,
    since: Option<f64>,
) -> anyhow::Result<i64> {
    use diesel_async::RunQueryDsl;
    let row: One = diesel::sql_query(
        "SELECT count(*)::bigint AS n FROM report_queue \
         WHERE status = $1 AND created_at >= to_timestamp($2)",
    )
    .bind::<Text, _>(status)
    .bind::<Double, _>(since.unwrap_or(0.0))
    .get_result(conn)
    .await?;
    Ok(row.n)
}

async fn counts(conn: &mut AsyncPgConnection, since: Option<f64>) -> anyhow::Result<Value> {
    use diesel_async::RunQueryDsl;
    let rows: Vec<CountRow> = diesel::sql_query(
        "SELECT status, count(*)::bigint AS n FROM report_queue \
         WHERE created_at >= to_timestamp($1) GROUP BY status",
    )
    .bind::<Double, _>(since.unwrap_or(0.0))
    .load(conn)
    .await?;
    let enqueued: One = diesel::sql_query(
        "SELECT count(*)::bigint AS n FROM report_queue \
         WHERE enqueued_at IS NOT NULL AND created_at >= to_timestamp($1)",
    )
    .bind::<Double, _>(since.unwrap_or(0.0))
    .get_result(conn)
    .await?;
    let mut by_status = serde_json::Map::new();
    let mut total = 0;
    for r in rows {
        total += r.n;
        by_status.insert(r.status, json!(r.n));
    }
    Ok(json!({ "total": total, "by_status": by_status, "enqueued": enqueued.n }))
}

#[derive(QueryableByName)]
struct StatsRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Nullable<Double>)]
    start_p50: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    start_p99: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    finish_p50: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    finish_p99: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    run_p50: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    span_s: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    created_span_s: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    first_created_to_last_finished_s: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    first_start_unix: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    last_finish_unix: Option<f64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    attempts_max: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    peak_in_progress: Option<i64>,
}

async fn stats(conn: &mut AsyncPgConnection, since: Option<f64>) -> anyhow::Result<Value> {
    use diesel_async::RunQueryDsl;
    // Milliseconds from created_at (the API's commit, or the seed's insert) to the claim
    // (started_at) and to the end (finished_at), over completed jobs.
    let row: StatsRow = diesel::sql_query(
        "WITH c AS (SELECT * FROM report_queue WHERE status = 'completed' AND created_at >= to_timestamp($1)), \
         ev AS (SELECT started_at AS t, 1 AS d FROM c UNION ALL SELECT finished_at, -1 FROM c), \
         run AS (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS k FROM ev) \
         SELECT (SELECT count(*) FROM c)::bigint AS n, \
           (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)::float8 * 1000) FROM c) AS start_p50, \
           (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)::float8 * 1000) FROM c) AS start_p99, \
           (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)::float8 * 1000) FROM c) AS finish_p50, \
           (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)::float8 * 1000) FROM c) AS finish_p99, \
           (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)::float8 * 1000) FROM c) AS run_p50, \
           (SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM c) AS span_s, \
           (SELECT extract(epoch FROM max(created_at) - min(created_at))::float8 FROM c) AS created_span_s, \
           (SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8 FROM c) AS first_created_to_last_finished_s, \
           (SELECT extract(epoch FROM min(started_at))::float8 FROM c) AS first_start_unix, \
           (SELECT extract(epoch FROM max(finished_at))::float8 FROM c) AS last_finish_unix, \
           (SELECT max(attempts)::bigint FROM c) AS attempts_max, \
           (SELECT max(k)::bigint FROM run) AS peak_in_progress",
    )
    .bind::<Double, _>(since.unwrap_or(0.0))
    .get_result(conn)
    .await
    .context("stats query")?;
    let r2 = |x: Option<f64>| x.map(|v| round(v, 2));
    let span = row.span_s.unwrap_or(0.0);
    Ok(json!({
        "completed": row.n,
        "span_s": r2(row.span_s),
        "jobs_per_s": if span > 0.0 { json!(round(row.n as f64 / span, 1)) } else { Value::Null },
        "created_span_s": r2(row.created_span_s),
        "first_created_to_last_finished_s": r2(row.first_created_to_last_finished_s),
        "first_start_unix": row.first_start_unix,
        "last_finish_unix": row.last_finish_unix,
        "created_to_started_ms": { "p50": r2(row.start_p50), "p99": r2(row.start_p99) },
        "created_to_finished_ms": { "p50": r2(row.finish_p50), "p99": r2(row.finish_p99) },
        "run_ms_p50": r2(row.run_p50),
        "attempts_max": row.attempts_max,
        "peak_in_progress": row.peak_in_progress,
    }))
}

async fn wait(
    url: &str,
    jobs: i64,
    timeout: Duration,
    since: Option<f64>,
    poll: Duration,
    first_reach: Option<&str>,
    stall_s: u64,
) -> anyhow::Result<Value> {
    let mut conn = connect(url).await?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut reached_at: Option<f64> = None;
    let mut completed;
    let mut last_change = (Instant::now(), -1i64);
    let mut stalled = false;
    loop {
        completed = count_status(&mut conn, "completed", since).await?;
        if completed != last_change.1 {
            last_change = (Instant::now(), completed);
        } else if stall_s > 0 && last_change.0.elapsed() >= Duration::from_secs(stall_s) {
            stalled = true;
            break;
        }
        if let (Some(status), None) = (first_reach, reached_at) {
            let n = count_status(&mut conn, status, since).await?;
            if n + if status == "completed" { 0 } else { completed } >= jobs {
                reached_at = Some(started.elapsed().as_secs_f64());
            }
        }
        if completed >= jobs || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut out = stats(&mut conn, since).await?;
    let done = completed >= jobs;
    out["ok"] = json!(done);
    out["jobs"] = json!(jobs);
    out["wall_s"] = json!(round(wall, 3));
    out["stalled"] = json!(stalled);
    if let Some(status) = first_reach {
        out["first_reach"] =
            json!({ "status": status, "after_s": reached_at.map(|s| round(s, 3)) });
    }
    if !done {
        out["counts"] = counts(&mut conn, since).await?;
        eprintln!(
            "reportd-bench: only {completed} of {jobs} jobs completed {}: {}",
            if stalled {
                format!("(no progress for {stall_s} s: is reportd stuck?)")
            } else {
                format!("within {timeout:?}")
            },
            out["counts"]
        );
    }
    Ok(out)
}

/// One subscriber's stream, read until its terminal status event: when that event
/// arrived (unix seconds), the `finishedAt` it reports, and when the stream was open.
async fn follow(address: &str, host: &str, id: &str) -> anyhow::Result<(f64, f64, f64)> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "GET /reports/{id}/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut seen: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut opened = None;
    loop {
        let n = stream.read(&mut buffer).await?;
        anyhow::ensure!(n > 0, "stream for {id} closed before its terminal event");
        let arrived = unix_now();
        seen.extend_from_slice(&buffer[..n]);
        if opened.is_none() && find(&seen, b"\r\n\r\n").is_some() {
            anyhow::ensure!(
                seen.starts_with(b"HTTP/1.1 200"),
                "events for {id}: not a 200"
            );
            opened = Some(arrived);
        }
        let text = String::from_utf8_lossy(&seen);
        for line in text.lines().filter(|l| l.starts_with("data: {\"")) {
            let data: Value = match serde_json::from_str(&line["data: ".len()..]) {
                Ok(data) => data,
                Err(_) => continue,
            };
            let terminal = matches!(
                data["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            if terminal {
                let finished = data["finishedAt"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros() as f64 / 1e6)
                    .unwrap_or(arrived);
                return Ok((arrived, finished, opened.unwrap_or(arrived)));
            }
        }
    }
}

async fn subscribe(s: &Settings, url: &str, n: usize, timeout: Duration) -> anyhow::Result<Value> {
    let mut conn = connect(&s.database.url).await?;
    let ids: Vec<IdRow> = diesel_async::RunQueryDsl::load(
        diesel::sql_query("SELECT id FROM report_queue ORDER BY created_at DESC, id DESC LIMIT $1")
            .bind::<BigInt, _>(n as i64),
        &mut conn,
    )
    .await?;
    drop(conn);
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let started = unix_now();
    let ids: Vec<String> = ids.iter().map(|row| row.id.to_string()).collect();
    let follows = ids.iter().map(|id| follow(&address, &address, id));
    let results = tokio::time::timeout(timeout, futures_util::future::join_all(follows)).await?;
    let mut latencies_ms: Vec<f64> = Vec::new();
    let (mut ended, mut before_open, mut errors) = (0, 0, Vec::new());
    for result in results {
        match result {
            Ok((arrived, finished, opened)) => {
                ended += 1;
                // Only a job finished while its stream was open has a commit → event time.
                if finished >= opened {
                    latencies_ms.push(((arrived - finished) * 1e3).max(0.0));
                } else {
                    before_open += 1;
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    errors.truncate(5);
    Ok(json!({
        "subscribers": ids.len(),
        "ended_with_terminal_event": ended,
        "finished_before_stream_opened": before_open,
        "latency_p50_ms": round(percentile(&latencies_ms, 50.0), 1),
        "latency_p99_ms": round(percentile(&latencies_ms, 99.0), 1),
        "latency_max_ms": round(latencies_ms.last().copied().unwrap_or(0.0), 1),
        "measured": latencies_ms.len(),
        "errors": errors,
        "wall_s": round(unix_now() - started, 2),
    }))
}
