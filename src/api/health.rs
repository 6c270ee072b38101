//! Health endpoints: `/health/live` (is the process doing its job), `/health/ready`
//! (can it serve: database and SQS reachable, actors answering), `/health` (every actor
//! and dependency in detail).
//!
//! Each actor is asked with a message and a short timeout, so a stuck mailbox shows as
//! an actor that does not answer, not as a hung health check.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::AppState;
use crate::actors::poller::{GetPollerStats, PollerStats};
use crate::actors::registry::ActorView;
use crate::actors::status::{GetStatusStats, StatusStats};
use crate::actors::worker::Ping;

/// How long an actor gets to answer before it counts as stuck.
const ACTOR_TIMEOUT: Duration = Duration::from_secs(1);
/// A StatusActor flush running longer than this means the database is not keeping up.
const SLOW_FLUSH_S: f64 = 5.0;

async fn ask<M, A>(addr: &actix::Addr<A>, msg: M) -> Option<M::Result>
where
    A: actix::Actor + actix::Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Send,
{
    match tokio::time::timeout(ACTOR_TIMEOUT, addr.send(msg)).await {
        Ok(Ok(answer)) => Some(answer),
        _ => None,
    }
}

/// The StatusActor's figures, and whether it is stuck. An actor that does not answer
/// within the timeout but whose flushes keep finishing has a full mailbox (heavy load):
/// busy, not stuck.
async fn status_stats(state: &AppState) -> (StatusStats, WriterState) {
    let stuck_after = stuck_flush_s(state.settings.database.statement_timeout_ms);
    if let Some(stats) = ask(&state.status, GetStatusStats).await {
        let running = stats.flush_running_s.unwrap_or(0.0);
        let writer = if running > stuck_after {
            WriterState::Stuck
        } else if running > SLOW_FLUSH_S {
            WriterState::Busy
        } else {
            WriterState::Running
        };
        return (stats, writer);
    }
    let stats = state.status_probe.stats();
    let progressing = stats.last_flush_age_s.is_some_and(|age| age < SLOW_FLUSH_S)
        || stats
            .flush_running_s
            .is_some_and(|running| running < stuck_after);
    (
        stats,
        if progressing {
            WriterState::Busy
        } else {
            WriterState::Stuck
        },
    )
}

/// A flush running longer than this is stuck, not slow: every statement of it is bounded
/// by `database.statement_timeout_ms`, and a flush runs a handful of them (plus one
/// retry each when the batch fails).
fn stuck_flush_s(statement_timeout_ms: u64) -> f64 {
    (statement_timeout_ms as f64 / 1e3 * 3.0).max(30.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    Running,
    /// Slow flushes or a full mailbox; writes still commit.
    Busy,
    /// No answer and no flush finishing.
    Stuck,
}

async fn poller_stats(state: &AppState) -> Option<Option<PollerStats>> {
    let poller = state.poller.as_ref()?;
    Some(ask(poller, GetPollerStats).await)
}

/// The poll loop ticks at least once a second; several long-poll periods without a
/// tick mean it silently stopped (the classic failure of SQS consumers).
fn poller_ticking(state: &AppState, stats: &PollerStats) -> bool {
    let limit = 3.0 * f64::from(state.settings.sqs.wait_time_s.max(1)) + 5.0;
    stats.stopped || stats.last_tick_age_s.is_none_or(|age| age < limit)
}

fn view_of<'a>(views: &'a [ActorView], name: &str) -> Option<&'a ActorView> {
    views.iter().find(|v| v.name == name)
}

fn actor_state(answered: bool, view: Option<&ActorView>) -> &'static str {
    match (answered, view) {
        (false, _) => "stuck",
        (true, Some(v)) if v.restart_storm => "restarting",
        _ => "running",
    }
}

#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    operation_id = "liveness",
    summary = "Liveness: the poll loop ticks and no actor is stuck",
    responses(
        (status = 200, description = "Healthy", body = super::schemas::HealthStatus),
        (status = 503, description = "Not healthy: the body says which part", body = super::schemas::HealthStatus),
        (status = 405, response = super::schemas::MethodNotAllowed),
    ),
    security(())
)]
/// `GET /health/live`: 503 when the poll loop stopped ticking or an actor is stuck.
/// Does not depend on SQS or the database being reachable.
pub(crate) async fn live(state: web::Data<AppState>) -> HttpResponse {
    let status_ok = status_stats(&state).await.1 != WriterState::Stuck;
    let (poller_ok, poller) = match poller_stats(&state).await {
        None => (true, json!(null)),
        Some(Some(stats)) if poller_ticking(&state, &stats) => (true, json!("running")),
        Some(Some(stats)) => (
            false,
            json!(format!(
                "stalled: no poll-loop tick for {:.0} s",
                stats.last_tick_age_s.unwrap_or(0.0)
            )),
        ),
        Some(None) => (false, json!("stuck: did not answer within 1 s")),
    };
    let ok = status_ok && poller_ok;
    let body = json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "statusActor": if status_ok { "running" } else { "stuck" },
        "poller": poller,
    });
    respond(ok, body)
}

/// Database and SQS reachability (SQS: a live call, bounded by a short timeout).
async fn dependencies(state: &AppState) -> (Value, bool) {
    let database =
        match tokio::time::timeout(Duration::from_secs(2), crate::db::ping(&state.pool)).await {
            Ok(Ok(())) => json!({"reachable": true}),
            Ok(Err(e)) => json!({"reachable": false, "error": e.to_string()}),
            Err(_) => json!({"reachable": false, "error": "no answer within 2 s"}),
        };
    let pool = state.pool.status();
    let sqs = match tokio::time::timeout(
        Duration::from_secs(2),
        state.queue.depth(&state.queue.queue_url),
    )
    .await
    {
        Ok(Ok(_)) => json!({"reachable": true}),
        Ok(Err(e)) => json!({"reachable": false, "error": e.to_string()}),
        Err(_) => json!({"reachable": false, "error": "no answer within 2 s"}),
    };
    let ok = database["reachable"] == json!(true) && sqs["reachable"] == json!(true);
    (
        json!({
            "database": database,
            "pool": {"size": pool.size, "available": pool.available, "maxSize": pool.max_size, "waiting": pool.waiting},
            "sqs": sqs,
        }),
        ok,
    )
}

#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    operation_id = "readiness",
    summary = "Readiness: database and SQS reachable, the poller receiving",
    responses(
        (status = 200, description = "Healthy", body = super::schemas::HealthStatus),
        (status = 503, description = "Not healthy: the body says which part", body = super::schemas::HealthStatus),
        (status = 405, response = super::schemas::MethodNotAllowed),
    ),
    security(())
)]
/// `GET /health/ready`: database and SQS reachable, the poller receiving without errors.
pub(crate) async fn ready(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (deps, deps_ok) = dependencies(&state).await;
    let (poller_ok, poller_error) = match poller_stats(&state).await {
        None => (true, None),
        Some(Some(stats)) => (
            poller_ticking(&state, &stats) && stats.consecutive_errors == 0,
            stats.last_error.clone(),
        ),
        Some(None) => (false, Some("poller did not answer".to_string())),
    };
    let ok = deps_ok && poller_ok;
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "dependencies": deps, "pollerError": poller_error});
    respond(ok, redacted_for(&req, &state, body))
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "health",
    summary = "Every actor and dependency in detail",
    responses(
        (status = 200, description = "Healthy", body = super::schemas::HealthStatus),
        (status = 503, description = "Not healthy: the body says which part", body = super::schemas::HealthStatus),
        (status = 405, response = super::schemas::MethodNotAllowed),
    ),
    security(())
)]
/// `GET /health`: every actor and dependency.
pub(crate) async fn health(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (body, healthy) = health_body(&state).await;
    respond(healthy, redacted_for(&req, &state, body))
}

/// The `/health` document before redaction, and whether all is healthy; the console's
/// Actors page renders the same document.
pub(crate) async fn health_body(state: &AppState) -> (Value, bool) {
    let views = state.registry.snapshot();
    let (status, status_ok) = status_actor_entry(state, &views).await;
    let mut actors = vec![status];
    let mut healthy = status_ok;
    if let Some((poller, poller_ok)) = poller_entry(state, &views).await {
        actors.push(poller);
        healthy &= poller_ok;
    }
    let (workers, workers_ok) = worker_entries(state, &views).await;
    actors.extend(workers);
    healthy &= workers_ok;
    let (deps, deps_ok) = dependencies(state).await;
    healthy &= deps_ok;
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "roles": state.settings.server.roles,
        "actors": actors,
        "dependencies": deps,
        "queueDepths": state.depths.latest(),
        "queueTable": state.db_hygiene.latest(),
        "webhooks": webhook_backlog(state).await,
    });
    (body, healthy)
}

/// The webhook backlog (pending deliveries, read from the partial due index); null
/// while webhooks are off. Informational: a backlog is the receivers' trouble, not ours.
async fn webhook_backlog(state: &AppState) -> Value {
    if !state.settings.webhooks.enabled() {
        return Value::Null;
    }
    let count = async {
        let mut conn = crate::db::connection(&state.pool).await?;
        Ok::<_, crate::db::DbError>(crate::db::webhooks::backlog(&mut conn).await?)
    };
    match tokio::time::timeout(Duration::from_secs(2), count).await {
        Ok(Ok(pending)) => json!({"backlog": pending}),
        Ok(Err(e)) => json!({"backlog": null, "error": e.to_string()}),
        Err(_) => json!({"backlog": null, "error": "no answer within 2 s"}),
    }
}

/// The StatusActor's entry and whether it is healthy.
async fn status_actor_entry(state: &AppState, views: &[ActorView]) -> (Value, bool) {
    let (stats, writer) = status_stats(state).await;
    let view = view_of(views, "status");
    let status_state = match writer {
        WriterState::Busy => "busy",
        WriterState::Stuck => "stuck",
        WriterState::Running => actor_state(true, view),
    };
    let entry = json!({
        "name": "status", "kind": "StatusActor", "state": status_state,
        "restarts": view.map_or(0, |v| v.restarts),
        "lastRestartCause": view.and_then(|v| v.last_restart_cause.clone()),
        "heartbeatAgeS": view.map(|v| v.heartbeat_age_s),
        "pendingWrites": stats.pending,
        "lastFlushMs": stats.last_flush_ms,
        "lastBatchSize": stats.last_batch_size,
        "flushRunningS": stats.flush_running_s,
    });
    (entry, status_state == "running")
}

/// The PollerActor's entry and whether it is healthy; None without the worker role.
async fn poller_entry(state: &AppState, views: &[ActorView]) -> Option<(Value, bool)> {
    let poller = poller_stats(state).await?;
    let view = view_of(views, "poller");
    let poller_state = match &poller {
        Some(stats) if stats.stopped => "stopped",
        Some(stats) if !poller_ticking(state, stats) => "stalled",
        _ => actor_state(poller.is_some(), view),
    };
    let receiving = poller.as_ref().is_some_and(|s| s.consecutive_errors == 0);
    let ok = matches!(poller_state, "running" | "stopped") && receiving;
    let entry = json!({
        "name": "poller", "kind": "PollerActor", "state": poller_state,
        "restarts": view.map_or(0, |v| v.restarts),
        "lastRestartCause": view.and_then(|v| v.last_restart_cause.clone()),
        "heartbeatAgeS": view.map(|v| v.heartbeat_age_s),
        "lastReceiveAgeS": poller.as_ref().and_then(|s| s.last_receive_age_s),
        "consecutiveErrors": poller.as_ref().map(|s| s.consecutive_errors),
        "lastError": poller.as_ref().and_then(|s| s.last_error.clone()),
        "idleWorkers": poller.as_ref().map(|s| s.idle_workers),
        "busyWorkers": poller.as_ref().map(|s| s.busy_workers),
        "waitingForDatabase": poller.as_ref().map(|s| s.waiting_for_database),
        "waitingAtCap": poller.as_ref().map(|s| s.waiting_at_cap),
    });
    Some((entry, ok))
}

/// One entry per ReportWorker, and whether all of them are healthy.
async fn worker_entries(state: &AppState, views: &[ActorView]) -> (Vec<Value>, bool) {
    let answers = join_all(state.workers.iter().map(|w| ask(w, Ping))).await;
    let mut healthy = true;
    let entries = answers
        .iter()
        .enumerate()
        .map(|(index, answer)| {
            let name = format!("worker-{index}");
            let view = view_of(views, &name);
            let worker_state = actor_state(answer.is_some(), view);
            healthy &= worker_state == "running";
            json!({
                "name": name, "kind": "ReportWorker", "state": worker_state,
                "restarts": view.map_or(0, |v| v.restarts),
                "lastRestartCause": view.and_then(|v| v.last_restart_cause.clone()),
                "heartbeatAgeS": view.map(|v| v.heartbeat_age_s),
                "job": view.and_then(|v| v.job),
                "jobAgeS": view.and_then(|v| v.job_age_s),
            })
        })
        .collect();
    (entries, healthy)
}

/// Fields that name jobs or carry raw error text (an SQS error names the queue URL, and
/// with it the AWS account). Probes need neither, so callers without a token get them as
/// `null` when tokens are configured.
const TOKEN_ONLY_FIELDS: &[&str] = &[
    "job",
    "lastError",
    "lastRestartCause",
    "error",
    "pollerError",
];

fn redacted_for(req: &HttpRequest, state: &AppState, mut body: Value) -> Value {
    if !super::is_trusted(req, &state.settings.api.tokens) {
        redact(&mut body);
        body["redacted"] = json!("job ids and error text need a bearer token");
    }
    body
}

/// Sets every [`TOKEN_ONLY_FIELDS`] field, at any depth, to null.
fn redact(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, field) in object.iter_mut() {
                if TOKEN_ONLY_FIELDS.contains(&key.as_str()) {
                    *field = Value::Null;
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn respond(ok: bool, body: Value) -> HttpResponse {
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_nulls_job_ids_and_error_text_at_any_depth_and_keeps_the_rest() {
        let mut body = json!({
            "status": "unhealthy",
            "actors": [
                {"name": "worker-0", "state": "running", "job": "6f1c…", "jobAgeS": 3.0},
                {"name": "poller", "lastError": "https://sqs…/123456789012/q", "consecutiveErrors": 2},
            ],
            "dependencies": {"sqs": {"reachable": false, "error": "account 123456789012"}},
            "queueDepths": {"main": {"error": "raw"}},
        });
        redact(&mut body);
        assert_eq!(
            body,
            json!({
                "status": "unhealthy",
                "actors": [
                    {"name": "worker-0", "state": "running", "job": null, "jobAgeS": 3.0},
                    {"name": "poller", "lastError": null, "consecutiveErrors": 2},
                ],
                "dependencies": {"sqs": {"reachable": false, "error": null}},
                "queueDepths": {"main": {"error": null}},
            })
        );
    }
}
