//! `GET /health/events` (per subscription, with an overall status), `/healthz`, `/readyz`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use edubus_catalog::Catalog;
use edubus_core::{SubscriptionSpec, SubscriptionStats};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::config::HealthThresholds;
use crate::metrics::{Tally, tallies};
use crate::{Backend, Shared};

/// Overall or per-subscription health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every threshold is met.
    Ok,
    /// A threshold is exceeded (lag, DLQ growth, failures, processing time).
    Degraded,
    /// Events are not being processed: the backend cannot be read, or a lagging
    /// subscription has no live consumer.
    Failing,
}

/// Health of one subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionHealth {
    /// Subscription name.
    pub subscription: String,
    /// Its status.
    pub status: Status,
    /// Why it is not `ok`.
    pub reasons: Vec<String>,
    /// Deliveries fetched but not settled (stream pending count).
    pub pending: u64,
    /// Matching events not yet settled (consumer group lag).
    pub lag: u64,
    /// When the newest matching event was recorded.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_event_at: Option<Timestamp>,
    /// Entries in its dead-letter queue.
    pub dlq_depth: u64,
    /// Live consumers.
    pub consumers: u32,
    /// Events handled per second over the window.
    pub processing_rate: f64,
    /// Failed attempts / all attempts over the window.
    pub failure_ratio: f64,
    /// Mean handler time in seconds over the window.
    pub mean_processing_seconds: f64,
}

/// The sample rates and growth are measured against.
#[derive(Debug)]
pub(crate) struct Baseline {
    at: Instant,
    tallies: HashMap<String, Tally>,
    dlq: HashMap<String, u64>,
}

impl Baseline {
    /// A baseline taken now from the rendered metrics.
    pub(crate) fn now(rendered: &str) -> Self {
        Self {
            at: Instant::now(),
            tallies: tallies(rendered),
            dlq: HashMap::new(),
        }
    }
}

/// Health of every subscription and the worst status; `503` when failing.
#[utoipa::path(
    get, path = "/health/events", tag = "operations",
    responses(
        (status = 200, description = "`ok` or `degraded`: `{status, subscriptions, thresholds}`", body = Object),
        (status = 503, description = "`failing`", body = Object),
    )
)]
pub(crate) async fn events<B: Backend>(
    State(state): State<Shared<B>>,
) -> (StatusCode, Json<Value>) {
    let backend = state.bus.backend();
    let read = async {
        Ok::<_, edubus_core::Error>((backend.stats().await?, backend.subscriptions().await?))
    };
    let (stats, specs) = match read.await {
        Ok(read) => read,
        Err(e) => {
            let body = json!({ "status": Status::Failing, "error": e.to_string() });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
        }
    };
    crate::metrics::set_gauges(&stats);
    let now = tallies(&state.metrics.render());
    let thresholds = &state.config.health;
    let subs: Vec<SubscriptionHealth> = {
        let mut base = state
            .baseline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = base.at.elapsed().max(Duration::from_secs(1)).as_secs_f64();
        let subs = stats
            .iter()
            .map(|s| {
                let before = base
                    .tallies
                    .get(&s.subscription)
                    .copied()
                    .unwrap_or_default();
                let after = now.get(&s.subscription).copied().unwrap_or_default();
                let dlq_before = *base
                    .dlq
                    .entry(s.subscription.clone())
                    .or_insert(s.dlq_depth);
                judge(s, before, after, dlq_before, elapsed, thresholds)
            })
            .collect();
        if base.at.elapsed() >= Duration::from_secs(thresholds.window_secs) {
            *base = Baseline {
                at: Instant::now(),
                tallies: now,
                dlq: stats
                    .iter()
                    .map(|s| (s.subscription.clone(), s.dlq_depth))
                    .collect(),
            };
        }
        subs
    };
    let status = subs.iter().map(|s| s.status).max().unwrap_or(Status::Ok);
    let code = match status {
        Status::Failing => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    let streams = streams(state.bus.validator().catalog(), &specs, &subs);
    let body = json!({
        "status": status, "streams": streams, "subscriptions": subs,
        "thresholds": {
            "max_lag": thresholds.max_lag, "max_failure_ratio": thresholds.max_failure_ratio,
            "max_processing_seconds": thresholds.max_processing_seconds,
            "dlq_growth": thresholds.dlq_growth, "window_secs": thresholds.window_secs,
        },
    });
    (code, Json(body))
}

/// Per stream (catalog topic), the subscriptions reading it summed up: pending, DLQ depth,
/// consumers and rate added, the largest lag, the newest event. A subscription to every type
/// is listed under `*`.
fn streams(
    catalog: &Catalog,
    specs: &[SubscriptionSpec],
    subs: &[SubscriptionHealth],
) -> Vec<Value> {
    let mut by_stream: BTreeMap<String, Vec<&SubscriptionHealth>> = BTreeMap::new();
    for sub in subs {
        let types = specs
            .iter()
            .find(|s| s.name == sub.subscription)
            .map(|s| s.types.as_slice());
        let topics: BTreeSet<String> = match types {
            Some(types) if !types.is_empty() => types
                .iter()
                .flat_map(|t| catalog.versions(t))
                .map(|e| e.topic.clone())
                .collect(),
            _ => BTreeSet::from(["*".to_owned()]),
        };
        for topic in topics {
            by_stream.entry(topic).or_default().push(sub);
        }
    }
    by_stream
        .into_iter()
        .map(|(stream, subs)| {
            json!({
                "stream": stream,
                "subscriptions": subs.iter().map(|s| &s.subscription).collect::<Vec<_>>(),
                "pending": subs.iter().map(|s| s.pending).sum::<u64>(),
                "lag": subs.iter().map(|s| s.lag).max().unwrap_or(0),
                "last_event_at": subs.iter().filter_map(|s| s.last_event_at).max(),
                "dlq_depth": subs.iter().map(|s| s.dlq_depth).sum::<u64>(),
                "consumers": subs.iter().map(|s| s.consumers).sum::<u32>(),
                "processing_rate": subs.iter().map(|s| s.processing_rate).sum::<f64>(),
            })
        })
        .collect()
}

/// One subscription's health from the transport's stats and the counters' change.
fn judge(
    s: &SubscriptionStats,
    before: Tally,
    after: Tally,
    dlq_before: u64,
    elapsed: f64,
    t: &HealthThresholds,
) -> SubscriptionHealth {
    let consumed = (after.consumed - before.consumed).max(0.0);
    let failed = (after.failed - before.failed).max(0.0);
    let attempts = consumed + failed;
    let failure_ratio = if attempts > 0.0 {
        failed / attempts
    } else {
        0.0
    };
    let timed = after.duration_count - before.duration_count;
    let mean = if timed > 0.0 {
        (after.duration_sum - before.duration_sum) / timed
    } else {
        0.0
    };
    let mut reasons = Vec::new();
    let mut status = Status::Ok;
    if s.lag > t.max_lag {
        reasons.push(format!("lag {} > {}", s.lag, t.max_lag));
        status = if s.consumers == 0 {
            Status::Failing
        } else {
            Status::Degraded
        };
        if s.consumers == 0 {
            reasons.push("no live consumer".into());
        }
    }
    let mut degrade = |cond: bool, reason: String| {
        if cond {
            reasons.push(reason);
            status = status.max(Status::Degraded);
        }
    };
    degrade(
        t.dlq_growth && s.dlq_depth > dlq_before,
        format!(
            "dead-letter queue grew from {dlq_before} to {}",
            s.dlq_depth
        ),
    );
    degrade(
        failure_ratio > t.max_failure_ratio,
        format!("failure ratio {failure_ratio:.3} > {}", t.max_failure_ratio),
    );
    degrade(
        mean > t.max_processing_seconds,
        format!("mean processing {mean:.3}s > {}s", t.max_processing_seconds),
    );
    SubscriptionHealth {
        subscription: s.subscription.clone(),
        status,
        reasons,
        pending: s.pending,
        lag: s.lag,
        last_event_at: s.last_event_at,
        dlq_depth: s.dlq_depth,
        consumers: s.consumers,
        processing_rate: consumed / elapsed,
        failure_ratio,
        mean_processing_seconds: mean,
    }
}

/// Liveness: the process answers. Never needs a token.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{status: \"ok\"}`", body = Object))
)]
pub(crate) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the backend answers.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`{status: \"ready\", head}`", body = Object),
        (status = 503, description = "The backend cannot be read", body = Object),
    )
)]
pub(crate) async fn ready<B: Backend>(State(state): State<Shared<B>>) -> (StatusCode, Json<Value>) {
    match state.bus.backend().head().await {
        Ok(head) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "head": head })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": e.to_string() })),
        ),
    }
}
