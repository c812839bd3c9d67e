//! Latency percentiles and the summary `edubus bench` prints.

use serde::Serialize;

use super::raw::Raw;
use crate::cli::outln;

/// Latency samples in microseconds; percentiles by nearest rank over the sorted samples.
#[derive(Debug, Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// Samples as recorded.
    pub fn new(samples: Vec<u64>) -> Self {
        let mut samples = samples;
        samples.sort_unstable();
        Self(samples)
    }

    /// The `q` quantile (0.0 to 1.0) in milliseconds; 0 without samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let Some(last) = self.0.len().checked_sub(1) else {
            return 0.0;
        };
        // Nearest rank: the smallest sample with at least q of the samples at or below it.
        let rank = (q.clamp(0.0, 1.0) * self.0.len() as f64).ceil() as usize;
        micros_to_ms(self.0[rank.saturating_sub(1).min(last)])
    }

    /// The mean in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let sum: u128 = self.0.iter().map(|&s| u128::from(s)).sum();
        sum as f64 / self.0.len() as f64 / 1000.0
    }
}

fn micros_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What was run and what it measured; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Backend benchmarked.
    pub backend: &'static str,
    /// `publish`, `e2e` or `relay`.
    pub mode: &'static str,
    /// What the latency figures measure (empty when none are taken).
    pub latency: &'static str,
    /// Events published.
    pub events: u64,
    /// Events published before, left out of the figures.
    pub warmup: u64,
    /// Events per `publish_batch` call.
    pub batch: usize,
    /// Concurrent publishing tasks.
    pub publishers: usize,
    /// Distinct partition keys.
    pub keys: usize,
    /// Subscriptions delivered to (e2e), else 0.
    pub subscriptions: usize,
    /// Per-key ordered delivery (e2e).
    pub ordered: bool,
    /// Target publish rate in events/s; 0 = as fast as possible.
    pub rate: f64,
    /// Size of one event's `data` as JSON, in bytes.
    pub payload_bytes: usize,
    /// Wall time of the measured run.
    pub seconds: f64,
    /// Events per second over `seconds`.
    pub events_per_s: f64,
    /// Wall time of publishing alone (relay: of the untimed appends).
    pub publish_seconds: f64,
    /// Handler invocations measured (e2e: events x subscriptions; relay: events relayed).
    pub deliveries: u64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest latency.
    pub max_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// The Redis key prefix of the run (redis and production backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The PostgreSQL schema of the run (redis and production backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The raw server under the same load (redis publish and e2e, relay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Raw>,
}

impl Summary {
    /// Fills the latency fields from `latencies`.
    pub fn with_latencies(mut self, latencies: &Latencies) -> Self {
        self.p50_ms = latencies.quantile_ms(0.50);
        self.p90_ms = latencies.quantile_ms(0.90);
        self.p99_ms = latencies.quantile_ms(0.99);
        self.p999_ms = latencies.quantile_ms(0.999);
        self.max_ms = latencies.quantile_ms(1.0);
        self.mean_ms = latencies.mean_ms();
        self
    }

    /// Prints the summary for people.
    pub fn print(&self) {
        let rate = match self.rate {
            r if r > 0.0 => format!("{r:.0} events/s target"),
            _ => "as fast as possible".into(),
        };
        outln!(
            "{} {}: {} events in batches of {}, {} publisher(s), {} keys, ~{} B payload, {rate}",
            self.backend,
            self.mode,
            self.events,
            self.batch,
            self.publishers,
            self.keys,
            self.payload_bytes
        );
        if self.warmup > 0 {
            outln!(
                "  after {} warm-up events, left out of the figures",
                self.warmup
            );
        }
        if self.mode == "e2e" {
            let order = if self.ordered { "ordered" } else { "unordered" };
            outln!(
                "  {} subscription(s), {order}, no-op handlers: {} deliveries",
                self.subscriptions,
                self.deliveries
            );
            outln!("  published in {:.3} s", self.publish_seconds);
        }
        if self.mode == "relay" {
            outln!(
                "  appended in {:.3} s (not timed), then relayed:",
                self.publish_seconds
            );
        }
        outln!("  {:.3} s, {:.0} events/s", self.seconds, self.events_per_s);
        if let Some(raw) = &self.raw {
            outln!(
                "  raw {}: {:.0} events/s, edubus at {:.1}% of it ({} B per entry)",
                raw.tool,
                raw.events_per_s,
                raw.ratio * 100.0,
                raw.entry_bytes
            );
            outln!("    {}", raw.command);
        }
        if self.latency.is_empty() {
            return;
        }
        outln!(
            "  latency ({}): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, mean {:.3} ms",
            self.latency,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.mean_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::new((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(l.quantile_ms(0.5), 50.0);
        assert_eq!(l.quantile_ms(0.99), 99.0);
        assert_eq!(l.quantile_ms(1.0), 100.0);
        assert_eq!(l.quantile_ms(0.0), 1.0);
        assert!((l.mean_ms() - 50.5).abs() < 1e-9);
        assert_eq!(Latencies::default().quantile_ms(0.5), 0.0);
    }
}
