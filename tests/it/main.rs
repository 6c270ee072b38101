//! reportd's integration tests: one binary, so the shared helpers in `common` compile
//! once and every test sees the same build of them. Each module is one area of the
//! daemon; `cargo test --test it <module>::` runs one area.

mod common;

mod api;
mod bench_smoke;
mod cli;
mod config;
mod console;
mod consumer;
mod control;
mod dlq;
mod fairness;
mod fate;
mod health;
mod migrations;
mod queues;
mod reconcile;
mod report_types;
mod reports_db;
mod status_actor;
mod storage;
mod tls;
mod upkeep;
mod webhooks;
