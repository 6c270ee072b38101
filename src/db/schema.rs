// @generated automatically by Diesel CLI.

diesel::table! {
    report_queue (id) {
        id -> Uuid,
        payload -> Jsonb,
        status -> Varchar,
        report_url -> Nullable<Varchar>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        idempotency_key -> Nullable<Varchar>,
        request_hash -> Nullable<Varchar>,
        user_id -> Nullable<Int8>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        enqueued_at -> Nullable<Timestamptz>,
        failures -> Int4,
        send_generation -> Int4,
        cancel_requested_at -> Nullable<Timestamptz>,
        cancel_reason -> Nullable<Text>,
        max_runtime_s -> Nullable<Int4>,
        not_after -> Nullable<Timestamptz>,
        progress -> Nullable<Jsonb>,
        file_key -> Nullable<Text>,
        file_size_bytes -> Nullable<Int8>,
        file_sha256 -> Nullable<Text>,
        file_content_type -> Nullable<Text>,
        file_rows -> Nullable<Int8>,
        file_gzip -> Nullable<Bool>,
    }
}

diesel::table! {
    user_activity (id) {
        id -> Int8,
        user_id -> Int8,
        occurred_at -> Timestamptz,
        kind -> Varchar,
        amount_cents -> Int8,
    }
}

diesel::allow_tables_to_appear_in_same_query!(report_queue, user_activity);
