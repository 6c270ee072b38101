//! The report store: where finished report files are kept and how clients get them,
//! chosen by `[storage] backend`.
//!
//! - `local` ([`local::LocalStore`]): the file is renamed into `report.output_dir` of the
//!   worker that wrote it, and only that host can serve it.
//! - `s3` ([`s3::S3Store`]): the file is uploaded to a bucket (one `PutObject`, or a
//!   multipart upload above [`s3::MULTIPART_THRESHOLD`] that is aborted on any failure),
//!   so no half-written object is ever visible; any api process answers a download with
//!   a presigned URL.
//!
//! Either way a generator writes its file to a temporary path in [`ReportStore::scratch_dir`]
//! first and hands it over with [`ReportStore::put`] once it is complete. The store
//! knows nothing of rows or jobs: it stores bytes under keys.

pub(crate) mod local;
pub mod s3;

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::config::{Settings, StorageBackend};

/// A store failure, saying whether the store itself could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file operation failed (`report.output_dir`, or the temporary file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// An S3 call failed.
    #[error("S3 {operation} on bucket {bucket} failed: {message}")]
    S3 {
        /// The S3 action, e.g. `PutObject`.
        operation: &'static str,
        /// The bucket it was about.
        bucket: String,
        /// The SDK's error with its context.
        message: String,
        /// No answer came from S3 at all (connection refused or cut, timeout), as
        /// opposed to an answer that refused the call.
        unreachable: bool,
    },
    /// The bucket does not exist and `storage.create_bucket` is off.
    #[error("bucket {0} does not exist (create it, or set storage.create_bucket = true)")]
    BucketMissing(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the failure is the store's (or the host's) rather than one call's: S3
    /// gave no answer, or a local operation ran out of files, space or memory.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            StoreError::S3 { unreachable, .. } => *unreachable,
            StoreError::Io { source, .. } => is_host_trouble(source),
            StoreError::BucketMissing(_) => false,
        }
    }
}

/// What the store records with a file besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The report the file belongs to.
    pub report_id: Uuid,
    /// The attempt that wrote it (a stopped attempt's upload is aborted by
    /// [`ReportStore::discard`]).
    pub attempt: i32,
    /// Its media type, e.g. `text/csv; charset=utf-8`.
    pub content_type: String,
    /// Whether the bytes are gzip-compressed (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Hex SHA-256 of the bytes (S3 object metadata `sha256`).
    pub sha256: String,
    /// CSV data rows (S3 object metadata `rows`).
    pub rows: i64,
}

/// Where a client gets a stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Download {
    /// This host's file (local backend).
    File(PathBuf),
    /// A presigned GET URL, valid for `storage.presign_ttl_s` (s3 backend).
    Redirect(String),
}

/// The configured report store (`pub` for the integration tests, which upload through it).
pub struct ReportStore {
    backend: Backend,
}

/// The backends, one per `storage.backend`.
enum Backend {
    /// Files in `report.output_dir`.
    Local(local::LocalStore),
    /// Objects in an S3 bucket.
    S3(s3::S3Store),
}

impl ReportStore {
    /// The store `[storage]` asks for. Makes no call: see [`ReportStore::prepare`].
    pub async fn open(settings: &Settings) -> Self {
        let scratch = settings.report.output_dir.clone();
        let backend = match settings.storage.backend {
            StorageBackend::Local => Backend::Local(local::LocalStore::new(scratch)),
            StorageBackend::S3 => Backend::S3(s3::S3Store::open(&settings.storage, scratch).await),
        };
        Self { backend }
    }

    /// Whether files stay on the host that wrote them (the `local` backend).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }

    /// At `serve` start: the bucket must exist (created when `storage.create_bucket`);
    /// the local directory is created. Returns what it did, for the log.
    pub(crate) async fn prepare(&self) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Local(store) => store.prepare().await,
            Backend::S3(store) => store.ensure_bucket().await,
        }
    }

    /// `reportd storage check`: writes and deletes a small probe object (or file), so
    /// that reachability, the bucket and the permissions are all proven.
    pub(crate) async fn check(&self) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Local(store) => store.check().await,
            Backend::S3(store) => store.check().await,
        }
    }

    /// Where generators write their temporary files (`report.output_dir`).
    pub fn scratch_dir(&self) -> &Path {
        match &self.backend {
            Backend::Local(store) => store.dir(),
            Backend::S3(store) => store.scratch_dir(),
        }
    }

    /// The key a report's file is stored under.
    pub fn key_for(&self, id: Uuid, gzip: bool) -> String {
        match &self.backend {
            Backend::Local(_) => file_name(id, gzip),
            Backend::S3(store) => store.key_for(id, gzip),
        }
    }

    /// The key of a report's file with another extension than `csv` (report types):
    /// `<id>.<extension>` (`.gz` appended when compressed), under the S3 prefix.
    pub(crate) fn key_with_extension(&self, id: Uuid, extension: &str, gzip: bool) -> String {
        let name = file_name_with_extension(id, extension, gzip);
        match &self.backend {
            Backend::Local(_) => name,
            Backend::S3(store) => store.key_with_name(&name),
        }
    }

    /// Takes over the finished temporary file `temp` as `key`: renamed into place, or
    /// uploaded and then removed. On failure nothing is visible under `key` (beyond
    /// what an earlier attempt completed) and `temp` is removed.
    pub async fn put(&self, temp: &Path, key: &str, info: &ObjectInfo) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(store) => store.put(temp, key).await,
            Backend::S3(store) => {
                let uploaded = store.put(temp, key, info).await;
                remove_if_present(temp).await;
                uploaded
            }
        }
    }

    /// Removes what a stopped attempt left: its temporary file and, on S3, its
    /// unfinished multipart upload (never a completed object).
    pub(crate) async fn discard(&self, temp: &Path, report_id: Uuid, attempt: i32) {
        remove_if_present(temp).await;
        if let Backend::S3(store) = &self.backend {
            store.abort_pending(report_id, attempt).await;
        }
    }

    /// How a client downloads `key` of report `id`.
    pub(crate) async fn download(&self, id: Uuid, key: &str) -> Result<Download, StoreError> {
        match &self.backend {
            Backend::Local(store) => store.path_of(key).map(Download::File),
            Backend::S3(store) => store.presign(id, key).await,
        }
    }

    /// Deletes the file stored as `key` (retention). A file that is already gone is
    /// fine: the pruner may run again over a row whose file it deleted before a crash.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(store) => store.delete(key).await,
            Backend::S3(store) => store.delete(key).await,
        }
    }

    /// Seconds a download link lives (s3 backend); None for the local backend.
    pub(crate) fn link_ttl_s(&self) -> Option<u64> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::S3(store) => Some(store.presign_ttl_s()),
        }
    }
}

/// OS errors that say the host is short of something (files, space, memory), whatever
/// the job: EMFILE, ENFILE, ENOSPC, EDQUOT, ENOMEM.
pub(crate) fn is_host_trouble(error: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    const ENOMEM: i32 = 12;
    matches!(
        error.raw_os_error(),
        Some(EMFILE | ENFILE | ENOSPC | EDQUOT | ENOMEM)
    ) || matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::OutOfMemory
    )
}

/// A report's file name: `<id>.csv`, or `<id>.csv.gz` when compressed.
pub(crate) fn file_name(id: Uuid, gzip: bool) -> String {
    if gzip {
        format!("{id}.csv.gz")
    } else {
        format!("{id}.csv")
    }
}

/// `<id>.<extension>`, or `<id>.<extension>.gz` when compressed.
pub(crate) fn file_name_with_extension(id: Uuid, extension: &str, gzip: bool) -> String {
    if gzip {
        format!("{id}.{extension}.gz")
    } else {
        format!("{id}.{extension}")
    }
}

/// The name a browser saves `key` as: its last path segment without `.gz` (a compressed
/// file is served with `Content-Encoding: gzip`, so the saved file is the plain one).
pub(crate) fn download_name(key: &str) -> &str {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.strip_suffix(".gz").unwrap_or(name)
}

/// Removes a file; a missing one is fine, another failure is logged (a stray temporary
/// file costs disk space, never correctness: it is never served).
pub(crate) async fn remove_if_present(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a temporary report file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary report file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_named_after_its_report_and_says_when_it_is_compressed() {
        let id = Uuid::nil();
        assert_eq!(
            file_name(id, false),
            "00000000-0000-0000-0000-000000000000.csv"
        );
        assert_eq!(
            file_name(id, true),
            "00000000-0000-0000-0000-000000000000.csv.gz"
        );
    }

    #[test]
    fn a_download_is_named_after_the_key_without_prefix_or_gz() {
        assert_eq!(download_name("exports/abc.jsonl.gz"), "abc.jsonl");
        assert_eq!(download_name("abc.csv"), "abc.csv");
        assert_eq!(
            file_name_with_extension(Uuid::nil(), "jsonl", true),
            "00000000-0000-0000-0000-000000000000.jsonl.gz"
        );
    }

    #[test]
    fn only_an_unanswered_call_or_host_trouble_makes_the_store_unreachable() {
        let s3 = |unreachable| StoreError::S3 {
            operation: "PutObject",
            bucket: "b".into(),
            message: "m".into(),
            unreachable,
        };
        assert!(s3(true).is_unreachable());
        assert!(!s3(false).is_unreachable());
        assert!(!StoreError::BucketMissing("b".into()).is_unreachable());
        let full = StoreError::io("write", std::io::Error::from_raw_os_error(28));
        assert!(full.is_unreachable());
        let denied = StoreError::io("write", std::io::ErrorKind::PermissionDenied.into());
        assert!(!denied.is_unreachable());
    }
}
