//! Migrations against a real PostgreSQL (see tests/common for the server and overrides).

use crate::common;

use std::collections::BTreeSet;

use common::{database_url, drop_database, fresh_database, migrated_database, pg_connect};

/// The migrations in `migrations/`, one directory each.
fn migration_count() -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::read_dir(&dir)
        .expect("migrations/")
        .filter(|entry| entry.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_a_second_run_applies_nothing() {
    let url = fresh_database().await;
    let first = reportd::db::run_migrations(&url).await.expect("first run");
    assert_eq!(
        first.len(),
        migration_count(),
        "expected every migration applied on an empty database, got {first:?}"
    );
    let second = reportd::db::run_migrations(&url).await.expect("second run");
    assert!(
        second.is_empty(),
        "second run applied migrations again: {second:?}"
    );
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migration_runs_apply_each_migration_exactly_once() {
    let url = fresh_database().await;
    let (a, b) = tokio::join!(
        reportd::db::run_migrations(&url),
        reportd::db::run_migrations(&url)
    );
    let (a, b) = (a.expect("run a"), b.expect("run b"));
    let mut all = a.clone();
    all.extend(b.clone());
    all.sort();
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        distinct.len(),
        "a migration ran twice: {a:?} / {b:?}"
    );
    assert_eq!(all.len(), migration_count(), "runs applied {a:?} / {b:?}");
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_check_constraint_rejects_an_unknown_status() {
    let url = migrated_database().await;
    let client = pg_connect(&url).await;
    let err = client
        .execute(
            "INSERT INTO report_queue (id, payload, status) VALUES (gen_random_uuid(), '{}'::jsonb, 'done')",
            &[],
        )
        .await
        .expect_err("status 'done' was accepted");
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {err:?}"));
    let described = format!(
        "{} (constraint {:?})",
        db_err.message(),
        db_err.constraint()
    );
    assert!(
        described.contains("report_queue_status_check"),
        "error does not mention report_queue_status_check: {described}"
    );
    assert_eq!(
        db_err.code(),
        &tokio_postgres::error::SqlState::CHECK_VIOLATION
    );

    // Every status of the vocabulary is accepted.
    for status in reportd::db::models::JobStatus::ALL {
        client
            .execute(
                "INSERT INTO report_queue (id, payload, status) VALUES (gen_random_uuid(), '{}'::jsonb, $1)",
                &[&status.as_str()],
            )
            .await
            .unwrap_or_else(|e| panic!("status {:?} rejected: {e:?}", status.as_str()));
    }
    drop(client);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rows_default_to_in_queue_with_zero_attempts() {
    let url = migrated_database().await;
    let client = pg_connect(&url).await;
    let row = client
        .query_one(
            "INSERT INTO report_queue (id, payload) VALUES (gen_random_uuid(), '{}'::jsonb) \
             RETURNING status, attempts, enqueued_at IS NULL AS unenqueued, created_at = updated_at AS same",
            &[],
        )
        .await
        .expect("insert with defaults");
    assert_eq!(row.get::<_, String>("status"), "in-queue");
    assert_eq!(row.get::<_, i32>("attempts"), 0);
    assert!(row.get::<_, bool>("unenqueued"));
    assert!(row.get::<_, bool>("same"));
    drop(client);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_allows_many_nulls_but_rejects_a_duplicate_key() {
    let url = migrated_database().await;
    let client = pg_connect(&url).await;
    let insert = "INSERT INTO report_queue (id, payload, idempotency_key) VALUES (gen_random_uuid(), '{}'::jsonb, $1)";
    for _ in 0..3 {
        client
            .execute(insert, &[&None::<String>])
            .await
            .expect("a NULL idempotency key must never collide");
    }
    client
        .execute(insert, &[&Some("key-1")])
        .await
        .expect("first use of key-1");
    client
        .execute(insert, &[&Some("key-2")])
        .await
        .expect("a different key");
    let err = client
        .execute(insert, &[&Some("key-1")])
        .await
        .expect_err("duplicate idempotency key was accepted");
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {err:?}"));
    assert_eq!(
        db_err.code(),
        &tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
        "{db_err:?}"
    );
    assert_eq!(
        db_err.constraint(),
        Some("report_queue_idempotency_key_key"),
        "{db_err:?}"
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM report_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 5);
    drop(client);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_activity_table_exists_and_accepts_rows() {
    let url = migrated_database().await;
    let client = pg_connect(&url).await;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name = 'user_activity')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exists, "user_activity table is missing");
    let id: i64 = client
        .query_one(
            "INSERT INTO user_activity (user_id, occurred_at, kind, amount_cents) \
             VALUES (42, now(), 'purchase', 1999) RETURNING id",
            &[],
        )
        .await
        .expect("insert into user_activity")
        .get(0);
    assert!(id >= 1);
    drop(client);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_database_if_missing_creates_once_then_reports_present() {
    let url = database_url(&common::unique_database_name());
    let created = reportd::db::create_database_if_missing(&url)
        .await
        .expect("first call");
    assert!(created, "a new database name must be created");
    let created_again = reportd::db::create_database_if_missing(&url)
        .await
        .expect("second call");
    assert!(
        !created_again,
        "an existing database must be reported as present"
    );
    // The database really exists and is usable.
    let client = pg_connect(&url).await;
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_migrations_against_a_missing_database_fails_naming_the_connection() {
    let url = database_url(&common::unique_database_name());
    let err = reportd::db::run_migrations(&url)
        .await
        .expect_err("migrating a missing database must fail");
    let message = err.to_string();
    assert!(
        message.contains("cannot connect to PostgreSQL"),
        "unexpected message: {message}"
    );
}

/// One column as `src/db/schema.rs` declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeclaredColumn {
    name: String,
    sql_type: String,
    nullable: bool,
}

/// Parses the `diesel::table!` blocks of schema.rs into `(table, columns in order)`.
fn parse_schema_rs(text: &str) -> Vec<(String, Vec<DeclaredColumn>)> {
    let mut tables = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("diesel::table!") {
            continue;
        }
        // `report_queue (id) {`, possibly after attribute lines.
        let header = lines
            .by_ref()
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("use "))
            .expect("table header after diesel::table!");
        let name = header
            .split(|c: char| c == '(' || c.is_whitespace())
            .next()
            .unwrap()
            .to_string();
        let mut columns = Vec::new();
        for line in lines.by_ref() {
            if line.starts_with('}') {
                break;
            }
            if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
                continue;
            }
            let (column, ty) = line
                .trim_end_matches(',')
                .split_once("->")
                .unwrap_or_else(|| panic!("unexpected line in table {name}: {line:?}"));
            let ty = ty.trim();
            let (sql_type, nullable) = match ty
                .strip_prefix("Nullable<")
                .and_then(|t| t.strip_suffix('>'))
            {
                Some(inner) => (inner.to_string(), true),
                None => (ty.to_string(), false),
            };
            columns.push(DeclaredColumn {
                name: column.trim().to_string(),
                sql_type,
                nullable,
            });
        }
        tables.push((name, columns));
    }
    tables
}

/// The PostgreSQL `data_type` (information_schema) a diesel SQL type stands for.
fn pg_data_type(diesel_type: &str) -> &'static str {
    match diesel_type {
        "Uuid" => "uuid",
        "Jsonb" => "jsonb",
        "Json" => "json",
        "Varchar" => "character varying",
        "Text" => "text",
        "Int2" => "smallint",
        "Int4" => "integer",
        "Int8" => "bigint",
        "Bool" => "boolean",
        "Float4" => "real",
        "Float8" => "double precision",
        "Timestamptz" => "timestamp with time zone",
        "Timestamp" => "timestamp without time zone",
        "Date" => "date",
        "Bytea" => "bytea",
        other => panic!("extend pg_data_type() in tests/migrations.rs for diesel type {other}"),
    }
}

#[test]
fn schema_rs_parser_reads_tables_columns_types_and_nullability() {
    let text = "// @generated\n\
        diesel::table! {\n    a (id) {\n        id -> Uuid,\n        note -> Nullable<Text>,\n    }\n}\n\
        diesel::table! {\n    b (id) {\n        id -> Int8,\n    }\n}\n\
        diesel::allow_tables_to_appear_in_same_query!(a, b);\n";
    let col = |name: &str, ty: &str, nullable: bool| DeclaredColumn {
        name: name.into(),
        sql_type: ty.into(),
        nullable,
    };
    assert_eq!(
        parse_schema_rs(text),
        vec![
            (
                "a".to_string(),
                vec![col("id", "Uuid", false), col("note", "Text", true)]
            ),
            ("b".to_string(), vec![col("id", "Int8", false)]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_rs_matches_the_migrated_database() {
    let schema_path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/db/schema.rs");
    let text = std::fs::read_to_string(schema_path).expect("read src/db/schema.rs");
    let declared = parse_schema_rs(&text);
    let declared_names: BTreeSet<String> = declared.iter().map(|(t, _)| t.clone()).collect();
    for expected in ["report_queue", "user_activity"] {
        assert!(
            declared_names.contains(expected),
            "schema.rs declares no table {expected}: {declared_names:?}"
        );
    }

    let url = migrated_database().await;
    let client = pg_connect(&url).await;

    // Every table the migrations create is in schema.rs, and the other way round.
    let actual_tables: BTreeSet<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
             AND table_name NOT LIKE '\\_\\_diesel%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        declared_names, actual_tables,
        "tables in schema.rs differ from the migrated database"
    );

    let mut problems = Vec::new();
    for (table, columns) in &declared {
        let rows = client
            .query(
                "SELECT column_name::text, is_nullable::text, data_type::text \
                 FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[table],
            )
            .await
            .unwrap();
        let actual: Vec<(String, bool, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1) == "YES",
                    r.get::<_, String>(2),
                )
            })
            .collect();
        let declared_order: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let actual_order: Vec<&str> = actual.iter().map(|(n, _, _)| n.as_str()).collect();
        if declared_order != actual_order {
            problems.push(format!(
                "{table}: column order differs\n    schema.rs: {declared_order:?}\n    database:  {actual_order:?}"
            ));
            continue;
        }
        for (column, (_, nullable, data_type)) in columns.iter().zip(&actual) {
            if column.nullable != *nullable {
                problems.push(format!(
                    "{table}.{}: schema.rs says nullable={}, database says nullable={nullable}",
                    column.name, column.nullable
                ));
            }
            let expected_type = pg_data_type(&column.sql_type);
            if expected_type != data_type {
                problems.push(format!(
                    "{table}.{}: schema.rs type {} means {expected_type}, database has {data_type}",
                    column.name, column.sql_type
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "src/db/schema.rs is out of date with migrations/:\n  {}",
        problems.join("\n  ")
    );
    drop(client);
    drop_database(&url).await;
}
