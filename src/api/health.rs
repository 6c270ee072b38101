//! Health endpoints: `/health/live` (is the process doing its job), `/health/ready`
//! (can it serve: database and SQS reachable), `/health` (the details).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::AppState;
use crate::actors::messages::{GetPollerStats, GetStatusStats};

/// How long an actor gets to answer a health question before it counts as stuck.
const ACTOR_TIMEOUT: Duration = Duration::from_secs(2);

/// The poller's answer, or why there is none.
async fn poller_view(
    state: &AppState,
) -> Option<Result<crate::actors::messages::PollerStats, String>> {
    let poller = state.poller.as_ref()?;
    Some(
        match tokio::time::timeout(ACTOR_TIMEOUT, poller.send(GetPollerStats)).await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(format!("poller mailbox closed: {e}")),
            Err(_) => Err("poller did not answer within 2 s".into()),
        },
    )
}

/// Whether the poll loop has ticked recently enough: it ticks at least once a second,
/// so several wait periods without one mean it silently stopped.
fn poller_alive(state: &AppState, stats: &crate::actors::messages::PollerStats) -> bool {
    let limit = 3.0 * f64::from(state.settings.sqs.wait_time_s.max(1)) + 5.0;
    stats.stopped || stats.last_tick_age_s.is_none_or(|age| age < limit)
}

/// `GET /health/live`: 503 when the poller loop stopped ticking or an actor is stuck.
/// Does not depend on SQS or the database.
pub async fn live(state: web::Data<AppState>) -> HttpResponse {
    let status_ok = tokio::time::timeout(ACTOR_TIMEOUT, state.status.send(GetStatusStats))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let poller = poller_view(&state).await;
    let poller_ok = match &poller {
        None => true,
        Some(Ok(stats)) => poller_alive(&state, stats),
        Some(Err(_)) => false,
    };
    let body = json!({
        "status": if status_ok && poller_ok { "ok" } else { "unhealthy" },
        "statusActor": if status_ok { "running" } else { "stuck" },
        "poller": match &poller { None => json!(null), Some(Ok(_)) if poller_ok => json!("running"), Some(Ok(_)) => json!("stalled"), Some(Err(e)) => json!(e) },
    });
    if status_ok && poller_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn dependencies(state: &AppState) -> (Value, bool) {
    let database = match tokio::time::timeout(ACTOR_TIMEOUT, crate::db::ping(&state.pool)).await {
        Ok(Ok(())) => json!({"reachable": true}),
        Ok(Err(e)) => json!({"reachable": false, "error": e.to_string()}),
        Err(_) => json!({"reachable": false, "error": "no answer within 2 s"}),
    };
    let sqs = match tokio::time::timeout(ACTOR_TIMEOUT, state.queue.depth(&state.queue.queue_url))
        .await
    {
        Ok(Ok(depth)) => json!({"reachable": true, "queue": depth}),
        Ok(Err(e)) => json!({"reachable": false, "error": e.to_string()}),
        Err(_) => json!({"reachable": false, "error": "no answer within 2 s"}),
    };
    let ok = database["reachable"] == json!(true) && sqs["reachable"] == json!(true);
    (json!({"database": database, "sqs": sqs}), ok)
}

/// `GET /health/ready`: database and SQS reachable, actors answering.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (deps, deps_ok) = dependencies(&state).await;
    let poller = poller_view(&state).await;
    let poller_ok = match &poller {
        None => true,
        Some(Ok(stats)) => poller_alive(&state, stats) && stats.consecutive_errors == 0,
        Some(Err(_)) => false,
    };
    let ok = deps_ok && poller_ok;
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "dependencies": deps});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /health`: every actor and dependency.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let (deps, deps_ok) = dependencies(&state).await;
    let status = match tokio::time::timeout(ACTOR_TIMEOUT, state.status.send(GetStatusStats)).await
    {
        Ok(Ok(stats)) => {
            json!({"name": "status", "kind": "StatusActor", "state": "running", "stats": stats})
        }
        _ => json!({"name": "status", "kind": "StatusActor", "state": "stuck"}),
    };
    let status_ok = status["state"] == json!("running");
    let poller = poller_view(&state).await;
    let (poller_json, poller_ok) = match &poller {
        None => (json!(null), true),
        Some(Ok(stats)) => {
            let ok = poller_alive(&state, stats) && stats.consecutive_errors == 0;
            (
                json!({"name": "poller", "kind": "PollerActor", "state": if stats.stopped { "stopped" } else { "running" }, "healthy": ok, "stats": stats}),
                ok,
            )
        }
        Some(Err(e)) => (
            json!({"name": "poller", "kind": "PollerActor", "state": "stuck", "error": e}),
            false,
        ),
    };
    let ok = deps_ok && status_ok && poller_ok;
    let body = json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "roles": state.settings.server.roles,
        "actors": [status, poller_json],
        "dependencies": deps,
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
