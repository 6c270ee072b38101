// @generated automatically by Diesel CLI.

diesel::table! {
    processes (id) {
        id -> Uuid,
        host -> Text,
        pid -> Int4,
        roles -> Text,
        version -> Text,
        started_at -> Timestamptz,
        heartbeat_at -> Timestamptz,
    }
}

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
        callback_url -> Nullable<Text>,
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

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        report_id -> Uuid,
        endpoint -> Text,
        event -> Text,
        payload -> Jsonb,
        state -> Text,
        attempts -> Int4,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamptz,
        retry_until -> Timestamptz,
        created_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_sweep (only_row) {
        only_row -> Bool,
        swept_until -> Timestamptz,
    }
}

diesel::joinable!(webhook_deliveries -> report_queue (report_id));

diesel::allow_tables_to_appear_in_same_query!(
    processes,
    report_queue,
    user_activity,
    webhook_deliveries,
    webhook_sweep,
);
