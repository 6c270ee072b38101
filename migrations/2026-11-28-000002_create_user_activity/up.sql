-- Demo data for the built-in CSV generator (`reportd seed-demo` fills it).
CREATE TABLE user_activity (
    id           bigserial   PRIMARY KEY,
    user_id      bigint      NOT NULL,
    occurred_at  timestamptz NOT NULL,
    kind         varchar     NOT NULL,
    amount_cents bigint      NOT NULL
);
CREATE INDEX user_activity_user_time_idx ON user_activity (user_id, occurred_at);
