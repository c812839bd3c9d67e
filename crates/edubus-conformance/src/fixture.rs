//! A case's world: one storage, a bus on it, and in-process workers running scripts.

use std::sync::Arc;
use std::time::Duration;

use edubus_core::LeaseOptions;
use edubus_runtime::{Bus, RetryPolicy, SubscriptionOptions, Worker, WorkerStats};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::check::eventually;
use crate::events::{self, Published};
use crate::harness::{Harness, Observation};
use crate::script::Script;

/// Producer name of every event the suite publishes.
pub const SOURCE: &str = "edubus-conformance";

/// Lease timing of test workers: short, so takeovers happen within a second.
pub fn test_lease() -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_millis(900),
        claim_after: Duration::from_secs(600),
    }
}

/// Subscription options of test workers: `attempts` attempts with millisecond backoff.
pub fn fast_options(attempts: u32) -> SubscriptionOptions {
    let retry = RetryPolicy::attempts(attempts)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(10));
    SubscriptionOptions::default().with_retry(retry)
}

/// A bus over `backend` checking the real catalog.
pub fn bus<B: crate::harness::Backend>(backend: B) -> anyhow::Result<Bus<B>> {
    Ok(Bus::new(backend, edubus_events::catalog(), SOURCE)?)
}

/// How an in-process worker runs one subscription.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    /// Subscription name.
    pub subscription: String,
    /// Its options.
    pub options: SubscriptionOptions,
    /// Consumer id.
    pub consumer: String,
    /// Lease timing.
    pub lease: LeaseOptions,
    /// Shutdown grace period.
    pub grace: Duration,
}

impl WorkerSetup {
    /// Subscription `subscription`, 5 fast attempts, short leases, consumer `consumer`.
    pub fn new(subscription: &str, consumer: &str) -> Self {
        Self {
            subscription: subscription.to_owned(),
            options: fast_options(5),
            consumer: consumer.to_owned(),
            lease: test_lease(),
            grace: Duration::from_secs(10),
        }
    }

    /// Replaces the subscription options.
    pub fn with_options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }

    /// Replaces the grace period.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// A worker running in a task of the case's runtime.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<edubus_core::Result<()>>,
    /// The worker's counters.
    pub stats: Arc<WorkerStats>,
}

impl Running {
    /// Requests a graceful shutdown without waiting for it.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down gracefully and returns what `Worker::run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.request_stop();
        Ok(self.join.await??)
    }

    /// Whether `run` has returned.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// One storage of a case, with a bus on its first backend instance.
pub struct Fixture<H: Harness> {
    /// The harness.
    pub harness: Arc<H>,
    /// The storage.
    pub storage: H::Storage,
    /// A bus on the first instance.
    pub bus: Bus<H::Backend>,
}

impl<H: Harness> Fixture<H> {
    /// A fresh storage and a bus on it.
    pub async fn new(harness: &Arc<H>) -> anyhow::Result<Self> {
        let (storage, backend) = harness.backend().await?;
        Ok(Self {
            harness: Arc::clone(harness),
            storage,
            bus: bus(backend)?,
        })
    }

    /// The backend of the first instance.
    pub fn backend(&self) -> &H::Backend {
        self.bus.backend()
    }

    /// A bus on a second instance of the same storage (another "process").
    pub async fn reopen(&self) -> anyhow::Result<Bus<H::Backend>> {
        bus(self.harness.open(&self.storage).await?)
    }

    /// Publishes `(key, seq)` events in one batch.
    pub async fn publish(&self, events: &[(u64, u64)]) -> anyhow::Result<Vec<Published>> {
        events::publish(&self.bus, events).await
    }

    /// Starts a worker on `bus` running `script`.
    pub fn start_on(
        &self,
        bus: &Bus<H::Backend>,
        setup: WorkerSetup,
        script: &Arc<Script>,
    ) -> anyhow::Result<Running> {
        let builder = Worker::builder(bus.clone())
            .subscription(setup.subscription, setup.options)
            .consumer_id(setup.consumer)
            .lease_options(setup.lease)
            .grace_period(setup.grace);
        let worker = script.attach(builder, &self.harness).build()?;
        let stats = worker.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            stop: Some(stop),
            join,
            stats,
        })
    }

    /// Starts a worker on the first instance running `script`.
    pub fn start(&self, setup: WorkerSetup, script: &Arc<Script>) -> anyhow::Result<Running> {
        self.start_on(&self.bus, setup, script)
    }

    /// The committed observations of `subscription`, in commit order.
    pub async fn observations(&self, subscription: &str) -> anyhow::Result<Vec<Observation>> {
        let all = self.harness.observations(&self.storage).await?;
        Ok(all
            .into_iter()
            .filter(|o| o.subscription == subscription)
            .collect())
    }

    /// Waits until `subscription` has at least `count` observations; returns them all.
    pub async fn await_observations(
        &self,
        subscription: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Observation>> {
        let what = format!("{count} observations of `{subscription}`");
        eventually(&what, timeout, || async {
            let seen = self.observations(subscription).await?;
            Ok((seen.len() >= count).then_some(seen))
        })
        .await
    }
}
