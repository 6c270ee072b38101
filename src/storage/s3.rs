//! The `s3` backend: report files as objects in one bucket, downloaded through
//! presigned GET URLs.
//!
//! An upload streams from the finished temporary file and never holds a report in
//! memory: one `PutObject` up to [`MULTIPART_THRESHOLD`], a multipart upload of
//! [`part_size`] parts above it. A `PutObject` is all or nothing; a multipart upload
//! that fails is aborted, and one whose attempt is stopped midway is aborted by
//! [`S3Store::abort_pending`]. An object therefore only ever appears complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
    ServerSideEncryption,
};
use aws_sdk_s3::Client;
use uuid::Uuid;

use super::{Download, ObjectInfo, StoreError};
use crate::config::StorageSettings;

/// Files larger than this are sent as a multipart upload (S3 wants parts of at least
/// 5 MiB, and one request per 8 MiB keeps a retry cheap).
pub const MULTIPART_THRESHOLD: u64 = 8 * MIB;

const MIB: u64 = 1024 * 1024;

/// Most parts S3 accepts in one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// The part size for a file of `total` bytes: 8 MiB, or more (whole MiB) when 10,000
/// parts of 8 MiB would not hold it.
pub(crate) fn part_size(total: u64) -> u64 {
    let needed = total.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(MULTIPART_THRESHOLD)
}

/// `(offset, length)` of each part of a `total`-byte file, in order; the last may be
/// shorter.
pub(crate) fn parts(total: u64) -> Vec<(u64, u64)> {
    let size = part_size(total);
    (0..total.div_ceil(size))
        .map(|n| {
            let offset = n * size;
            (offset, size.min(total - offset))
        })
        .collect()
}

/// `prefix` as keys use it: empty, or ending in exactly one `/`.
pub(crate) fn normalized_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The object key of a report's file: `<prefix><id>.csv` (`.csv.gz` when compressed),
/// with `prefix` as [`normalized_prefix`] leaves it.
pub(crate) fn object_key(prefix: &str, id: Uuid, gzip: bool) -> String {
    format!("{prefix}{}", super::file_name(id, gzip))
}

/// Builds an S3 client the way the SQS client is built: with an `endpoint_url`
/// (LocalStack, MinIO) and no AWS credentials in the environment, static dummy
/// credentials; otherwise the default credential chain.
pub async fn build_client(settings: &StorageSettings) -> Client {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // One call moves at most one 8 MiB part (or a larger part of a huge file).
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
    let loader = crate::aws_endpoint::at_endpoint(loader, settings.endpoint_url.as_deref());
    let config = aws_sdk_s3::config::Builder::from(&loader.load().await)
        .force_path_style(settings.force_path_style)
        // No automatic CRC32 trailers (aws-chunked bodies, per-part checksums that the
        // completion must repeat): reportd records its own SHA-256 of every file, and
        // S3-compatible stores differ in how they take trailers.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// One bucket (and key prefix) of report files.
pub(crate) struct S3Store {
    client: Client,
    /// `storage.bucket`.
    bucket: String,
    /// `storage.prefix`, normalized to end in `/` (or empty).
    prefix: String,
    /// `storage.create_bucket`: create a missing bucket at start instead of failing.
    create_bucket: bool,
    /// `storage.presign_ttl_s`: how long a download link works.
    presign_ttl_s: u64,
    /// `storage.server_side_encryption`, asked for on every upload.
    sse: Option<ServerSideEncryption>,
    /// `storage.region`, for the bucket's location constraint when it is created.
    region: String,
    /// `report.output_dir`: the generators' temporary files before upload.
    scratch: PathBuf,
    /// Multipart uploads in flight by `(report, attempt)`: `(key, upload id)`. A stopped
    /// attempt's task is dropped midway, so `abort_pending` aborts its upload.
    pending: Mutex<HashMap<(Uuid, i32), (String, String)>>,
}

impl S3Store {
    pub(crate) async fn open(settings: &StorageSettings, scratch: PathBuf) -> Self {
        Self {
            client: build_client(settings).await,
            // Validation refuses the s3 backend without a bucket.
            bucket: settings.bucket.clone().unwrap_or_default(),
            prefix: normalized_prefix(&settings.prefix),
            create_bucket: settings.create_bucket,
            presign_ttl_s: settings.presign_ttl_s,
            sse: settings
                .server_side_encryption
                .as_deref()
                .map(ServerSideEncryption::from),
            region: settings.region.clone(),
            scratch,
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    pub(crate) fn presign_ttl_s(&self) -> u64 {
        self.presign_ttl_s
    }

    /// `<prefix><id>.csv` (`.csv.gz` when compressed).
    pub(crate) fn key_for(&self, id: Uuid, gzip: bool) -> String {
        object_key(&self.prefix, id, gzip)
    }

    /// `<prefix><name>`.
    pub(crate) fn key_with_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn error<E>(&self, operation: &'static str, err: SdkError<E>) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let unreachable = matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        );
        StoreError::S3 {
            operation,
            bucket: self.bucket.clone(),
            message: DisplayErrorContext(&err).to_string(),
            unreachable,
        }
    }

    /// Whether the bucket exists (`HeadBucket`: 404 = no).
    async fn bucket_exists(&self) -> Result<bool, StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(self.error("HeadBucket", e)),
        }
    }

    /// At start: the bucket exists, or is created when `storage.create_bucket` is on.
    pub(crate) async fn ensure_bucket(&self) -> Result<String, StoreError> {
        if self.bucket_exists().await? {
            return Ok(format!("bucket {} exists", self.bucket));
        }
        if !self.create_bucket {
            return Err(StoreError::BucketMissing(self.bucket.clone()));
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the one region that takes no location constraint.
        if self.region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(format!("created bucket {}", self.bucket)),
            // Another process created it in between.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(format!("bucket {} exists", self.bucket))
            }
            Err(e) => Err(self.error("CreateBucket", e)),
        }
    }

    /// Puts and deletes a probe object under the prefix.
    pub(crate) async fn check(&self) -> Result<String, StoreError> {
        if !self.bucket_exists().await? {
            return Err(StoreError::BucketMissing(self.bucket.clone()));
        }
        let key = format!("{}.reportd-check-{}", self.prefix, Uuid::new_v4().simple());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from_static(b"reportd storage check\n"))
            .set_server_side_encryption(self.sse.clone())
            .send()
            .await
            .map_err(|e| self.error("PutObject", e))?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", e))?;
        Ok(format!(
            "bucket {} is reachable and writable (put and deleted {key})",
            self.bucket
        ))
    }

    /// Deletes the object `key`. S3 answers a delete of a missing key with success, so
    /// a file deleted before is no error.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", e))?;
        Ok(())
    }

    /// Uploads the file at `path` as `key`.
    pub(crate) async fn put(
        &self,
        path: &Path,
        key: &str,
        info: &ObjectInfo,
    ) -> Result<(), StoreError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?
            .len();
        if size <= MULTIPART_THRESHOLD {
            self.put_whole(path, key, info).await
        } else {
            self.put_multipart(path, key, info, size).await
        }
    }

    async fn put_whole(&self, path: &Path, key: &str, info: &ObjectInfo) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e.into()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .content_type(&info.content_type)
            .set_content_encoding(info.gzip.then(|| "gzip".to_string()))
            .metadata("sha256", &info.sha256)
            .metadata("rows", info.rows.to_string())
            .set_server_side_encryption(self.sse.clone())
            .send()
            .await
            .map_err(|e| self.error("PutObject", e))?;
        Ok(())
    }

    /// A multipart upload; any failure aborts it, so S3 drops the parts and no object
    /// appears.
    async fn put_multipart(
        &self,
        path: &Path,
        key: &str,
        info: &ObjectInfo,
        size: u64,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(&info.content_type)
            .set_content_encoding(info.gzip.then(|| "gzip".to_string()))
            .metadata("sha256", &info.sha256)
            .metadata("rows", info.rows.to_string())
            .set_server_side_encryption(self.sse.clone())
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let attempt = (info.report_id, info.attempt);
        self.pending_uploads()
            .insert(attempt, (key.to_string(), upload_id.clone()));
        let result = match self.upload_parts(path, key, &upload_id, size).await {
            Ok(parts) => self.complete(key, &upload_id, parts).await,
            Err(e) => Err(e),
        };
        self.pending_uploads().remove(&attempt);
        if result.is_err() {
            self.abort(key, &upload_id).await;
        }
        result
    }

    async fn upload_parts(
        &self,
        path: &Path,
        key: &str,
        upload_id: &str,
        size: u64,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let mut done = Vec::new();
        for (number, (offset, length)) in (1_i32..).zip(parts(size)) {
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(length))
                .build()
                .await
                .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e.into()))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(i64::try_from(length).unwrap_or(i64::MAX))
                .body(body)
                .send()
                .await
                .map_err(|e| self.error("UploadPart", e))?;
            done.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
        }
        Ok(done)
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StoreError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("CompleteMultipartUpload", e))?;
        Ok(())
    }

    /// Aborts a multipart upload; a failure is logged (S3 keeps the invisible parts
    /// until a lifecycle rule removes them; they are never served).
    async fn abort(&self, key: &str, upload_id: &str) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match aborted {
            Ok(_) => tracing::info!(key, "aborted a multipart upload"),
            Err(e) => {
                let error = self.error("AbortMultipartUpload", e);
                tracing::warn!(key, %error, "cannot abort a multipart upload");
            }
        }
    }

    /// Aborts the multipart upload a stopped attempt left in flight, if any.
    pub(crate) async fn abort_pending(&self, report_id: Uuid, attempt: i32) {
        let pending = self.pending_uploads().remove(&(report_id, attempt));
        if let Some((key, upload_id)) = pending {
            self.abort(&key, &upload_id).await;
        }
    }

    fn pending_uploads(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, i32), (String, String)>> {
        // The map stays consistent even if a holder panicked: each use is one call.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A presigned GET of `key`, saved by the browser under the key's name (`<id>.csv`).
    pub(crate) async fn presign(&self, _id: Uuid, key: &str) -> Result<Download, StoreError> {
        let ttl = Duration::from_secs(self.presign_ttl_s);
        let config = PresigningConfig::expires_in(ttl).map_err(|e| StoreError::S3 {
            operation: "GetObject (presign)",
            bucket: self.bucket.clone(),
            message: e.to_string(),
            unreachable: false,
        })?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_disposition(format!(
                "attachment; filename=\"{}\"",
                super::download_name(key)
            ))
            .presigned(config)
            .await
            .map_err(|e| self.error("GetObject (presign)", e))?;
        Ok(Download::Redirect(request.uri().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_use_8_mib_parts_and_huge_ones_grow_their_parts_to_fit_10000() {
        assert_eq!(part_size(0), 8 * MIB);
        assert_eq!(part_size(100 * MIB), 8 * MIB);
        assert_eq!(part_size(8 * MIB * MAX_PARTS), 8 * MIB);
        let huge = 8 * MIB * MAX_PARTS + 1;
        assert_eq!(part_size(huge), 9 * MIB);
        assert!(huge.div_ceil(part_size(huge)) <= MAX_PARTS);
        let five_tib = 5 * 1024 * 1024 * MIB;
        assert!(five_tib.div_ceil(part_size(five_tib)) <= MAX_PARTS);
    }

    #[test]
    fn parts_cover_the_file_once_in_order_with_a_short_last_part() {
        let total = 20 * MIB + 5;
        let parts = parts(total);
        assert_eq!(
            parts,
            vec![(0, 8 * MIB), (8 * MIB, 8 * MIB), (16 * MIB, 4 * MIB + 5)]
        );
        assert_eq!(parts.iter().map(|(_, len)| len).sum::<u64>(), total);
        assert_eq!(super::parts(16 * MIB).len(), 2);
        assert!(super::parts(0).is_empty());
    }

    #[test]
    fn a_key_is_the_prefix_and_the_file_name() {
        let id = Uuid::nil();
        let name = "00000000-0000-0000-0000-000000000000";
        assert_eq!(object_key("", id, false), format!("{name}.csv"));
        let prefix = normalized_prefix("exports/reports");
        assert_eq!(
            object_key(&prefix, id, true),
            format!("exports/reports/{name}.csv.gz")
        );
    }

    #[test]
    fn a_prefix_ends_in_one_slash_or_is_empty() {
        assert_eq!(normalized_prefix(""), "");
        assert_eq!(normalized_prefix("/"), "");
        assert_eq!(normalized_prefix("reports"), "reports/");
        assert_eq!(normalized_prefix("reports/"), "reports/");
        assert_eq!(normalized_prefix("a/b//"), "a/b/");
    }
}
