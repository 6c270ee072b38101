//! The temporary file a streaming generator writes to: bytes arrive in chunks over a
//! bounded channel and a blocking task writes them (gzip-compressed when asked),
//! measuring size and SHA-256 on the way; the finished file goes to the report store.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{store_failure, temporary_path, GeneratorError};
use crate::db::models::ReportFile;
use crate::storage::{ObjectInfo, ReportStore};

/// Chunks in flight to the writer: with ~64 KiB chunks, a few hundred KiB at most, so a
/// slow disk slows the producer down instead of filling memory.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Bytes gathered before a chunk is handed to the writer.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// What the writer measured.
pub(crate) struct Measurement {
    /// Bytes in the file (compressed when gzip).
    pub(super) size_bytes: i64,
    /// Hex SHA-256 of those bytes.
    pub(super) sha256: String,
}

/// Counts and hashes the bytes on their way to the file, so that size and SHA-256 come
/// with the write instead of a second read.
struct Measured<W> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> Write for Measured<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An open temporary file of one attempt, fed with items of type `T`: byte chunks by
/// default, or whatever a format's own writer takes (rows for XLSX).
pub(crate) struct FileSink<T = Vec<u8>> {
    /// Where the items go; dropping it tells the writer the file is complete.
    chunks: Option<mpsc::Sender<T>>,
    /// The blocking writer, answering what it wrote (taken once it is awaited).
    writer: Option<JoinHandle<Result<Measurement, GeneratorError>>>,
    temp: PathBuf,
}

impl FileSink {
    /// Opens the attempt's temporary file in the store's scratch directory, for bytes.
    pub(crate) fn open(store: &ReportStore, id: Uuid, attempt: i32, gzip: bool) -> Self {
        Self::open_with(store, id, attempt, move |dir, temp, chunks| {
            write_chunks(dir, temp, chunks, gzip)
        })
    }
}

impl<T: Send + 'static> FileSink<T> {
    /// Opens the attempt's temporary file, written by `write` on a blocking thread from
    /// the items it receives (`write(dir, temp, items)`); it answers what it wrote, and
    /// removes the file if it fails.
    pub(crate) fn open_with(
        store: &ReportStore,
        id: Uuid,
        attempt: i32,
        write: impl FnOnce(&Path, &Path, mpsc::Receiver<T>) -> Result<Measurement, GeneratorError>
            + Send
            + 'static,
    ) -> Self {
        let dir = store.scratch_dir().to_path_buf();
        let temp = temporary_path(&dir, id, attempt);
        let (chunks, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let path = temp.clone();
        let writer = tokio::task::spawn_blocking(move || write(&dir, &path, receiver));
        Self {
            chunks: Some(chunks),
            writer: Some(writer),
            temp,
        }
    }

    /// Hands one item to the writer; waits while the writer is behind.
    pub(crate) async fn write(&mut self, chunk: T) -> Result<(), GeneratorError> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped early: its own error says why.
            return Err(self.finish_writer().await.err().unwrap_or_else(|| {
                GeneratorError::Retryable("the report file writer stopped".into())
            }));
        }
        Ok(())
    }

    async fn finish_writer(&mut self) -> Result<Measurement, GeneratorError> {
        self.chunks = None;
        let writer = self
            .writer
            .take()
            .ok_or_else(|| GeneratorError::Retryable("the report file writer stopped".into()))?;
        writer
            .await
            .map_err(|e| GeneratorError::Retryable(format!("writer task failed: {e}")))?
    }

    /// Completes the file and hands it to the store under `<id>.<extension>`.
    pub(crate) async fn store(
        self,
        store: &ReportStore,
        id: Uuid,
        attempt: i32,
        described: Described<'_>,
    ) -> Result<ReportFile, GeneratorError> {
        let mut sink = self;
        let measured = sink.finish_writer().await?;
        let temp = sink.temp.clone();
        let key = store.key_with_extension(id, described.extension, described.gzip);
        let info = ObjectInfo {
            report_id: id,
            attempt,
            content_type: described.content_type.to_string(),
            gzip: described.gzip,
            sha256: measured.sha256.clone(),
            rows: described.rows,
        };
        store.put(&temp, &key, &info).await.map_err(store_failure)?;
        Ok(ReportFile {
            key,
            size_bytes: measured.size_bytes,
            sha256: measured.sha256,
            content_type: info.content_type,
            rows: described.rows,
            gzip: described.gzip,
        })
    }
}

/// What the stored file is.
pub(crate) struct Described<'a> {
    /// Its media type.
    pub content_type: &'a str,
    /// Its name's extension (before `.gz`).
    pub extension: &'a str,
    /// Compressed as written.
    pub gzip: bool,
    /// Data rows (0 when the generator cannot tell).
    pub rows: i64,
}

/// The writer's loop; on failure the temporary file is removed.
fn write_chunks(
    dir: &Path,
    temp: &Path,
    mut chunks: mpsc::Receiver<Vec<u8>>,
    gzip: bool,
) -> Result<Measurement, GeneratorError> {
    write_measured_file(dir, temp, gzip, |out| {
        while let Some(chunk) = chunks.blocking_recv() {
            out.write_all(&chunk)?;
        }
        Ok(())
    })
}

/// Writes what `body` writes to `temp` in `dir` (through gzip when `gzip`), measuring
/// the bytes that reach the file; on failure the temporary file is removed.
pub(super) fn write_measured_file(
    dir: &Path,
    temp: &Path,
    gzip: bool,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<Measurement, GeneratorError> {
    let write = move || -> std::io::Result<Measured<std::io::BufWriter<std::fs::File>>> {
        std::fs::create_dir_all(dir)?;
        let file = std::io::BufWriter::new(std::fs::File::create(temp)?);
        let mut out = Measured {
            inner: file,
            hasher: sha2::Digest::new(),
            bytes: 0,
        };
        if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
            body(&mut encoder)?;
            encoder.finish()?;
        } else {
            body(&mut out)?;
        }
        out.flush()?;
        Ok(out)
    };
    match write() {
        Ok(out) => Ok(Measurement {
            size_bytes: i64::try_from(out.bytes).unwrap_or(i64::MAX),
            sha256: hex::encode(sha2::Digest::finalize(out.hasher)),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(temp);
            Err(GeneratorError::from_io(
                &format!("cannot write in {}", dir.display()),
                &e,
            ))
        }
    }
}

/// Size and SHA-256 of a file a writer could not measure on the way (one that seeks,
/// such as a zip); on failure the file is removed.
pub(super) fn measure_written(temp: &Path) -> Result<Measurement, GeneratorError> {
    let measure = || -> std::io::Result<Measurement> {
        use sha2::Digest;
        let mut file = std::fs::File::open(temp)?;
        let mut hasher = sha2::Sha256::new();
        let bytes = std::io::copy(&mut file, &mut hasher)?;
        Ok(Measurement {
            size_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            sha256: hex::encode(hasher.finalize()),
        })
    };
    measure().map_err(|e| {
        let _ = std::fs::remove_file(temp);
        GeneratorError::from_io(&format!("cannot read back {}", temp.display()), &e)
    })
}
