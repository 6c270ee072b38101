//! What the health endpoint knows about every actor beyond its own answer: restarts
//! (which survive the restart itself), restart storms, heartbeats and the job in hand.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Restart-storm limits (`[supervisor]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct StormLimit {
    /// More restarts than this within `window` put an actor in a restart storm (unhealthy).
    pub max_restarts: usize,
    /// How far back restarts count towards a storm (`supervisor.window_s`).
    pub window: Duration,
}

#[derive(Debug)]
struct Entry {
    name: String,
    kind: &'static str,
    restarts: u32,
    recent_restarts: VecDeque<Instant>,
    last_restart_cause: Option<String>,
    last_heartbeat: Instant,
    job: Option<(Uuid, Instant)>,
}

/// The shared table; cheap to clone.
#[derive(Clone)]
pub struct ActorRegistry {
    entries: Arc<Mutex<Vec<Entry>>>,
    limit: StormLimit,
    metrics: Arc<Metrics>,
}

/// One actor as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ActorView {
    pub name: String,
    pub kind: &'static str,
    pub restarts: u32,
    /// More than `max_restarts` restarts within the window: flapping, not healthy.
    pub restart_storm: bool,
    pub last_restart_cause: Option<String>,
    /// Seconds since the last restart (the console marks a recent one); None: never.
    pub last_restart_age_s: Option<f64>,
    pub heartbeat_age_s: f64,
    pub job: Option<Uuid>,
    pub job_age_s: Option<f64>,
}

/// An actor's handle into the registry.
#[derive(Clone)]
pub struct ActorSlot {
    registry: ActorRegistry,
    index: usize,
}

impl ActorRegistry {
    /// An empty registry that judges restart storms by `limit` and counts restarts in
    /// `metrics` (`reportd_actor_restarts_total`, by actor kind).
    pub fn new(limit: StormLimit, metrics: Arc<Metrics>) -> Self {
        Self {
            entries: Arc::new(Mutex::new(Vec::new())),
            limit,
            metrics,
        }
    }

    /// Adds an actor and returns its slot.
    pub fn register(&self, name: impl Into<String>, kind: &'static str) -> ActorSlot {
        // Creates the restart counter's series at 0, so dashboards see it before the first restart.
        self.metrics.actor_restarts.with_label_values(&[kind]);
        let mut entries = self.lock();
        entries.push(Entry {
            name: name.into(),
            kind,
            restarts: 0,
            recent_restarts: VecDeque::new(),
            last_restart_cause: None,
            last_heartbeat: Instant::now(),
            job: None,
        });
        ActorSlot {
            registry: self.clone(),
            index: entries.len() - 1,
        }
    }

    /// Every actor, in registration order.
    pub(crate) fn snapshot(&self) -> Vec<ActorView> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|e| ActorView {
                name: e.name.clone(),
                kind: e.kind,
                restarts: e.restarts,
                restart_storm: e
                    .recent_restarts
                    .iter()
                    .filter(|t| now.duration_since(**t) <= self.limit.window)
                    .count()
                    > self.limit.max_restarts,
                last_restart_cause: e.last_restart_cause.clone(),
                // The newest restart is the queue's back: pruning only drops old ones.
                last_restart_age_s: e
                    .recent_restarts
                    .back()
                    .map(|at| now.duration_since(*at).as_secs_f64()),
                heartbeat_age_s: now.duration_since(e.last_heartbeat).as_secs_f64(),
                job: e.job.map(|(id, _)| id),
                job_age_s: e
                    .job
                    .map(|(_, since)| now.duration_since(since).as_secs_f64()),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding this lock cannot leave an entry half-written in a way
        // that matters for health figures, so a poisoned lock is used as is.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ActorSlot {
    fn with(&self, f: impl FnOnce(&mut Entry)) {
        let mut entries = self.registry.lock();
        if let Some(entry) = entries.get_mut(self.index) {
            f(entry);
        }
    }

    /// The actor is alive (called from its timer).
    pub fn heartbeat(&self) {
        self.with(|e| e.last_heartbeat = Instant::now());
    }

    /// The job the actor works on, or none.
    pub(crate) fn set_job(&self, job: Option<Uuid>) {
        self.with(|e| e.job = job.map(|id| (id, Instant::now())));
    }

    /// Counts a restart and logs its cause; warns on a restart storm.
    pub(crate) fn restarted(&self, cause: &str) {
        let limit = self.registry.limit;
        let mut storm = false;
        let mut name = String::new();
        let mut kind = "";
        self.with(|e| {
            let now = Instant::now();
            e.restarts += 1;
            e.recent_restarts.push_back(now);
            while e
                .recent_restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > limit.window)
            {
                e.recent_restarts.pop_front();
            }
            storm = e.recent_restarts.len() > limit.max_restarts;
            e.last_restart_cause = Some(cause.to_string());
            e.last_heartbeat = now;
            e.job = None;
            name = e.name.clone();
            kind = e.kind;
        });
        self.registry
            .metrics
            .actor_restarts
            .with_label_values(&[kind])
            .inc();
        if storm {
            tracing::error!(actor = %name, cause, "restart storm: more than {} restarts in {:?}", limit.max_restarts, limit.window);
        } else {
            tracing::warn!(actor = %name, cause, "actor restarted");
        }
    }
}
