//! The harness of the production deployment: PostgreSQL (a schema per storage) and Redis
//! Streams (a key prefix per storage) on the servers `edubus-testsupport` starts, with a relay
//! in every opened instance.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use edubus_postgres::{PgConfig, PgWork, RelayOptions, work};
use edubus_redis::{Production, RedisConfig};

use crate::harness::{AuditRecord, Harness, Observation};

const PARTITIONS: u32 = 16;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS conformance_observations (
    id bigserial PRIMARY KEY,
    subscription text NOT NULL,
    key text NOT NULL,
    seq bigint NOT NULL,
    event_id text NOT NULL
);
CREATE INDEX IF NOT EXISTS conformance_observations_event ON conformance_observations (event_id)";

/// Runs the suite on [`Production`].
#[derive(Debug, Default)]
pub struct ProductionHarness {
    worker: Option<std::path::PathBuf>,
}

/// One isolated deployment: a PostgreSQL schema and a Redis key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductionStorage {
    /// PostgreSQL URL whose sessions use the storage's schema.
    pub pg_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Key prefix of the storage.
    pub prefix: String,
}

impl ProductionHarness {
    /// A harness whose multi-process cases start `worker` (the `edubus-conformance-worker`).
    pub fn new(worker: impl Into<std::path::PathBuf>) -> Self {
        Self {
            worker: Some(worker.into()),
        }
    }

    async fn client(storage: &ProductionStorage) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&storage.pg_url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// The stream of every event type of the catalog the suite publishes.
fn routes() -> BTreeMap<String, String> {
    edubus_events::catalog()
        .events()
        .map(|e| (e.name.clone(), e.topic.clone()))
        .collect()
}

impl Harness for ProductionHarness {
    type Backend = Production;
    type Storage = ProductionStorage;

    async fn storage(&self) -> anyhow::Result<ProductionStorage> {
        let schema = edubus_testsupport::postgres().schema("conformance").await;
        Ok(ProductionStorage {
            pg_url: schema.url().to_owned(),
            redis_url: edubus_testsupport::redis().url(),
            prefix: edubus_testsupport::unique_prefix("conformance"),
        })
    }

    async fn open(&self, storage: &ProductionStorage) -> anyhow::Result<Production> {
        let pg = PgConfig::new(&storage.pg_url).with_partitions(PARTITIONS);
        let redis = RedisConfig::new(&storage.redis_url)
            .with_prefix(&storage.prefix)
            .with_partitions(PARTITIONS)
            .with_block(Duration::from_millis(50))
            .with_routes(routes());
        let relay = RelayOptions {
            poll_interval: Duration::from_millis(100),
            ..RelayOptions::default()
        };
        let backend = Production::open(pg, redis, Some(relay)).await?;
        Self::client(storage).await?.batch_execute(CREATE).await?;
        Ok(backend)
    }

    fn spec(&self, storage: &ProductionStorage) -> String {
        format!(
            "production:{} {} {}",
            storage.redis_url, storage.prefix, storage.pg_url
        )
    }

    fn parse_spec(&self, spec: &str) -> Option<ProductionStorage> {
        let mut parts = spec.strip_prefix("production:")?.split(' ');
        Some(ProductionStorage {
            redis_url: parts.next()?.to_owned(),
            prefix: parts.next()?.to_owned(),
            pg_url: parts.next()?.to_owned(),
        })
    }

    fn worker_binary(&self) -> Option<std::path::PathBuf> {
        self.worker.clone()
    }

    /// 10,000 events over 1,000 keys: each settlement is a PostgreSQL transaction plus a Redis
    /// acknowledgement, and the suite's cases run side by side on two cores.
    fn load_events(&self) -> u64 {
        10_000
    }

    fn record(&self, subscription: &str, key: &str, seq: u64, event_id: &str) -> PgWork {
        recorder(subscription, key, seq, event_id, false)
    }

    fn record_then_fail(&self, subscription: &str, key: &str, seq: u64, event_id: &str) -> PgWork {
        recorder(subscription, key, seq, event_id, true)
    }

    async fn observations(&self, storage: &ProductionStorage) -> anyhow::Result<Vec<Observation>> {
        let rows = Self::client(storage)
            .await?
            .query(
                "SELECT subscription, key, seq, event_id FROM conformance_observations ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Observation {
                subscription: r.get(0),
                key: r.get(1),
                seq: u64::try_from(r.get::<_, i64>(2)).unwrap_or_default(),
                event_id: r.get(3),
            })
            .collect())
    }

    async fn observed_events(&self, storage: &ProductionStorage) -> anyhow::Result<u64> {
        let row = Self::client(storage)
            .await?
            .query_one(
                "SELECT count(DISTINCT event_id) FROM conformance_observations",
                &[],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0))?)
    }

    async fn audit(&self, storage: &ProductionStorage) -> anyhow::Result<Vec<AuditRecord>> {
        let rows = Self::client(storage)
            .await?
            .query("SELECT actor, action, subject FROM audit ORDER BY id", &[])
            .await
            .context("reading the audit table")?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                actor: r.get(0),
                action: r.get(1),
                subject: r.get(2),
            })
            .collect())
    }
}

fn recorder(subscription: &str, key: &str, seq: u64, event_id: &str, fail: bool) -> PgWork {
    let row = (
        subscription.to_owned(),
        key.to_owned(),
        i64::try_from(seq).unwrap_or(i64::MAX),
        event_id.to_owned(),
    );
    work(move |tx| {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO conformance_observations (subscription, key, seq, event_id)
                 VALUES ($1, $2, $3, $4)",
                &[&row.0, &row.1, &row.2, &row.3],
            )
            .await?;
            if fail {
                return Err("the handler's transactional work failed on purpose".into());
            }
            Ok(Vec::new())
        })
    })
}
