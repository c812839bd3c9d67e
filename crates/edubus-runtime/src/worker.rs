//! The worker: subscriptions, their handlers, lease management and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edubus_core::{
    ConsumerId, Envelope, Error, Event, EventStore, Lease, LeaseOptions, Result, SubscriptionSpec,
    Transport,
};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::bus::Bus;
use crate::handler::{ErasedHandler, HandlerContext, HandlerError, Typed, Untyped};
use crate::options::SubscriptionOptions;
use crate::partition::{PartitionHandle, run_partition};

/// Counters of what a worker did, shared with whoever holds a clone.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Handler invocations that succeeded.
    pub handled: AtomicU64,
    /// Handler invocations that failed.
    pub failed: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Redeliveries skipped because the inbox had them.
    pub duplicates: AtomicU64,
}

impl WorkerStats {
    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Handlers of one subscription, by (event name, version).
pub(crate) type Handlers<B> = HashMap<(String, u32), (String, Arc<dyn ErasedHandler<B>>)>;

/// Everything a subscription's tasks share.
pub(crate) struct SubState<B: Transport> {
    pub(crate) name: Arc<str>,
    /// The bus's producer name, shared by every handler context.
    pub(crate) source: Arc<str>,
    /// Prometheus handles by event type, so a delivery does not look them up by label.
    pub(crate) metrics: crate::delivery::TypeMetrics,
    pub(crate) options: SubscriptionOptions,
    pub(crate) handlers: Handlers<B>,
    pub(crate) bus: Bus<B>,
    pub(crate) consumer: ConsumerId,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) grace: Duration,
}

struct SubscriptionDef<B: Transport> {
    name: String,
    options: SubscriptionOptions,
    handlers: Handlers<B>,
}

/// Builds a [`Worker`]: subscriptions, each followed by its handlers.
pub struct WorkerBuilder<B: Transport> {
    bus: Bus<B>,
    subscriptions: Vec<SubscriptionDef<B>>,
    consumer: Option<String>,
    lease: LeaseOptions,
    grace: Duration,
    error: Option<String>,
}

/// Runs subscriptions until shut down.
pub struct Worker<B: Transport> {
    subscriptions: Vec<Arc<SubState<B>>>,
    lease: LeaseOptions,
    stats: Arc<WorkerStats>,
}

impl<B: EventStore + Transport> Worker<B> {
    /// Starts building a worker on `bus`.
    pub fn builder(bus: Bus<B>) -> WorkerBuilder<B> {
        WorkerBuilder {
            bus,
            subscriptions: Vec::new(),
            consumer: None,
            lease: LeaseOptions::default(),
            grace: Duration::from_secs(30),
            error: None,
        }
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Registers the subscriptions, runs them until `shutdown` resolves, then drains: no new
    /// fetches, in-flight handlers get the grace period, finished work is settled and leases
    /// are released.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for sub in &self.subscriptions {
            register(sub).await?;
            tasks.spawn(run_subscription(
                Arc::clone(sub),
                self.lease,
                stop_rx.clone(),
            ));
        }
        tokio::select! {
            () = shutdown => {}
            Some(res) = tasks.join_next() => {
                let _ = stop_tx.send(true);
                flatten(res)?;
            }
        }
        let _ = stop_tx.send(true);
        while let Some(res) = tasks.join_next().await {
            flatten(res)?;
        }
        Ok(())
    }
}

fn flatten(res: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    res.map_err(|e| Error::internal("a subscription task failed", e.to_string()))?
}

async fn register<B: EventStore + Transport>(sub: &SubState<B>) -> Result<()> {
    let mut types: Vec<String> = sub.handlers.keys().map(|(name, _)| name.clone()).collect();
    types.sort();
    types.dedup();
    let spec = SubscriptionSpec {
        name: sub.name.to_string(),
        types,
        ordered: sub.options.ordered,
        start: sub.options.start,
    };
    sub.bus.backend().register(&spec).await
}

impl<B: EventStore + Transport> WorkerBuilder<B> {
    /// Adds a subscription; the `on` calls that follow register its handlers.
    pub fn subscription(mut self, name: impl Into<String>, options: SubscriptionOptions) -> Self {
        let name = name.into();
        if self.subscriptions.iter().any(|s| s.name == name) {
            self.error
                .get_or_insert(format!("subscription `{name}` is declared twice"));
        }
        self.subscriptions.push(SubscriptionDef {
            name,
            options,
            handlers: HashMap::new(),
        });
        self
    }

    /// Handles events of type `E` in the subscription declared last.
    pub fn on<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, HandlerContext<B>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        let Some(sub) = self.subscriptions.last_mut() else {
            self.error.get_or_insert(format!(
                "handler for {} registered before any subscription",
                E::NAME
            ));
            return self;
        };
        let label = format!("{}/{}.v{}", sub.name, E::NAME, E::VERSION);
        let erased: Arc<dyn ErasedHandler<B>> = Arc::new(Typed::<E, F>::new(handler));
        if sub
            .handlers
            .insert((E::NAME.to_owned(), E::VERSION), (label, erased))
            .is_some()
        {
            self.error.get_or_insert(format!(
                "two handlers for {} v{} in `{}`",
                E::NAME,
                E::VERSION,
                sub.name
            ));
        }
        self
    }

    /// Handles, in the subscription declared last, every catalog version of the named event
    /// types (canonical names or aliases) as envelopes, without decoding them.
    pub fn on_envelope<S, F, Fut>(mut self, types: &[S], handler: F) -> Self
    where
        S: AsRef<str>,
        F: Fn(Arc<Envelope>, HandlerContext<B>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        let Some(sub) = self.subscriptions.last_mut() else {
            self.error
                .get_or_insert("envelope handler registered before any subscription".to_owned());
            return self;
        };
        let catalog = self.bus.validator().catalog();
        let mut names = std::collections::BTreeSet::new();
        for ty in types {
            match catalog.resolve(ty.as_ref()) {
                Ok(spec) => names.insert(spec.name.as_str()),
                Err(e) => {
                    self.error
                        .get_or_insert(format!("subscription `{}`: {e}", sub.name));
                    return self;
                }
            };
        }
        let erased: Arc<dyn ErasedHandler<B>> = Arc::new(Untyped(handler));
        for spec in names.into_iter().flat_map(|name| catalog.versions(name)) {
            let label = format!("{}/{}.v{}", sub.name, spec.name, spec.version);
            let entry = (label, Arc::clone(&erased));
            if sub
                .handlers
                .insert((spec.name.clone(), spec.version), entry)
                .is_some()
            {
                self.error.get_or_insert(format!(
                    "two handlers for {} v{} in `{}`",
                    spec.name, spec.version, sub.name
                ));
            }
        }
        self
    }

    /// Names this consumer (stable across restarts); by default host, process id and a
    /// random suffix.
    pub fn consumer_id(mut self, id: impl Into<String>) -> Self {
        self.consumer = Some(id.into());
        self
    }

    /// Lease timing (ttl and stalled-claim threshold come from here and `claim_after`).
    pub fn lease_options(mut self, lease: LeaseOptions) -> Self {
        self.lease = lease;
        self
    }

    /// How long in-flight handlers may run after shutdown was requested (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Checks the declarations and builds the worker.
    pub fn build(self) -> Result<Worker<B>> {
        if let Some(error) = self.error {
            return Err(Error::invalid(error));
        }
        if let Some(empty) = self.subscriptions.iter().find(|s| s.handlers.is_empty()) {
            return Err(Error::invalid(format!(
                "subscription `{}` has no handler",
                empty.name
            )));
        }
        let consumer = ConsumerId(self.consumer.unwrap_or_else(default_consumer_id));
        let stats = Arc::new(WorkerStats::default());
        let subscriptions = self
            .subscriptions
            .into_iter()
            .map(|def| {
                Arc::new(SubState {
                    name: Arc::from(def.name.as_str()),
                    source: Arc::from(self.bus.source()),
                    metrics: crate::delivery::TypeMetrics::default(),
                    permits: Arc::new(Semaphore::new(def.options.concurrency)),
                    options: def.options,
                    handlers: def.handlers,
                    bus: self.bus.clone(),
                    consumer: consumer.clone(),
                    stats: Arc::clone(&stats),
                    grace: self.grace,
                })
            })
            .collect();
        Ok(Worker {
            subscriptions,
            lease: self.lease,
            stats,
        })
    }

    /// Builds the worker and runs it until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.build()?.run(shutdown).await
    }
}

fn default_consumer_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edubus".to_owned());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// Keeps the consumer's leases and one partition task per lease until stopped.
async fn run_subscription<B: EventStore + Transport>(
    sub: Arc<SubState<B>>,
    lease_opts: LeaseOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let options = LeaseOptions {
        claim_after: sub.options.claim_after,
        ..lease_opts
    };
    let beat = (options.ttl / 3).max(Duration::from_millis(10));
    let mut running: HashMap<u32, PartitionHandle> = HashMap::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let busy: Vec<_> = running
            .iter()
            .filter_map(|(p, h)| h.busy_since().map(|t| (*p, t)))
            .collect();
        match sub
            .bus
            .backend()
            .rebalance(&sub.name, &sub.consumer, options, &busy)
            .await
        {
            Ok(leases) => apply_leases(&sub, &mut running, leases),
            Err(e) => {
                tracing::warn!(subscription = %sub.name, error = %e, "rebalance failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = stop.changed() => {}
        }
    }
    drain(&sub, running).await
}

fn apply_leases<B: EventStore + Transport>(
    sub: &Arc<SubState<B>>,
    running: &mut HashMap<u32, PartitionHandle>,
    leases: Vec<Lease>,
) {
    let held: HashMap<u32, &Lease> = leases.iter().map(|l| (l.partition, l)).collect();
    running.retain(|partition, handle| {
        let keep = held
            .get(partition)
            .is_some_and(|l| l.epoch == handle.epoch());
        if !keep {
            handle.lost();
        }
        keep
    });
    for lease in leases {
        running
            .entry(lease.partition)
            .or_insert_with(|| run_partition(Arc::clone(sub), lease));
    }
}

/// Stops every partition task, waits for them (they drain within the grace period) and
/// releases what they held.
async fn drain<B: EventStore + Transport>(
    sub: &SubState<B>,
    running: HashMap<u32, PartitionHandle>,
) -> Result<()> {
    let mut leases = Vec::new();
    for (_, handle) in running {
        if let Some(lease) = handle.stop().await {
            leases.push(lease);
        }
    }
    sub.bus.backend().release(&sub.consumer, &leases).await
}
