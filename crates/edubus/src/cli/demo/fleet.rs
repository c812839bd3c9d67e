//! The demo's workers running every reference flow: one, or under `--faults` one that crashes
//! mid-term and its successor; with the latency observer and the injected faults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::bail;
use edubus_core::{Envelope, LeaseOptions};
use edubus_flows::{FlowBackend, FlowConfig, Observer};
use edubus_runtime::{Bus, Worker, WorkerStats};
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Share of deliveries whose first attempt fails under `--faults`.
pub const TRANSIENT: f64 = 0.03;
/// Share of deliveries that always fail under `--faults`, ending in the dead-letter queue.
pub const PERMANENT: f64 = 0.002;

/// Leases short enough that a crashed worker's partitions move within seconds.
const SHORT_LEASES: LeaseOptions = LeaseOptions {
    ttl: Duration::from_secs(3),
    claim_after: Duration::from_secs(10),
};

/// Publish-to-handler latencies of first attempts, in microseconds.
#[derive(Debug, Default)]
pub struct Latency {
    samples: Mutex<Vec<u64>>,
    closed: AtomicBool,
}

/// The latency figures of the summary.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    /// First attempts measured.
    pub samples: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

impl Latency {
    /// The flows' observer: records now minus the envelope's time for first attempts that are
    /// not replays.
    pub fn observer(self: &Arc<Self>) -> Observer {
        let me = Arc::clone(self);
        Arc::new(move |envelope: &Envelope| me.record(envelope))
    }

    fn record(&self, envelope: &Envelope) {
        if self.closed.load(Ordering::Relaxed)
            || envelope.attempt.is_some_and(|a| a > 1)
            || envelope.replay == Some(true)
        {
            return;
        }
        let Some(sent) = envelope.time else { return };
        let micros = Timestamp::now().duration_since(sent).as_micros().max(0);
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(micros);
    }

    /// Stops recording (the demo is over) and returns the percentiles by nearest rank.
    pub fn close(&self) -> LatencySummary {
        self.closed.store(true, Ordering::Relaxed);
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner));
        samples.sort_unstable();
        LatencySummary {
            samples: samples.len(),
            p50_ms: quantile_ms(&samples, 0.50),
            p99_ms: quantile_ms(&samples, 0.99),
        }
    }
}

/// The `q` quantile of sorted microsecond samples, in milliseconds (0 without samples).
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let micros = sorted[rank.saturating_sub(1).min(last)];
    (micros as f64 / 1000.0 * 10.0).round() / 10.0
}

/// What the workers did, summed over every worker of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerTotals {
    /// Handler invocations that succeeded.
    pub handled: u64,
    /// Handler invocations that failed.
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Redeliveries skipped because the inbox had them.
    pub duplicates: u64,
}

/// The crash `--faults` causes.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    /// The school day after whose events the worker was killed (1-based).
    pub after_day: u32,
    /// The consumer id of the killed worker.
    pub crashed: String,
    /// The consumer id of the worker started in its place.
    pub successor: String,
}

struct Running {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    ended: oneshot::Receiver<edubus_core::Result<()>>,
    consumer: String,
}

/// The workers of one demo run.
pub struct Fleet<B: FlowBackend> {
    bus: Bus<B>,
    flows: FlowConfig,
    faults: bool,
    stats: Vec<Arc<WorkerStats>>,
    running: Option<Running>,
    crash: Option<Crash>,
}

impl<B: FlowBackend> Fleet<B> {
    /// Starts the first worker with every flow registered.
    pub fn start(bus: Bus<B>, flows: FlowConfig, faults: bool) -> anyhow::Result<Self> {
        let mut fleet = Self {
            bus,
            flows,
            faults,
            stats: Vec::new(),
            running: None,
            crash: None,
        };
        fleet.spawn()?;
        Ok(fleet)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let n = self.stats.len() + 1;
        let consumer = format!("demo-{}-{n}", std::process::id());
        let mut builder = edubus_flows::register(Worker::builder(self.bus.clone()), &self.flows)
            .consumer_id(&consumer);
        if self.faults {
            builder = builder.lease_options(SHORT_LEASES);
            if n == 1 {
                // The first worker is the one that will be killed: no grace, as for a process
                // that is gone, so its handlers in flight die with it.
                builder = builder.grace_period(Duration::ZERO);
            }
        }
        let worker = builder.build()?;
        self.stats.push(worker.stats());
        let (stop, stop_rx) = watch::channel(false);
        let (done, ended) = oneshot::channel();
        let task = tokio::spawn(async move {
            let result = worker.run(stopped(stop_rx)).await;
            let _ = done.send(result);
        });
        self.running = Some(Running {
            task,
            stop,
            ended,
            consumer,
        });
        Ok(())
    }

    /// Kills the running worker without a drain, as a killed process would stop, and starts
    /// another with a new consumer id; its leases expire and move to the new one.
    pub fn crash(&mut self, after_day: u32) -> anyhow::Result<()> {
        let Some(running) = self.running.take() else {
            bail!("no worker is running to crash");
        };
        running.task.abort();
        self.spawn()?;
        self.crash = Some(Crash {
            after_day,
            crashed: running.consumer,
            successor: self.consumer().to_owned(),
        });
        Ok(())
    }

    /// The crash that happened, if any.
    pub fn crashed(&self) -> Option<&Crash> {
        self.crash.as_ref()
    }

    /// The consumer id of the running worker.
    pub fn consumer(&self) -> &str {
        self.running.as_ref().map_or("", |r| r.consumer.as_str())
    }

    /// Fails when the running worker stopped by itself (it only stops on an error).
    pub fn check(&mut self) -> anyhow::Result<()> {
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        match running.ended.try_recv() {
            Ok(Ok(())) => bail!(
                "the flows' worker {} stopped unexpectedly",
                running.consumer
            ),
            Ok(Err(e)) => bail!("the flows' worker {} failed: {e}", running.consumer),
            Err(oneshot::error::TryRecvError::Closed) => {
                bail!("the flows' worker {} ended abruptly", running.consumer)
            }
            Err(oneshot::error::TryRecvError::Empty) => Ok(()),
        }
    }

    /// Counters summed over every worker of the run.
    pub fn totals(&self) -> WorkerTotals {
        let mut t = WorkerTotals::default();
        for s in &self.stats {
            t.handled += WorkerStats::get(&s.handled);
            t.failed += WorkerStats::get(&s.failed);
            t.retried += WorkerStats::get(&s.retried);
            t.dead_lettered += WorkerStats::get(&s.dead_lettered);
            t.duplicates += WorkerStats::get(&s.duplicates);
        }
        t
    }

    /// A number that grows whenever any worker finishes an attempt.
    pub fn activity(&self) -> u64 {
        let t = self.totals();
        t.handled + t.failed + t.dead_lettered + t.duplicates
    }

    /// Stops the running worker gracefully: in-flight work finishes and leases are released.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let _ = running.stop.send(true);
        match running.ended.await {
            Ok(result) => Ok(result?),
            Err(_) => bail!("the flows' worker {} ended abruptly", running.consumer),
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_in_milliseconds() {
        let samples: Vec<u64> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(quantile_ms(&samples, 0.5), 50.0);
        assert_eq!(quantile_ms(&samples, 0.99), 99.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
