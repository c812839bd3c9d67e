//! The Redis Streams transport of the production deployment (DESIGN sections 4 and 5).
//!
//! Every catalog stream (topic) is split into `partitions` Redis streams by key hash
//! ([`edubus_core::partition_of`]). A partition's keys share the hash tag `{p<N>}`, so one
//! partition lives on one Redis Cluster slot and a fetch reads all of a subscription's streams
//! of that partition in one `XREADGROUP`. A subscription is a consumer group on each of its
//! streams; a worker holds a partition through a lease (a key set with `PX`, renewed, fenced by
//! an epoch counter) and, when it takes a partition over, claims the pending entries of the
//! previous owner with `XAUTOCLAIM` and records the interrupted attempt.
//!
//! Key layout under the prefix `P` (default `edubus`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:{pN}:s:<stream>` | stream | the events of `<stream>` whose key hashes to partition N |
//! | `P:{pN}:lease:<sub>` / `P:{pN}:epoch:<sub>` | string | lease `owner|epoch|busy_at` / fencing counter |
//! | `P:{pN}:replay:<sub>` | stream | events queued for redelivery (replay, DLQ replay) |
//! | `P:subs` | hash | registered subscriptions |
//! | `P:members:<sub>` | sorted set | live consumers by last heartbeat |
//! | `P:fail:<sub>` | hash | failed attempts by log position |
//! | `P:dlq:<sub>` | stream | dead letters, ids `0-<n>` from `P:dlq:seq` |
//! | `P:dlq:index` / `P:dlq:replayed` | hash | dead-letter id to subscription / replay time |

mod conn;
mod dlq;
mod entry;
mod fetch;
mod keys;
mod lease;
mod production;
mod settle;
mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

use edubus_core::{Error, Recorded, Result, StartFrom, SubscriptionSpec, partition_of};
use redis::Value;
use redis::aio::ConnectionManager;

pub use dlq::DeadLetterRecord;
pub use lease::Rebalanced;
pub use production::Production;

use crate::conn::Blocking;
use crate::keys::Keys;
use crate::lease::LeaseState;

/// How to reach Redis and lay out the streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key, so several deployments can share a server.
    pub prefix: String,
    /// Partitions every stream is split into; fixed for the life of a deployment.
    pub partitions: u32,
    /// How long a fetch waits on `XREADGROUP BLOCK` for new entries.
    pub block: Duration,
    /// The stream (catalog topic) of every event type.
    pub routes: BTreeMap<String, String>,
}

impl RedisConfig {
    /// A configuration for `url` with the defaults: prefix `edubus`, 16 partitions, 250 ms
    /// blocking reads, and no routes (set them with [`RedisConfig::with_routes`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "edubus".into(),
            partitions: 16,
            block: Duration::from_millis(250),
            routes: BTreeMap::new(),
        }
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the number of partitions.
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Sets how long a fetch blocks waiting for new entries.
    #[must_use]
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Sets the stream of every event type (from the catalog's topics).
    #[must_use]
    pub fn with_routes(mut self, routes: BTreeMap<String, String>) -> Self {
        self.routes = routes;
        self
    }
}

/// The Redis Streams transport: publishing, consumer groups, leases, fetch and acknowledgement,
/// dead letters, statistics and trimming. Cheap to clone.
#[derive(Clone)]
pub struct RedisStreams {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    keys: Keys,
    conn: ConnectionManager,
    blocking: Blocking,
    /// Leases this process holds, by (subscription, partition).
    leases: Mutex<HashMap<(String, u32), LeaseState>>,
    /// Pending entries found trimmed when claimed: `(stream key, entry id)`.
    lost: Mutex<Vec<(String, String)>>,
    /// Per subscription, positions of deliveries with failed attempts recorded, as far as this
    /// process saw: a settlement clears those histories and needs no command for the others.
    failed: Mutex<HashMap<String, HashSet<u64>>>,
    /// Registered subscriptions seen by this process, with their streams.
    subscriptions: RwLock<HashMap<String, Arc<Subscription>>>,
}

/// A registered subscription as this process knows it.
#[derive(Debug)]
pub(crate) struct Subscription {
    spec: SubscriptionSpec,
    /// Its streams, sorted.
    streams: Vec<String>,
}

impl std::fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreams")
            .field("url", &self.inner.config.url)
            .field("prefix", &self.inner.config.prefix)
            .field("partitions", &self.inner.config.partitions)
            .finish_non_exhaustive()
    }
}

impl RedisStreams {
    /// Connects to Redis (the connection reconnects by itself after a restart).
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis_url `{}`: {e}", config.url)))?;
        let conn = conn::manager(&client).await?;
        let keys = Keys::new(&config.prefix);
        Ok(Self {
            inner: Arc::new(Inner {
                blocking: Blocking::new(client),
                keys,
                conn,
                config,
                leases: Mutex::default(),
                lost: Mutex::default(),
                failed: Mutex::default(),
                subscriptions: RwLock::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Number of partitions of every stream.
    pub fn partitions(&self) -> u32 {
        self.inner.config.partitions
    }

    /// The shared multiplexed connection (never used for blocking reads).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Appends events to their partition streams with one pipelined `XADD` per event; returns
    /// once Redis has them all. The partition is recomputed with this transport's partition
    /// count, which is authoritative for Redis.
    ///
    /// A large batch goes out as several pipelines of whole partitions: each is handed to the
    /// connection as soon as it is encoded, so Redis executes one while the next is encoded.
    /// Pipelines never share a partition, so each partition's entries keep the batch's order
    /// whatever order the pipelines arrive in.
    pub async fn publish(&self, events: &[Recorded]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let partitions = self.partitions();
        let mut order: Vec<(u32, usize)> = events
            .iter()
            .enumerate()
            .map(|(i, event)| (partition_of(&event.key, partitions), i))
            .collect();
        order.sort_unstable();
        let mut sent = Vec::new();
        let mut json = String::with_capacity(1024);
        for chunk in partition_chunks(&order, PUBLISH_PIPELINE) {
            let mut pipe = redis::Pipeline::with_capacity(chunk.len());
            let mut key: Option<(u32, &str, String)> = None;
            for &(partition, i) in chunk {
                let event = &events[i];
                let stream = match &key {
                    Some((p, s, k)) if *p == partition && *s == event.stream => k,
                    _ => {
                        let k = self.keys().stream(&event.stream, partition);
                        &key.insert((partition, &event.stream, k)).2
                    }
                };
                json.clear();
                event.envelope.write_json(&mut json);
                let fields = entry::Fields::with_json(event, &json);
                let mut xadd = redis::Cmd::with_capacity(13, 8 + stream.len() + fields.len());
                xadd.arg("XADD").arg(stream).arg("*").arg(fields);
                pipe.add_command(xadd).ignore();
            }
            let mut conn = self.conn();
            let mut send = Box::pin(async move { pipe.query_async::<()>(&mut conn).await });
            // The first poll hands the pipeline to the connection's task; yielding lets that
            // task write it to the socket before this one encodes the next pipeline.
            match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
                Poll::Ready(done) => done.map_err(|e| conn::error("XADD", &e))?,
                Poll::Pending => {
                    sent.push(send);
                    tokio::task::yield_now().await;
                }
            }
        }
        for send in sent {
            send.await.map_err(|e| conn::error("XADD", &e))?;
        }
        Ok(())
    }

    /// Creates the subscription's consumer group on every stream partition it reads (from the
    /// beginning or the end), or updates its types and ordering.
    pub async fn register(&self, spec: &SubscriptionSpec) -> Result<()> {
        check_name(&spec.name)?;
        let streams = self.streams_of(spec)?;
        let mut conn = self.conn();
        let json = serde_json::to_string(spec)
            .map_err(|e| Error::internal("cannot encode a subscription", e.to_string()))?;
        redis::cmd("HSET")
            .arg(self.keys().subscriptions())
            .arg(&spec.name)
            .arg(json)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("HSET", &e))?;
        let start = match spec.start {
            StartFrom::Beginning => "0",
            StartFrom::End => "$",
        };
        let mut pipe = redis::pipe();
        for stream in &streams {
            for partition in 0..self.partitions() {
                pipe.cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys().stream(stream, partition))
                    .arg(&spec.name)
                    .arg(start)
                    .arg("MKSTREAM");
            }
        }
        // One reply per group; an existing group answers BUSYGROUP, which is fine.
        let replies: Vec<redis::RedisResult<Value>> = conn::each(&mut conn, pipe).await?;
        for reply in replies {
            if let Err(e) = reply
                && e.code() != Some("BUSYGROUP")
            {
                return Err(conn::error("XGROUP CREATE", &e));
            }
        }
        let sub = Arc::new(Subscription {
            spec: spec.clone(),
            streams,
        });
        self.inner
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.name.clone(), sub);
        Ok(())
    }

    /// Pending entries found trimmed (their event is gone) since the last call, as
    /// `(stream key, entry id)`; Redis dropped them from the pending list.
    pub fn take_lost(&self) -> Vec<(String, String)> {
        std::mem::take(
            &mut *self
                .inner
                .lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Every registered subscription.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionSpec>> {
        let mut conn = self.conn();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys().subscriptions())
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("HGETALL", &e))?;
        let mut specs = all
            .into_iter()
            .map(|(name, json)| {
                serde_json::from_str::<SubscriptionSpec>(&json).map_err(|e| {
                    Error::internal(
                        format!("subscription `{name}` is unreadable"),
                        e.to_string(),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }

    /// The registered subscription `name`, from this process's cache or from Redis.
    pub(crate) async fn subscription(&self, name: &str) -> Result<Arc<Subscription>> {
        if let Some(sub) = self
            .inner
            .subscriptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(Arc::clone(sub));
        }
        let spec = self
            .subscriptions()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::not_found("subscription", name))?;
        let sub = Arc::new(Subscription {
            streams: self.streams_of(&spec)?,
            spec,
        });
        self.inner
            .subscriptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), Arc::clone(&sub));
        Ok(sub)
    }

    /// The streams a subscription reads: those of its types, or every stream for none.
    fn streams_of(&self, spec: &SubscriptionSpec) -> Result<Vec<String>> {
        let routes = &self.inner.config.routes;
        let streams: BTreeSet<String> = if spec.types.is_empty() {
            routes.values().cloned().collect()
        } else {
            spec.types
                .iter()
                .map(|t| {
                    routes.get(t).cloned().ok_or_else(|| {
                        Error::invalid(format!(
                            "subscription `{}`: event type `{t}` is not in the catalog",
                            spec.name
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        if streams.is_empty() {
            return Err(Error::invalid(format!(
                "subscription `{}` reads no stream: the catalog routes no event type",
                spec.name
            )));
        }
        Ok(streams.into_iter().collect())
    }

    /// Every stream of the catalog.
    pub(crate) fn all_streams(&self) -> BTreeSet<String> {
        self.inner.config.routes.values().cloned().collect()
    }

    /// Deletes every key under this transport's prefix (tests and `edubus bench` clean-up).
    pub async fn delete_all(&self) -> Result<u64> {
        let mut conn = self.conn();
        let pattern = format!("{}:*", self.inner.config.prefix);
        let mut cursor = 0u64;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("SCAN", &e))?;
            for key in keys {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| conn::error("UNLINK", &e))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// `XADD`s per pipeline of a large publish (rounded up to a whole partition).
const PUBLISH_PIPELINE: usize = 256;

/// Splits `(partition, index)` pairs sorted by partition into runs of at least `size` pairs
/// (except the last) that never split a partition.
fn partition_chunks(order: &[(u32, usize)], size: usize) -> impl Iterator<Item = &[(u32, usize)]> {
    let mut rest = order;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        while end < rest.len() && rest[end].0 == rest[end - 1].0 {
            end += 1;
        }
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

/// A subscription name becomes part of keys and the group name: no spaces, braces or colons.
fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | ':' | '|'));
    if bad {
        return Err(Error::invalid(format!(
            "subscription name `{name}`: use letters, digits, `.`, `-` or `_` (no spaces, braces, colons or bars)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::partition_chunks;

    #[test]
    fn publish_pipelines_hold_whole_partitions_in_batch_order() {
        // Six events of partition 0, ten of partition 1, two of partition 2, interleaved.
        let parts = [0, 1, 1, 0, 2, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 2, 1, 1];
        let order: Vec<(u32, usize)> = parts.iter().enumerate().map(|(i, &p)| (p, i)).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let chunks: Vec<&[(u32, usize)]> = partition_chunks(&sorted, 4).collect();
        assert_eq!(chunks.concat(), sorted, "every event once, in order");
        let partitions: Vec<Vec<u32>> = chunks
            .iter()
            .map(|c| {
                let mut ps: Vec<u32> = c.iter().map(|&(p, _)| p).collect();
                ps.dedup();
                ps
            })
            .collect();
        assert_eq!(
            partitions,
            [vec![0], vec![1], vec![2]],
            "no partition split"
        );
        let grown: Vec<usize> = partition_chunks(&sorted, 8).map(<[_]>::len).collect();
        assert_eq!(
            grown,
            [16, 2],
            "a run grows to the size, then to its partition's end"
        );
    }
}
