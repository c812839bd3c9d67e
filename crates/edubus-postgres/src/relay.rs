//! The outbox relay: moves committed events to a [`Sink`] (the Redis transport) in batches,
//! partition by partition, in position order, keeping a cursor per partition.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use edubus_core::{ErrorKind, Recorded, Result};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::PgStore;
use crate::error::Db;
use crate::store::{RECORDED_COLUMNS, recorded};

/// Where relayed events go.
pub trait Sink: Send + Sync + 'static {
    /// Publishes `events` (position order within each partition); returns `Ok` only once the
    /// sink holds them durably. An error makes the relay retry the same events later.
    fn publish(&self, events: Vec<Recorded>) -> impl Future<Output = Result<()>> + Send;
}

/// Tuning of a [`Relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Most events per publish (default 1000).
    pub batch: usize,
    /// How often to look for events when no notification arrives (default 1 s).
    pub poll_interval: Duration,
    /// Longest wait between retries after an error (default 5 s; the first wait is 100 ms).
    pub max_backoff: Duration,
    /// Passes run side by side, each over its own share of the partitions (default 4): one
    /// pass's database and sink round trips overlap with another's.
    pub lanes: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 1000,
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            lanes: 4,
        }
    }
}

/// What a [`Relay::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Events published (a republished event counts again).
    pub relayed: u64,
    /// Passes that failed and were retried.
    pub errors: u64,
}

/// Moves committed outbox rows to a [`Sink`]; several relays may run on one store.
pub struct Relay<S> {
    store: PgStore,
    sink: S,
    options: RelayOptions,
}

/// Locks up to `$1` free partitions that have events above their cursor (held until the pass
/// commits); returns each with its cursor as of the lock.
const LOCK_SQL: &str = "SELECT partition, relayed_upto FROM relay_partitions r
    WHERE EXISTS (SELECT 1 FROM events e
                  WHERE e.partition = r.partition AND e.position > r.relayed_upto)
    ORDER BY partition LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Moves the cursors of the partitions `$1` to the positions `$2`.
const ADVANCE_SQL: &str = "UPDATE relay_partitions r SET relayed_upto = c.upto
    FROM unnest($1::int4[], $2::int8[]) AS c(partition, upto) WHERE r.partition = c.partition";

impl<S: Sink> Relay<S> {
    /// A relay of `store`'s outbox into `sink`.
    pub fn new(store: PgStore, sink: S, options: RelayOptions) -> Self {
        Self {
            store,
            sink,
            options,
        }
    }

    /// Relays everything committed now in the partitions no other relay holds; returns how
    /// many events were published.
    pub async fn step(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let (n, more) = self.round().await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    /// `lanes` passes side by side over disjoint partitions; returns how many events they
    /// published and whether one of them filled its share of a batch (more may be waiting).
    async fn round(&self) -> Result<(usize, bool)> {
        let lanes = self.options.lanes.max(1);
        let share = self
            .store
            .partitions()
            .div_ceil(u32::try_from(lanes).unwrap_or(1));
        let share = i64::from(share.max(1));
        let passes = futures_util::future::join_all((0..lanes).map(|_| self.pass(share))).await;
        let (mut total, mut more) = (0, false);
        for pass in passes {
            let (n, full) = pass?;
            total += n;
            more |= full;
        }
        Ok((total, more))
    }

    /// One transaction: lock up to `share` partitions, read each one's events above its
    /// cursor in position order (the batch split between them), publish them, move the
    /// cursors, commit. Returns the events published and whether a partition filled its part
    /// of the batch. Uncommitted appends are invisible here, so never published; within a
    /// partition positions commit in ascending order (the append lock), so nothing can still
    /// appear below a cursor.
    async fn pass(&self, share: i64) -> Result<(usize, bool)> {
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.db()?;
        let locked = tx
            .query_typed(LOCK_SQL, &[(&share, Type::INT8)])
            .await
            .db()?;
        if locked.is_empty() {
            return Ok((0, false));
        }
        let partitions: Vec<i32> = locked.iter().map(|r| r.get(0)).collect();
        let cursors: Vec<i64> = locked.iter().map(|r| r.get(1)).collect();
        let part = self.options.batch.max(1).div_ceil(partitions.len());
        let limit = i64::try_from(part).unwrap_or(i64::MAX);
        // A new statement, so a new snapshot: it sees every commit before the locks were
        // granted, including the cursors and appends of the relay that held them before.
        let rows = tx
            .query_typed(
                &format!(
                    "SELECT e.* FROM unnest($1::int4[], $2::int8[]) AS c(partition, upto)
                     CROSS JOIN LATERAL (
                         SELECT {RECORDED_COLUMNS} FROM events e
                         WHERE e.partition = c.partition AND e.position > c.upto
                         ORDER BY e.position LIMIT $3) e"
                ),
                &[
                    (&partitions, Type::INT4_ARRAY),
                    (&cursors, Type::INT8_ARRAY),
                    (&limit, Type::INT8),
                ],
            )
            .await
            .db()?;
        let mut upto: BTreeMap<i32, (i64, usize)> = BTreeMap::new();
        for row in &rows {
            let entry = upto.entry(row.get(2)).or_default();
            entry.0 = entry.0.max(row.get(0));
            entry.1 += 1;
        }
        let events = rows.iter().map(recorded).collect::<Result<Vec<_>>>()?;
        drop(rows);
        let n = events.len();
        self.sink.publish(events).await?;
        let full = upto.values().any(|&(_, count)| count >= part);
        let (moved, positions): (Vec<i32>, Vec<i64>) =
            upto.into_iter().map(|(p, (pos, _))| (p, pos)).unzip();
        tx.query_typed(
            ADVANCE_SQL,
            &[(&moved, Type::INT4_ARRAY), (&positions, Type::INT8_ARRAY)],
        )
        .await
        .db()?;
        tx.commit().await.db()?;
        Ok((n, full))
    }

    /// Relays until `shutdown` completes, woken by notifications of new appends and polling
    /// every `poll_interval` in case one is missed. Errors are logged and retried with
    /// backoff (the database or the sink may be down); only an error of kind
    /// [`ErrorKind::Invalid`] (a misconfiguration no retry fixes) ends the loop.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RelayStats> {
        let mut shutdown = std::pin::pin!(shutdown);
        let wake = Arc::new(Notify::new());
        let mut listener: Option<Client> = None;
        let mut stats = RelayStats::default();
        let mut backoff = Duration::ZERO;
        loop {
            if listener.as_ref().is_none_or(Client::is_closed) {
                listener = self.listen(&wake).await.inspect_err(|e| {
                    tracing::warn!(error = %e, "relay cannot listen for notifications; polling");
                }).ok();
            }
            let wait = match self.round().await {
                Ok((n, more)) => {
                    stats.relayed += n as u64;
                    backoff = Duration::ZERO;
                    (!more).then_some(self.options.poll_interval)
                }
                Err(e) if e.kind() == ErrorKind::Invalid => return Err(e),
                Err(e) => {
                    stats.errors += 1;
                    backoff = (backoff * 2)
                        .max(Duration::from_millis(100))
                        .min(self.options.max_backoff);
                    tracing::warn!(error = %e, retry_in = ?backoff, "relay pass failed");
                    tokio::select! {
                        () = &mut shutdown => return Ok(stats),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            };
            match wait {
                // A full batch: more is waiting, go on unless asked to stop.
                None => {
                    if shutdown.as_mut().now_or_never().is_some() {
                        return Ok(stats);
                    }
                }
                Some(wait) => tokio::select! {
                    () = &mut shutdown => return Ok(stats),
                    () = wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                },
            }
        }
    }

    /// Opens a dedicated connection that LISTENs on the store's channel and wakes `wake` on
    /// every notification, and once more when the connection ends.
    async fn listen(&self, wake: &Arc<Notify>) -> Result<Client> {
        let (client, mut connection) = self.store.pg_config().connect(NoTls).await.db()?;
        let wake = Arc::clone(wake);
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(_) = message {
                    wake.notify_one();
                }
            }
            // Lost: whatever was notified meanwhile is found by the next pass.
            wake.notify_one();
        });
        let channel: String = client
            .query_one("SELECT 'edubus_outbox_' || 'events'::regclass::oid", &[])
            .await
            .db()?
            .get(0);
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .db()?;
        Ok(client)
    }
}
