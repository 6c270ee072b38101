//! The report store against LocalStack's S3 (no mocks): uploads, gzip, presigned
//! downloads, multipart uploads, a store that goes away during an upload,
//! `reportd storage check`, the bucket check at start, and `[storage]` validation.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::Client;
use reportd::config::{Role, Settings, StorageSettings};
use reportd::startup::Application;
use reportd::storage::{ObjectInfo, ReportStore};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::common::app::{spawn_app, test_settings, wait_until, AppOptions, TestApp};
use crate::common::proxy::SqsProxy;
use crate::common::{self, require_s3, s3_storage, unique_bucket_name};

/// The CSV the activity of [`seed_activity`] gives for user 77 over 2024-05-01..04.
const EXPECTED_CSV: &str =
    "day,events,amount_cents\r\n2024-05-01,2,350\r\n2024-05-03,1,5\r\n2024-05-04,1,7\r\n";

/// LocalStack's S3, through reportd's own client builder.
async fn s3_client() -> Client {
    require_s3().await;
    reportd::storage::s3::build_client(&s3_storage("unused")).await
}

/// Four events of user 77 in May 2024 (three days), plus one outside the range.
async fn seed_activity(app: &TestApp) {
    let client = common::pg_connect(&app.settings.database.url).await;
    for (at, amount) in [
        ("2024-05-01T08:00:00Z", 100_i64),
        ("2024-05-01T23:59:00Z", 250),
        ("2024-05-03T12:00:00Z", 5),
        ("2024-05-04T00:00:00Z", 7),
        ("2024-06-01T00:00:00Z", 1000),
    ] {
        client
            .execute(
                "INSERT INTO user_activity (user_id, occurred_at, kind, amount_cents) \
                 VALUES (77, $1::text::timestamptz, 'purchase', $2)",
                &[&at, &amount],
            )
            .await
            .expect("insert activity");
    }
}

async fn submit_report(app: &TestApp) -> Uuid {
    let (status, body) = app
        .submit(
            &serde_json::json!({"userId": 77, "startDate": "2024-05-01", "endDate": "2024-05-04"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id")
}

/// The row's `file_*` columns, read with SQL of their own.
#[derive(Debug)]
struct FileRow {
    key: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
    content_type: Option<String>,
    rows: Option<i64>,
    gzip: Option<bool>,
}

async fn file_row(app: &TestApp, id: Uuid) -> FileRow {
    let client = common::pg_connect(&app.settings.database.url).await;
    let row = client
        .query_one(
            "SELECT file_key, file_size_bytes, file_sha256, file_content_type, file_rows, file_gzip \
             FROM report_queue WHERE id = $1::text::uuid",
            &[&id.to_string()],
        )
        .await
        .expect("the report's row");
    FileRow {
        key: row.get(0),
        size: row.get(1),
        sha256: row.get(2),
        content_type: row.get(3),
        rows: row.get(4),
        gzip: row.get(5),
    }
}

async fn object_bytes(s3: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"));
    object.body.collect().await.expect("object body").to_vec()
}

async fn object_exists(s3: &Client, bucket: &str, key: &str) -> bool {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => true,
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => false,
        Err(e) => panic!("HeadObject {bucket}/{key}: {e:?}"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("the object is gzip");
    text
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

#[actix_web::test]
async fn an_s3_report_is_uploaded_recorded_and_downloaded_through_a_presigned_redirect() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3e2e");
    let storage = StorageSettings {
        prefix: "exports".into(),
        ..s3_storage(&bucket)
    };
    let app = spawn_app(AppOptions {
        storage: Some(storage),
        ..AppOptions::default()
    })
    .await;
    seed_activity(&app).await;
    let id = submit_report(&app).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;

    let row = file_row(&app, id).await;
    let key = format!("exports/{id}.csv");
    assert_eq!(row.key.as_deref(), Some(key.as_str()), "{row:?}");
    assert_eq!(row.rows, Some(3));
    assert_eq!(row.gzip, Some(false));
    assert_eq!(row.content_type.as_deref(), Some("text/csv; charset=utf-8"));
    let stored = object_bytes(&s3, &bucket, &key).await;
    assert_eq!(String::from_utf8_lossy(&stored), EXPECTED_CSV);
    assert_eq!(row.size, Some(stored.len() as i64));
    assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&stored).as_str()));

    // The report's JSON: the stable API URL, and the file with a link expiry.
    assert_eq!(
        record["reportUrl"],
        Value::String(format!("http://reportd.test:8080/reports/{id}/file"))
    );
    let file = &record["file"];
    assert_eq!(file["sizeBytes"], stored.len());
    assert_eq!(file["sha256"], sha256_hex(&stored));
    assert_eq!(file["contentType"], "text/csv; charset=utf-8");
    let expires_at: chrono::DateTime<chrono::Utc> = file["expiresAt"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("expiresAt: {file}"));
    let ttl = expires_at - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::seconds(3500) && ttl <= chrono::Duration::seconds(3600),
        "{ttl}"
    );

    // The download: a 302 to a presigned URL that names the file, and its bytes.
    let response = no_redirects()
        .get(app.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status().as_u16(), 302);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=3600"), "{location}");
    assert!(
        location.contains("response-content-disposition="),
        "{location}"
    );
    assert!(
        location.contains(&format!("/{bucket}/exports/{id}.csv")),
        "{location}"
    );
    let download = reqwest::get(&location)
        .await
        .expect("GET the presigned URL");
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(
        download
            .headers()
            .get("content-disposition")
            .and_then(|v| v.to_str().ok()),
        Some(format!("attachment; filename=\"{id}.csv\"").as_str())
    );
    let downloaded = download.bytes().await.expect("downloaded bytes");
    assert_eq!(sha256_hex(&downloaded), sha256_hex(&stored));
    app.stop().await;
}

#[actix_web::test]
async fn an_api_only_process_serves_what_a_worker_only_process_on_another_dir_uploaded() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3split");
    let api = spawn_app(AppOptions {
        roles: vec![Role::Api],
        storage: Some(s3_storage(&bucket)),
        ..AppOptions::default()
    })
    .await;
    let worker = spawn_app(AppOptions {
        roles: vec![Role::Worker],
        storage: Some(s3_storage(&bucket)),
        database_url: Some(api.settings.database.url.clone()),
        queue_name: Some(api.settings.sqs.queue_name.clone()),
        ..AppOptions::default()
    })
    .await;
    assert_ne!(api.output_dir, worker.output_dir);
    seed_activity(&api).await;
    let id = submit_report(&api).await;
    let record = api
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let recorded = record["file"]["sha256"]
        .as_str()
        .expect("a recorded sha256");
    let response = no_redirects()
        .get(api.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status().as_u16(), 302);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string();
    let download = reqwest::get(&location)
        .await
        .expect("GET the presigned URL");
    assert_eq!(download.status().as_u16(), 200);
    let bytes = download.bytes().await.expect("downloaded bytes");
    assert_eq!(sha256_hex(&bytes), recorded);
    assert_eq!(String::from_utf8_lossy(&bytes), EXPECTED_CSV);
    assert_eq!(
        object_bytes(&s3, &bucket, &format!("{id}.csv")).await,
        bytes.to_vec()
    );
    // Nothing stays on either host: the worker uploaded and removed its temporary file.
    for dir in [&api.output_dir, &worker.output_dir] {
        let files = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files, 0, "{}", dir.display());
    }
    worker.stop().await;
    api.stop().await;
}

#[actix_web::test]
async fn with_gzip_the_object_is_compressed_and_says_so() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3gz");
    let storage = StorageSettings {
        gzip: true,
        ..s3_storage(&bucket)
    };
    let app = spawn_app(AppOptions {
        storage: Some(storage),
        ..AppOptions::default()
    })
    .await;
    seed_activity(&app).await;
    let id = submit_report(&app).await;
    app.wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    let row = file_row(&app, id).await;
    let key = format!("{id}.csv.gz");
    assert_eq!(row.key.as_deref(), Some(key.as_str()), "{row:?}");
    assert_eq!(row.gzip, Some(true));
    let object = s3
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("HeadObject");
    assert_eq!(object.content_encoding(), Some("gzip"));
    assert_eq!(
        object.metadata().and_then(|m| m.get("sha256")),
        row.sha256.as_ref()
    );
    let stored = object_bytes(&s3, &bucket, &key).await;
    assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&stored).as_str()));
    assert_eq!(row.size, Some(stored.len() as i64));
    assert_eq!(gunzip(&stored), EXPECTED_CSV);
    app.stop().await;
}

#[actix_web::test]
async fn a_local_gzip_file_is_served_with_content_encoding() {
    let app = spawn_app(AppOptions {
        storage: Some(StorageSettings {
            gzip: true,
            ..StorageSettings::default()
        }),
        ..AppOptions::default()
    })
    .await;
    seed_activity(&app).await;
    let id = submit_report(&app).await;
    let record = app
        .wait_for_status(id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(record["file"]["expiresAt"], Value::Null, "{record}");
    let on_disk = std::fs::read(app.output_dir.join(format!("{id}.csv.gz"))).expect("the file");
    assert_eq!(record["file"]["sha256"], sha256_hex(&on_disk));
    let response = app
        .http
        .get(app.url(&format!("/reports/{id}/file")))
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let body = response.bytes().await.expect("body");
    assert_eq!(gunzip(&body), EXPECTED_CSV);
    app.stop().await;
}

#[actix_web::test]
async fn an_upload_cut_off_from_s3_is_handed_back_leaves_no_object_and_the_retry_completes() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3cut");
    let upstream = common::sqs_endpoint()
        .trim_start_matches("http://")
        .to_string();
    let proxy = SqsProxy::start(upstream).await;
    let storage = StorageSettings {
        endpoint_url: Some(proxy.endpoint()),
        ..s3_storage(&bucket)
    };
    let app = spawn_app(AppOptions {
        storage: Some(storage),
        workers: 1,
        ..AppOptions::default()
    })
    .await;
    seed_activity(&app).await;
    proxy.cut();
    let id = submit_report(&app).await;
    let key = format!("{id}.csv");
    wait_until("the upload to fail", Duration::from_secs(30), || async {
        let report = app.report(id).await;
        report["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("cannot store the report file"))
    })
    .await;
    let report = app.report(id).await;
    assert_ne!(report["status"], "completed", "{report}");
    // S3 unreachable is host trouble: handed back, not counted as the job's failure.
    assert_eq!(report["failures"], 0, "{report}");
    assert!(!object_exists(&s3, &bucket, &key).await);
    let leftovers: Vec<_> = std::fs::read_dir(&app.output_dir)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    proxy.restore();
    app.wait_for_status(id, "completed", Duration::from_secs(60))
        .await;
    let stored = object_bytes(&s3, &bucket, &key).await;
    assert_eq!(String::from_utf8_lossy(&stored), EXPECTED_CSV);
    app.stop().await;
}

#[actix_web::test]
async fn a_large_file_goes_up_in_parts_and_arrives_whole() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3mpu");
    let (mut settings, _tmp) = test_settings(&AppOptions::default()).await;
    settings.storage = s3_storage(&bucket);
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    let store = ReportStore::open(&settings).await;
    // 20 MiB and a bit: three parts, the last one short.
    let size = 2 * reportd::storage::s3::MULTIPART_THRESHOLD + 12_345;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(store.scratch_dir()).expect("scratch dir");
    let temp = store.scratch_dir().join("big.tmp");
    std::fs::write(&temp, &bytes).expect("write the file");
    let id = Uuid::new_v4();
    let key = store.key_for(id, false);
    let info = ObjectInfo {
        report_id: id,
        attempt: 1,
        content_type: "text/csv; charset=utf-8".into(),
        gzip: false,
        sha256: sha256_hex(&bytes),
        rows: 0,
    };
    store
        .put(&temp, &key, &info)
        .await
        .expect("multipart upload");
    assert!(
        !temp.exists(),
        "the temporary file is removed after the upload"
    );
    let stored = object_bytes(&s3, &bucket, &key).await;
    assert_eq!(stored.len(), bytes.len());
    assert_eq!(sha256_hex(&stored), info.sha256);
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(uploads.uploads().is_empty(), "{uploads:?}");
}

/// A proxy to LocalStack that drops any connection on which a request line carries
/// `refuse` (e.g. `partNumber=2`): one kind of call fails, every other one goes through.
async fn refusing_proxy(refuse: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = common::sqs_endpoint()
        .trim_start_matches("http://")
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut client_rx, mut client_tx) = inbound.into_split();
            let (mut server_rx, mut server_tx) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 64 * 1024];
                while let Ok(n) = client_rx.read(&mut buf).await {
                    let chunk = &buf[..n];
                    if n == 0 || chunk.windows(refuse.len()).any(|w| w == refuse) {
                        break;
                    }
                    if server_tx.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                // Dropping both halves closes the connection to the client too.
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[actix_web::test]
async fn a_multipart_upload_that_fails_midway_is_aborted_and_leaves_no_object() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3abort");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    let (mut settings, _tmp) = test_settings(&AppOptions::default()).await;
    settings.storage = StorageSettings {
        endpoint_url: Some(refusing_proxy(b"partNumber=2").await),
        ..s3_storage(&bucket)
    };
    let store = ReportStore::open(&settings).await;
    let size = 2 * reportd::storage::s3::MULTIPART_THRESHOLD;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(store.scratch_dir()).expect("scratch dir");
    let temp = store.scratch_dir().join("big.tmp");
    std::fs::write(&temp, &bytes).expect("write the file");
    let id = Uuid::new_v4();
    let key = store.key_for(id, false);
    let info = ObjectInfo {
        report_id: id,
        attempt: 1,
        content_type: "text/csv; charset=utf-8".into(),
        gzip: false,
        sha256: sha256_hex(&bytes),
        rows: 0,
    };
    let error = store
        .put(&temp, &key, &info)
        .await
        .expect_err("part 2 cannot arrive");
    assert!(error.to_string().contains("UploadPart"), "{error}");
    assert!(
        !temp.exists(),
        "the temporary file is removed after a failure"
    );
    assert!(!object_exists(&s3, &bucket, &key).await);
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(
        uploads.uploads().is_empty(),
        "the upload was not aborted: {uploads:?}"
    );
}

/// `reportd <args>` with a config file holding `config`.
fn reportd(args: &[&str], config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_reportd"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run reportd")
}

fn s3_config(bucket: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"probe\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\n",
        common::sqs_endpoint()
    )
}

#[actix_web::test]
async fn storage_check_passes_on_a_writable_bucket_and_names_a_missing_one() {
    let s3 = s3_client().await;
    let bucket = unique_bucket_name("s3chk");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    let output = reportd(&["storage", "check"], &s3_config(&bucket));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&bucket), "{stdout}");
    let left = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListObjectsV2");
    assert_eq!(left.key_count(), Some(0), "the probe object is deleted");

    let missing = unique_bucket_name("s3none");
    let output = reportd(&["storage", "check"], &s3_config(&missing));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&missing) && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn storage_check_of_the_local_backend_writes_in_the_output_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("reports");
    let config = format!("[report]\noutput_dir = \"{}\"\n", out.display());
    let output = reportd(&["storage", "check"], &config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.is_dir());
    assert_eq!(std::fs::read_dir(&out).expect("dir").count(), 0);
}

#[actix_web::test]
async fn serve_stops_at_once_when_the_bucket_is_missing_and_may_not_be_created() {
    require_s3().await;
    let bucket = unique_bucket_name("s3gone");
    let (mut settings, _tmp) = test_settings(&AppOptions::default()).await;
    settings.storage = StorageSettings {
        create_bucket: false,
        ..s3_storage(&bucket)
    };
    let error = match Application::build(settings).await {
        Ok(_) => panic!("serve started without its bucket"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains(&bucket) && error.contains("does not exist"),
        "{error}"
    );
}

#[test]
fn bad_storage_settings_are_config_errors_naming_the_key() {
    let env = std::collections::HashMap::new();
    for (toml, key) in [
        (
            "[storage]\npresign_ttl_s = 604801\n",
            "storage.presign_ttl_s",
        ),
        ("[storage]\nbackend = \"s3\"\n", "storage.bucket"),
        (
            "[storage]\nserver_side_encryption = \"rot13\"\n",
            "storage.server_side_encryption",
        ),
    ] {
        let error = Settings::from_toml_str(toml, &env)
            .err()
            .unwrap_or_else(|| panic!("accepted: {toml}"))
            .to_string();
        assert!(error.contains(key), "{toml}: {error}");
    }
    let output = reportd(
        &["config", "check"],
        "[storage]\nbackend = \"s3\"\nbucket = \"b-1\"\npresign_ttl_s = 700000\n",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("storage.presign_ttl_s"));
}
