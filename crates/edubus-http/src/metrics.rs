//! Prometheus metrics: the process-wide recorder, `GET /metrics`, and the counters
//! `/health/events` derives rates from.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use edubus_core::SubscriptionStats;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::{Backend, Shared};

/// Events published, by `event_type`.
pub const PUBLISHED: &str = "eventbus_published_total";
/// Events handled successfully, by `event_type` and `subscription`.
pub const CONSUMED: &str = "eventbus_consumed_total";
/// Failed handler attempts, by `event_type` and `subscription`.
pub const FAILED: &str = "eventbus_failed_total";
/// Retries scheduled, by `event_type` and `subscription`.
pub const RETRY: &str = "eventbus_retry_total";
/// Events dead-lettered, by `event_type` and `subscription`.
pub const DLQ: &str = "eventbus_dlq_total";
/// Handler time per attempt in seconds, by `event_type` and `subscription`.
pub const DURATION: &str = "eventbus_processing_duration_seconds";
/// Gauge: matching events a subscription has not settled.
pub const LAG: &str = "eventbus_consumer_lag";
/// Gauge: deliveries fetched but not settled.
pub const PENDING: &str = "eventbus_pending";
/// Gauge: entries in a subscription's dead-letter queue.
pub const DLQ_DEPTH: &str = "eventbus_dlq_depth";
/// Gauge: live consumers of a subscription.
pub const CONSUMERS: &str = "eventbus_consumers";

/// Histogram buckets of [`DURATION`], in seconds (5 s is the seed's alert threshold).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once) and returns a
/// handle that renders it. If another recorder was installed first, the handle renders nothing.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(Matcher::Full(DURATION.into()), &BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(PUBLISHED, "Events published");
    metrics::describe_counter!(CONSUMED, "Events consumed (handled successfully)");
    metrics::describe_counter!(FAILED, "Failed handler attempts");
    metrics::describe_counter!(RETRY, "Retry attempts scheduled");
    metrics::describe_counter!(DLQ, "Events moved to a dead-letter queue");
    metrics::describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "Processing time per attempt"
    );
    metrics::describe_gauge!(LAG, "Matching events not yet settled by the subscription");
    metrics::describe_gauge!(PENDING, "Deliveries fetched but not settled");
    metrics::describe_gauge!(DLQ_DEPTH, "Entries in the subscription's dead-letter queue");
    metrics::describe_gauge!(CONSUMERS, "Live consumers of the subscription");
}

/// Sets the lag, pending, DLQ and consumer gauges from the transport's view.
pub(crate) fn set_gauges(stats: &[SubscriptionStats]) {
    for s in stats {
        let sub = s.subscription.clone();
        metrics::gauge!(LAG, "subscription" => sub.clone()).set(s.lag as f64);
        metrics::gauge!(PENDING, "subscription" => sub.clone()).set(s.pending as f64);
        metrics::gauge!(DLQ_DEPTH, "subscription" => sub.clone()).set(s.dlq_depth as f64);
        metrics::gauge!(CONSUMERS, "subscription" => sub).set(f64::from(s.consumers));
    }
}

/// Prometheus text exposition of every edubus metric, gauges read from the backend now.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub(crate) async fn scrape<B: Backend>(
    State(state): State<Shared<B>>,
) -> Result<Response, ApiError> {
    set_gauges(&state.bus.backend().stats().await?);
    state.metrics.run_upkeep();
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Totals of one subscription's handling since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Tally {
    pub(crate) consumed: f64,
    pub(crate) failed: f64,
    pub(crate) duration_sum: f64,
    pub(crate) duration_count: f64,
}

/// Per subscription, the totals in a rendered exposition.
pub(crate) fn tallies(text: &str) -> HashMap<String, Tally> {
    let mut out: HashMap<String, Tally> = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("eventbus_")) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let (Some(sub), Ok(value)) = (label(labels, "subscription"), value.trim().parse::<f64>())
        else {
            continue;
        };
        let tally = out.entry(sub.to_owned()).or_default();
        match name {
            CONSUMED => tally.consumed += value,
            FAILED => tally.failed += value,
            n if n == format!("{DURATION}_sum") => tally.duration_sum += value,
            n if n == format!("{DURATION}_count") => tally.duration_count += value,
            _ => {}
        }
    }
    out
}

/// The value of label `name` in `a="x",b="y"`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_sum_counters_per_subscription() {
        let text = "\
# TYPE eventbus_consumed_total counter
eventbus_consumed_total{event_type=\"a\",subscription=\"s1\"} 3
eventbus_consumed_total{event_type=\"b\",subscription=\"s1\"} 2
eventbus_failed_total{event_type=\"a\",subscription=\"s2\"} 1
eventbus_processing_duration_seconds_sum{event_type=\"a\",subscription=\"s1\"} 0.5
eventbus_processing_duration_seconds_count{event_type=\"a\",subscription=\"s1\"} 5
eventbus_published_total{event_type=\"a\"} 9
";
        let t = tallies(text);
        assert_eq!(t["s1"].consumed, 5.0);
        assert_eq!(t["s1"].duration_sum, 0.5);
        assert_eq!(t["s1"].duration_count, 5.0);
        assert_eq!(t["s2"].failed, 1.0);
        assert_eq!(t.len(), 2);
    }
}
