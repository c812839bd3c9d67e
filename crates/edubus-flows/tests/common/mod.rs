//! Runs the flows on a real deployment: the embedded SQLite file, or PostgreSQL + Redis
//! servers started by `edubus-testsupport`.

#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edubus_core::{DeadLetterEntry, DeliveryState, Envelope, Event, ReadQuery};
use edubus_flows::{DocRef, FlowBackend, FlowConfig, Table};
use edubus_postgres::{PgConfig, RelayOptions};
use edubus_redis::{Production, RedisConfig};
use edubus_runtime::{Bus, SubscriptionOptions, Worker};
use edubus_sqlite::{SqliteBackend, SqliteConfig};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A deployment with the flows running on one worker.
pub struct Env<B: FlowBackend> {
    pub bus: Bus<B>,
    replayed: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    worker: Option<JoinHandle<edubus_core::Result<()>>>,
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// Flow settings for tests: quick retries.
pub fn config() -> FlowConfig {
    FlowConfig {
        options: SubscriptionOptions::default().with_retry(
            edubus_runtime::RetryPolicy::attempts(3)
                .with_backoff(Duration::from_millis(10), Duration::from_millis(50)),
        ),
        ..FlowConfig::default()
    }
}

pub async fn embedded(config: FlowConfig) -> Env<SqliteBackend> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = SqliteConfig::default()
        .with_path(dir.path().join("edubus.db"))
        .with_poll_interval(Duration::from_millis(2));
    let backend = SqliteBackend::open(sqlite).await.expect("open SQLite");
    Env::start(backend, config, Some(Box::new(dir))).await
}

pub async fn production(config: FlowConfig) -> Env<Production> {
    let schema = edubus_testsupport::postgres().schema("flows").await;
    let routes: BTreeMap<String, String> = edubus_events::catalog()
        .events()
        .map(|e| (e.name.clone(), e.topic.clone()))
        .collect();
    let pg = PgConfig::new(schema.url()).with_partitions(4);
    let redis = RedisConfig::new(edubus_testsupport::redis().url())
        .with_prefix(edubus_testsupport::unique_prefix("flows"))
        .with_partitions(4)
        .with_block(Duration::from_millis(50))
        .with_routes(routes);
    let relay = RelayOptions {
        poll_interval: Duration::from_millis(100),
        ..RelayOptions::default()
    };
    let backend = Production::open(pg, redis, Some(relay))
        .await
        .expect("open PostgreSQL + Redis");
    Env::start(backend, config, Some(Box::new(schema))).await
}

impl<B: FlowBackend> Env<B> {
    async fn start(
        backend: B,
        mut config: FlowConfig,
        keep: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        let replayed = Arc::new(AtomicU64::new(0));
        let inner = config.observer.take();
        let counter = Arc::clone(&replayed);
        config.observer = Some(Arc::new(move |env: &Envelope| {
            if env.replay == Some(true) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(inner) = &inner {
                inner(env);
            }
        }));
        backend.prepare().await.expect("read-model tables");
        let bus = Bus::new(backend, edubus_events::catalog(), "flows-test").expect("bus");
        let worker = edubus_flows::register(Worker::builder(bus.clone()), &config)
            .build()
            .expect("worker");
        let (stop, mut rx) = watch::channel(false);
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        Self {
            bus,
            replayed,
            stop,
            worker: Some(handle),
            _keep: keep,
        }
    }

    /// Publishes `event` and returns its envelope as stored.
    pub async fn publish<E: Event>(&self, event: &E) -> Envelope {
        let env = self.bus.envelope(event).expect("envelope");
        self.bus
            .publish_envelope(env.clone())
            .await
            .expect("publish");
        env
    }

    /// Publishes `event` as caused by `cause` (same correlation id, causation = cause's id).
    pub async fn publish_caused<E: Event>(&self, event: &E, cause: &Envelope) -> Envelope {
        let env = self.bus.envelope(event).expect("envelope").caused_by(cause);
        self.bus
            .publish_envelope(env.clone())
            .await
            .expect("publish");
        env
    }

    /// Every stored event of `event_type`, in log order.
    pub async fn events(&self, event_type: &str) -> Vec<Envelope> {
        let query = ReadQuery {
            types: vec![event_type.to_owned()],
            limit: 100_000,
            ..ReadQuery::default()
        };
        self.bus
            .backend()
            .read(query)
            .await
            .expect("read")
            .into_iter()
            .map(|r| r.envelope)
            .collect()
    }

    /// Waits (up to 30 s) until `event_type` has at least `n` stored events; returns them.
    pub async fn wait_events(&self, event_type: &str, n: usize) -> Vec<Envelope> {
        wait_for(async || {
            let found = self.events(event_type).await;
            if found.len() >= n {
                Ok(found)
            } else {
                Err(format!("{n} `{event_type}`, found {}", found.len()))
            }
        })
        .await
    }

    /// Waits (up to 30 s) until every stored event is handled or dead-lettered by each
    /// subscription that takes its type (delivery states, so events still in the outbox or
    /// queued on the transport count as pending).
    pub async fn settle(&self) {
        wait_for(async || {
            let recorded = self
                .bus
                .backend()
                .read(ReadQuery {
                    limit: 100_000,
                    ..ReadQuery::default()
                })
                .await
                .expect("read");
            let states = self.bus.backend().states(&recorded).await.expect("states");
            let open: Vec<String> = recorded
                .iter()
                .zip(&states)
                .flat_map(|(r, row)| {
                    row.iter()
                        .filter(|(_, s)| {
                            !matches!(
                                s,
                                DeliveryState::Handled
                                    | DeliveryState::DeadLettered { .. }
                                    | DeliveryState::NotSubscribed
                            )
                        })
                        .map(move |(sub, s)| format!("{} in {sub}: {s:?}", r.envelope.event_type))
                })
                .collect();
            if open.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "every event to settle, {} open, first {:?}",
                    open.len(),
                    &open[..open.len().min(5)]
                ))
            }
        })
        .await;
    }

    /// Replays every event of `subscription` twice and waits until the second round has
    /// started on each: per-key order then proves the first round settled. Returns the
    /// number of events one round replays.
    pub async fn replay_settled(&self, subscription: &str) -> u64 {
        let before = self.replayed.load(Ordering::SeqCst);
        let replay =
            || edubus_core::Replay::replay(self.bus.backend(), subscription, 0, None, "test");
        let first = replay().await.expect("replay");
        let second = replay().await.expect("replay");
        assert_eq!(first, second, "both rounds replay the same events");
        wait_for(async || {
            let seen = self.replayed.load(Ordering::SeqCst) - before;
            if seen >= first + second {
                Ok(())
            } else {
                Err(format!(
                    "{} replayed deliveries of {subscription}, saw {seen}",
                    first + second
                ))
            }
        })
        .await;
        first
    }

    /// Waits (up to 30 s) until `subscription` has settled each of `events`, and asserts it
    /// handled every one: a dead letter, or an event the subscription does not take, fails
    /// at once.
    pub async fn handled(&self, subscription: &str, events: &[&Envelope]) {
        let mut recorded = Vec::new();
        for e in events {
            let stored = edubus_core::EventStore::get(self.bus.backend(), &e.id)
                .await
                .expect("read the store")
                .unwrap_or_else(|| panic!("{} {} is not stored", e.event_type, e.id));
            recorded.push(stored);
        }
        wait_for(async || {
            let states = self
                .bus
                .backend()
                .states(&recorded)
                .await
                .expect("delivery states");
            let mut open = Vec::new();
            for (e, row) in events.iter().zip(&states) {
                let state = row.iter().find(|(sub, _)| sub == subscription);
                match state.map(|(_, s)| s) {
                    Some(DeliveryState::Handled) => {}
                    Some(
                        s @ (DeliveryState::DeadLettered { .. } | DeliveryState::NotSubscribed),
                    ) => {
                        panic!(
                            "{subscription} did not handle {} {}: {s:?}",
                            e.event_type, e.id
                        )
                    }
                    s => open.push(format!("{} {}: {s:?}", e.event_type, e.id)),
                }
            }
            if open.is_empty() {
                Ok(())
            } else {
                Err(format!("{subscription} to handle {open:?}"))
            }
        })
        .await;
    }

    /// Waits (up to 30 s) until `subscription`'s dead-letter queue holds at least `n`
    /// entries; returns them, oldest first.
    pub async fn dead_letters(&self, subscription: &str, n: usize) -> Vec<DeadLetterEntry> {
        wait_for(async || {
            let dead = self
                .bus
                .backend()
                .list(Some(subscription), 0, 100)
                .await
                .expect("dead letters");
            if dead.len() >= n {
                Ok(dead)
            } else {
                Err(format!(
                    "{n} dead letters of {subscription}, found {}",
                    dead.len()
                ))
            }
        })
        .await
    }

    /// Waits (up to 30 s) until a read-model document exists; returns it, decoded.
    pub async fn wait_doc<T: DeserializeOwned>(&self, table: Table, key: impl Into<String>) -> T {
        let key = key.into();
        wait_for(async || {
            self.doc(table, key.clone())
                .await
                .ok_or_else(|| format!("document `{key}` of {}", table.sql_name()))
        })
        .await
    }

    /// A read-model document, decoded.
    pub async fn doc<T: DeserializeOwned>(
        &self,
        table: Table,
        key: impl Into<String>,
    ) -> Option<T> {
        let value: Option<Value> = self
            .bus
            .backend()
            .doc(DocRef::new(table, key))
            .await
            .expect("read model");
        value.map(|v| serde_json::from_value(v).expect("document shape"))
    }

    /// Stops the worker gracefully.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(worker) = self.worker.take() {
            worker.await.expect("worker task").expect("worker");
        }
    }
}

/// Polls `probe` every 20 ms until it returns `Ok`, and returns that value; fails the test
/// after 30 s with the last `Err`, which says what is still awaited.
pub async fn wait_for<T>(mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(awaited) => assert!(Instant::now() < deadline, "waited 30 s for {awaited}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `effect` was caused by `cause`: its causation id is the cause's id and it
/// carries the cause's correlation id.
pub fn assert_caused_by(effect: &Envelope, cause: &Envelope) {
    let what = &effect.event_type;
    let causation = effect.causationid.as_deref();
    assert_eq!(causation, Some(cause.id.as_str()), "causation of {what}");
    assert_eq!(
        effect.correlation_id(),
        cause.correlation_id(),
        "correlation of {what}"
    );
}

/// The payload of `envelope`, decoded.
pub fn payload<T: DeserializeOwned>(envelope: &Envelope) -> T {
    serde_json::from_value(envelope.data.clone()).expect("payload")
}

/// Runs `scenario` on the embedded deployment and on PostgreSQL + Redis, one test each.
#[macro_export]
macro_rules! on_both_deployments {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let env = $crate::common::embedded($crate::common::config()).await;
                super::$scenario(&env).await;
                env.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn production() {
                let env = $crate::common::production($crate::common::config()).await;
                super::$scenario(&env).await;
                env.stop().await;
            }
        }
    };
}
