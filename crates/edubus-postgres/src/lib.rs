//! PostgreSQL backend of edubus: the append-only event store, the transactional outbox and
//! its relay, the inbox of transactional handlers, recorded delivery failures and the audit
//! trail. Redis (or any [`Sink`]) carries events on; this crate never talks to it.
//!
//! | table | what |
//! |---|---|
//! | `events` | the log: position, id, type, version, stream, partition, key, correlation, causation, tenant, recorded time, the envelope as JSONB and as its exact JSON text; a trigger refuses UPDATE, DELETE and TRUNCATE |
//! | `relay_partitions` | one row per partition: the position up to which it was relayed; locked by the relay that publishes it |
//! | `inbox` | `(subscription, event_id)` handled by transactional handlers |
//! | `failures` | failed delivery attempts, so delivery history survives crashes |
//! | `audit` | administrative actions; append-only like `events` |
//! | `edubus_migrations` | the migration versions applied |
//!
//! **Outbox.** [`PgStore::append_in`] appends inside the caller's transaction: the business
//! writes and the events commit together or not at all. The events of a partition above its
//! relay cursor are the outbox: nothing else is written per event.
//!
//! **Ordering.** Positions come from a sequence, so across transactions they are not handed
//! out in commit order. An append therefore holds a transaction-scoped lock on each partition
//! it writes until it commits: within a partition, positions commit in ascending order, and
//! the committed events of a partition are always a prefix of what will ever be there.
//! (Filtering by transaction id, `pg_snapshot_xmin`, would avoid the lock but yields commit
//! order, not the position order the store reads back per key.)
//! A [`Relay`] locks partitions with `FOR UPDATE SKIP LOCKED`, publishes their events above the
//! cursor in position order, moves the cursor and commits: each partition reaches the [`Sink`] in the order
//! the store reads it back per key, two relays never publish one partition at the same time,
//! and a crash between publishing and committing only republishes (at least once).
//!
//! See `docs/postgres.md` for the full design and its guarantees.

mod audit;
mod config;
mod error;
mod failures;
mod inbox;
mod relay;
mod schema;
mod store;

use std::str::FromStr;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use edubus_core::{Append, Appended, Error, Result};
use tokio_postgres::{NoTls, Transaction};

pub use config::PgConfig;
pub use edubus_core::AuditEntry;
pub use error::{from_pg, from_pool};
pub use inbox::{Commit, Committed, PgWork, work};
pub use relay::{Relay, RelayOptions, RelayStats, Sink};
pub use store::DEFAULT_READ_LIMIT;

/// The PostgreSQL event store; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Settings of new connections, for the relay's listening connection.
    pg: tokio_postgres::Config,
    partitions: u32,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("partitions", &self.inner.partitions)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Opens the pool and applies the migrations.
    pub async fn connect(config: PgConfig) -> Result<Self> {
        if config.partitions == 0 || i32::try_from(config.partitions).is_err() {
            return Err(Error::invalid(format!(
                "partitions must be between 1 and {}, not {}",
                i32::MAX,
                config.partitions
            )));
        }
        let mut pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| Error::invalid(format!("invalid PostgreSQL URL: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| Error::internal("the PostgreSQL pool could not be built", e))?;
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                pg,
                partitions: config.partitions,
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not applied yet and returns their versions (empty when the
    /// schema is current). Safe when several processes start at once.
    pub async fn migrate(&self) -> Result<Vec<u32>> {
        let mut client = self.client().await?;
        schema::migrate(&mut client, self.inner.partitions).await
    }

    /// The connection pool, for the caller's own transactions (see [`PgStore::append_in`]).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Number of partitions every stream is split into.
    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    /// Appends a batch inside the caller's transaction: the outbox. The events, their outbox
    /// rows and the caller's own writes commit together; a rollback leaves no event behind.
    ///
    /// Same idempotency and conflict rules as [`edubus_core::EventStore::append`]. On a
    /// conflict the transaction is failed on the server, so it can only roll back. The
    /// transaction holds a lock on each partition it appends to until it ends: keep it short,
    /// and append once per transaction (two transactions appending to the same partitions in
    /// opposite orders across several calls may deadlock; PostgreSQL then fails one, retryably).
    /// A `deadpool_postgres::Transaction` derefs to the `tokio_postgres` one.
    pub async fn append_in(
        &self,
        tx: &Transaction<'_>,
        batch: Vec<Append>,
    ) -> Result<Vec<Appended>> {
        store::append_in(tx, &batch, self.inner.partitions).await
    }

    /// Committed events not relayed yet, counted by event type: work the transport has not
    /// seen, for subscription lag.
    pub async fn outbox_backlog(&self) -> Result<std::collections::HashMap<String, u64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT e.type, count(*) FROM relay_partitions r JOIN events e \
                 ON e.partition = r.partition AND e.position > r.relayed_upto GROUP BY e.type",
                &[],
            )
            .await
            .map_err(from_pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                let n: i64 = r.get(1);
                (r.get(0), u64::try_from(n).unwrap_or(0))
            })
            .collect())
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<Object> {
        self.inner.pool.get().await.map_err(from_pool)
    }

    /// Settings for a dedicated (unpooled) connection.
    pub(crate) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.inner.pg
    }
}
