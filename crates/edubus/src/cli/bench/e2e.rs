//! End-to-end mode: subscriptions with no-op handlers that record, per delivery, the handler's
//! start time minus the time the event was handed to publish (its envelope `time`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use edubus_core::{EventStore, StartFrom, Transport};
use edubus_events::AttendanceUpdated;
use edubus_runtime::{Bus, HandlerContext, SubscriptionOptions, Worker};
use jiff::Timestamp;
use tokio::time::Instant;

/// What the no-op handlers saw.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Handler invocations.
    pub handled: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

impl Recorder {
    /// Records one delivery that started at `now` for an event handed over at `sent`.
    fn record(&self, sent: Option<Timestamp>, now: Timestamp) {
        let micros = sent.map_or(0, |sent| {
            let d = now.duration_since(sent);
            u64::try_from(d.as_micros()).unwrap_or(0)
        });
        self.lock().push(micros);
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the deliveries recorded so far (a warm-up's).
    pub fn reset(&self) {
        self.lock().clear();
        self.handled.store(0, Ordering::Relaxed);
    }

    /// Takes the samples recorded so far.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The names of this run's subscriptions (unique per run, so a run against an existing
/// deployment starts fresh at the end of its log).
pub fn subscription_names(count: usize) -> Vec<String> {
    let run = Timestamp::now().as_millisecond();
    (0..count).map(|i| format!("bench-{run}-{i}")).collect()
}

/// A worker with one no-op `attendance.updated` handler per subscription.
pub fn worker<B: EventStore + Transport>(
    bus: &Bus<B>,
    names: &[String],
    ordered: bool,
    recorder: &Arc<Recorder>,
) -> edubus_core::Result<Worker<B>> {
    let mut options = SubscriptionOptions::default().with_start(StartFrom::End);
    if !ordered {
        options = options.unordered();
    }
    let mut builder = Worker::builder(bus.clone()).grace_period(Duration::from_secs(5));
    for name in names {
        let recorder = Arc::clone(recorder);
        builder = builder
            .subscription(name.clone(), options.clone())
            .on::<AttendanceUpdated, _, _>(move |_event, ctx: HandlerContext<B>| {
                let recorder = Arc::clone(&recorder);
                async move {
                    recorder.record(ctx.envelope().time, Timestamp::now());
                    Ok(())
                }
            });
    }
    builder.build()
}

/// Waits until every subscription holds all its partitions, so publishing does not race the
/// first rebalance.
pub async fn wait_ready<B: Transport>(backend: &B, names: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = backend.stats().await?;
        let ready = names.iter().all(|name| {
            stats
                .iter()
                .any(|s| &s.subscription == name && s.leased_partitions >= backend.partitions())
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bench subscriptions did not get their partitions within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `expected` deliveries ran and every subscription settled them (no lag, nothing
/// pending); fails when nothing progresses for 60 s.
pub async fn wait_settled<B: Transport>(
    backend: &B,
    names: &[String],
    recorder: &Recorder,
    expected: u64,
    on_progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let mut last = (0, Instant::now());
    loop {
        let handled = recorder.handled.load(Ordering::Relaxed);
        on_progress(handled);
        if handled >= expected && settled(backend, names).await? {
            return Ok(());
        }
        if handled != last.0 {
            last = (handled, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("delivery stalled at {handled} of {expected} deliveries");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn settled<B: Transport>(backend: &B, names: &[String]) -> anyhow::Result<bool> {
    let stats = backend.stats().await?;
    Ok(names.iter().all(|name| {
        stats
            .iter()
            .any(|s| &s.subscription == name && s.lag == 0 && s.pending == 0)
    }))
}
