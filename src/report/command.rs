//! The `command` report type: an external program makes the file.
//!
//! Protocol: the job's parameters arrive as one JSON object on standard input
//! (`{"reportId", "attempt", "type", "params"}`, then end of input); standard output is
//! the report, streamed to the store; a line `progress <percent> <stage>` on standard
//! error reports progress, and the last other lines of standard error become the job's
//! `lastError`. Exit 0 = done, 75 (EX_TEMPFAIL) = retryable failure, anything else (or a
//! signal) = permanent failure. The program runs in a process group of its own, so that
//! stopping it (timeout, cancel, shutdown) reaches its children too: SIGTERM, then
//! SIGKILL after [`KILL_GRACE`].

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use super::sink::{Described, FileSink, CHUNK_BYTES};
use super::{GeneratedReport, GeneratorError, JobContext, ProgressReporter, ReportGenerator};
use crate::config::ReportTypeSettings;
use crate::storage::ReportStore;

/// Between SIGTERM and SIGKILL: time for the program to clean up.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// Standard error lines kept for `lastError`.
const KEPT_STDERR_LINES: usize = 10;

/// The exit status that asks for another attempt (sysexits' EX_TEMPFAIL).
const EX_TEMPFAIL: i32 = 75;

/// Generates reports of one `command` type.
pub(crate) struct CommandGenerator {
    declared: Arc<ReportTypeSettings>,
    store: Arc<ReportStore>,
    public_url: String,
    gzip: bool,
}

impl CommandGenerator {
    pub(crate) fn new(
        declared: ReportTypeSettings,
        store: Arc<ReportStore>,
        public_url: &str,
        gzip: bool,
    ) -> Self {
        Self {
            declared: Arc::new(declared),
            store,
            public_url: public_url.trim_end_matches('/').to_string(),
            gzip,
        }
    }
}

/// The running program. Dropping it (the attempt's task aborted by a cancel or the
/// shutdown) stops the whole process group: SIGTERM now, SIGKILL after the grace.
struct Running {
    child: Option<Child>,
    /// The process group id (the child's pid: it leads its own group).
    group: i32,
}

impl Running {
    /// SIGTERM to the group, then SIGKILL if it has not exited after the grace.
    async fn stop(mut child: Child, group: i32) {
        signal_group(group, libc::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            signal_group(group, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let group = self.group;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(Running::stop(child, group));
            }
            // No runtime left (the process is ending): kill at once.
            Err(_) => signal_group(group, libc::SIGKILL),
        }
    }
}

fn signal_group(group: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
    let _ = unsafe { libc::kill(-group, signal) };
}

impl ReportGenerator for CommandGenerator {
    fn generate(
        &self,
        job: JobContext,
    ) -> BoxFuture<'static, Result<GeneratedReport, GeneratorError>> {
        let declared = self.declared.clone();
        let store = self.store.clone();
        let gzip = self.gzip;
        let link = format!("{}/reports/{}/file", self.public_url, job.report_id);
        Box::pin(async move {
            let limit = Duration::from_secs(u64::from(declared.timeout_s));
            let mut sink = FileSink::open(&store, job.report_id, job.attempt, gzip);
            let ran = tokio::time::timeout(limit, run(&declared, &job, &mut sink)).await;
            match ran {
                // The timeout dropped `run`, and with it the program (SIGTERM, SIGKILL).
                Err(_) => Err(GeneratorError::Permanent(format!(
                    "the command ran longer than {} s (timeout_s) and was stopped",
                    declared.timeout_s
                ))),
                Ok(Err(e)) => Err(e),
                Ok(Ok(bytes)) => {
                    let described = Described {
                        content_type: declared
                            .content_type
                            .as_deref()
                            .unwrap_or("application/octet-stream"),
                        extension: declared.extension.as_deref().unwrap_or("bin"),
                        gzip,
                        rows: 0,
                    };
                    tracing::debug!(bytes, "command report written");
                    let file = sink
                        .store(&store, job.report_id, job.attempt, described)
                        .await?;
                    Ok(GeneratedReport {
                        report_url: Some(link),
                        file: Some(file),
                    })
                }
            }
        })
    }
}

/// Starts the program with only `PATH` and the declared `env`, in a group of its own.
fn spawn(declared: &ReportTypeSettings) -> Result<Running, GeneratorError> {
    let mut command = Command::new(&declared.command[0]);
    command
        .args(&declared.command[1..])
        .env_clear()
        .envs(&declared.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        if !declared.env.contains_key("PATH") {
            command.env("PATH", path);
        }
    }
    let child = command.spawn().map_err(|e| {
        GeneratorError::Permanent(format!("cannot start `{}`: {e}", declared.command[0]))
    })?;
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| GeneratorError::Retryable("the command exited at once".into()))?;
    Ok(Running {
        child: Some(child),
        group,
    })
}

/// Runs the program to its end; returns the bytes it wrote.
async fn run(
    declared: &ReportTypeSettings,
    job: &JobContext,
    sink: &mut FileSink,
) -> Result<u64, GeneratorError> {
    let mut running = spawn(declared)?;
    let child = running
        .child
        .as_mut()
        .ok_or_else(|| GeneratorError::Retryable("the command is gone".into()))?;
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(GeneratorError::Retryable("the command has no pipes".into()));
    };
    let input = json!({
        "reportId": job.report_id,
        "attempt": job.attempt,
        "type": declared.name,
        "params": job.payload.get("params").cloned().unwrap_or_else(|| json!({})),
    });
    let errors = tokio::spawn(read_stderr(stderr, job.progress.clone()));
    // On a task of its own: a program that writes its output before reading all of its
    // input must not deadlock against us. One that never reads it is fine too (a closed
    // pipe is not an error).
    tokio::spawn(async move {
        let _ = stdin.write_all(format!("{input}\n").as_bytes()).await;
    });
    let mut written = 0u64;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let n = stdout
            .read(&mut buffer)
            .await
            .map_err(|e| GeneratorError::from_io("reading the command's output", &e))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        sink.write(buffer[..n].to_vec()).await?;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| GeneratorError::from_io("waiting for the command", &e))?;
    // Standard error ends when every process holding it has exited; until then (a
    // leftover child) the group is still signalled if the attempt is stopped.
    let last_lines = errors.await.unwrap_or_default();
    running.child = None;
    exit_verdict(status.code(), &last_lines).map(|()| written)
}

/// What the exit status means for the job.
fn exit_verdict(code: Option<i32>, stderr: &str) -> Result<(), GeneratorError> {
    let said = if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    };
    match code {
        Some(0) => Ok(()),
        Some(EX_TEMPFAIL) => Err(GeneratorError::Retryable(format!(
            "the command exited with 75 (try again){said}"
        ))),
        Some(code) => Err(GeneratorError::Permanent(format!(
            "the command exited with {code}{said}"
        ))),
        None => Err(GeneratorError::Permanent(format!(
            "the command was killed by a signal{said}"
        ))),
    }
}

/// Reads standard error to its end: progress lines go to the reporter, the last other
/// lines are returned (joined by ` | `) for `lastError`.
async fn read_stderr(stderr: ChildStderr, progress: ProgressReporter) -> String {
    let mut lines = BufReader::new(stderr).lines();
    let mut kept: VecDeque<String> = VecDeque::with_capacity(KEPT_STDERR_LINES);
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some((percent, stage)) = parse_progress(&line) {
            progress.report(percent, stage);
            continue;
        }
        if kept.len() == KEPT_STDERR_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
    Vec::from(kept).join(" | ")
}

/// `progress <percent> <stage>`: percent 0–100, the stage is the rest of the line.
fn parse_progress(line: &str) -> Option<(u8, &str)> {
    let rest = line.strip_prefix("progress ")?;
    let (percent, stage) = rest.split_once(' ').unwrap_or((rest, ""));
    let percent: u8 = percent.parse().ok().filter(|p| *p <= 100)?;
    Some((percent, stage.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_recognised() {
        assert_eq!(parse_progress("progress 40 reading"), Some((40, "reading")));
        assert_eq!(parse_progress("progress 100"), Some((100, "")));
        assert_eq!(parse_progress("progress 101 x"), None);
        assert_eq!(parse_progress("progressing 4"), None);
    }

    #[test]
    fn exit_codes_decide_the_fate() {
        assert!(exit_verdict(Some(0), "").is_ok());
        assert!(matches!(
            exit_verdict(Some(75), "busy"),
            Err(GeneratorError::Retryable(m)) if m.ends_with(": busy")
        ));
        assert!(matches!(
            exit_verdict(Some(1), ""),
            Err(GeneratorError::Permanent(_))
        ));
        assert!(matches!(
            exit_verdict(None, ""),
            Err(GeneratorError::Permanent(_))
        ));
    }
}
