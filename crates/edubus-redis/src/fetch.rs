//! Fetching deliveries of a leased partition: queued replays first, then this consumer's own
//! pending entries (after a takeover or restart), then new entries with a blocking read. The
//! failed attempts and the inbox of what was read are looked up in one more round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;

use edubus_core::{Delivery, Error, Fetched, Lease, Recorded, Result};
use jiff::Timestamp;
use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::entry::{self, Entry};
use crate::{RedisStreams, Subscription, conn};

/// Attempts of a fenced read whose transaction a change of the lease key (a renewal) aborted.
const FENCE_ATTEMPTS: usize = 8;

/// Why a lease value does not fence a read for `consumer` at `epoch`, if it does not.
fn stale(held: Option<&str>, consumer: &str, epoch: u64) -> Option<String> {
    let Some(held) = held else {
        return Some("the lease expired".to_owned());
    };
    // `owner|epoch|busy_at`; the owner may not contain a bar.
    let mut parts = held.rsplitn(3, '|');
    let (_busy, held_epoch, owner) = (parts.next(), parts.next(), parts.next());
    let (owner, held_epoch) = (owner.unwrap_or(""), held_epoch.unwrap_or(""));
    (owner != consumer || held_epoch != epoch.to_string())
        .then(|| format!("the lease was taken over by {owner} (epoch {held_epoch})"))
}

/// Nothing new: each stream's last entry id from its `XREVRANGE ... COUNT 1` reply, to wait
/// from.
fn last_ids(tops: Vec<Value>) -> Read {
    let last = tops
        .into_iter()
        .map(|top| {
            entry::entries_of(top)
                .ok()
                .and_then(|mut entries| entries.pop())
                .map_or_else(|| "0-0".to_owned(), |e| e.id)
        })
        .collect();
    Read::Empty(last)
}

/// How a fenced read went.
enum Fence {
    /// The replay-queue entries, and what the group read found.
    Read(Value, Read),
    /// The lease is not this consumer's, with why.
    Stale(String),
    /// The lease key changed during every attempt.
    Busy,
}

/// What a fenced read found.
enum Read {
    /// The `XREADGROUP` reply.
    Entries(Value),
    /// Nothing new; each stream's last entry id, to wait from.
    Empty(Vec<String>),
    /// A group was missing and is created again.
    NoGroup,
}

impl RedisStreams {
    /// Deliveries of the lease's partition: while this consumer's pending entries are read
    /// back, up to `max` replay-queue entries with an id above `after_requeue`, else up to
    /// `max` pending entries; then up to `max` replay-queue entries and up to `max` new entries
    /// read together (waiting up to the configured block time when there are none).
    /// `handled` says whether the partition's inbox in Redis holds the event's id.
    pub async fn fetch(
        &self,
        lease: &Lease,
        after: u64,
        after_requeue: u64,
        max: usize,
    ) -> Result<Fetched> {
        let sub = self.subscription(&lease.subscription).await?;
        let (consumer, claimed) = self.with_state(lease, |s| (s.consumer.clone(), s.claimed))?;
        if !claimed {
            self.take_over(
                &sub.streams,
                &lease.subscription,
                &consumer,
                lease.partition,
            )
            .await?;
            self.with_state(lease, |s| s.claimed = true)?;
        }
        let history = self.with_state(lease, |s| s.history.clone())?;
        let max = max.max(1);
        let read = async {
            let mut deliveries = Vec::new();
            if history.iter().any(Option::is_some) {
                deliveries = self.requeued(lease, after_requeue, max).await?;
                if !deliveries.is_empty() {
                    return Ok(deliveries);
                }
                deliveries = self.history(&sub, lease, &consumer, history, max).await?;
            }
            if deliveries.is_empty() {
                deliveries = self
                    .fresh(&sub, lease, &consumer, after_requeue, max)
                    .await?;
            }
            Ok::<_, Error>(deliveries)
        };
        let deliveries = match read.await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                // Redis may have handed entries to this consumer whose reply never arrived (a
                // dropped connection, a restart): read its pending list again next time.
                let streams = sub.streams.len();
                let _ = self.with_state(lease, |s| s.history = vec![Some("0".into()); streams]);
                return Err(e);
            }
        };
        let scanned_to = deliveries
            .iter()
            .rev()
            .find(|d| !d.replay)
            .map_or(after, |d| d.seq.max(after));
        Ok(Fetched {
            deliveries,
            scanned_to,
        })
    }

    /// Runs `f` on the state of a lease this process holds with the lease's epoch.
    pub(crate) fn with_state<T>(
        &self,
        lease: &Lease,
        f: impl FnOnce(&mut crate::lease::LeaseState) -> T,
    ) -> Result<T> {
        let mut leases = self
            .inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match leases.get_mut(&(lease.subscription.clone(), lease.partition)) {
            Some(state) if state.epoch == lease.epoch => Ok(f(state)),
            _ => Err(Error::conflict(format!(
                "the lease on partition {} of `{}` (epoch {}) is no longer held by this process",
                lease.partition, lease.subscription, lease.epoch
            ))),
        }
    }

    /// This consumer's pending entries, read back after a takeover or restart.
    async fn history(
        &self,
        sub: &Subscription,
        lease: &Lease,
        consumer: &str,
        history: Vec<Option<String>>,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        let reading: Vec<(usize, String)> = history
            .iter()
            .enumerate()
            .filter_map(|(i, id)| id.clone().map(|id| (i, id)))
            .collect();
        let keys: Vec<String> = reading
            .iter()
            .map(|(i, _)| self.keys().stream(&sub.streams[*i], lease.partition))
            .collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&sub.spec.name)
            .arg(consumer)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(&keys);
        for (_, id) in &reading {
            cmd.arg(id);
        }
        let mut conn = self.conn();
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("XREADGROUP", &e))?;
        let by_key: HashMap<String, Vec<Entry>> = entry::read_reply(reply)?.into_iter().collect();
        let mut next = history;
        let mut per_stream = Vec::new();
        // Entries this process already holds (read again after a lost reply) stay with it.
        let inflight: std::collections::HashSet<(usize, String)> =
            self.with_state(lease, |s| s.inflight.values().cloned().collect())?;
        for ((i, _), key) in reading.iter().zip(&keys) {
            let mut entries = by_key.get(key).cloned().unwrap_or_default();
            next[*i] = entries.last().map(|e| e.id.clone());
            entries.retain(|e| !inflight.contains(&(*i, e.id.clone())));
            let (live, gone): (Vec<Entry>, Vec<Entry>) =
                entries.into_iter().partition(|e| e.fields.is_some());
            if !gone.is_empty() {
                self.drop_deleted(key, &sub.spec.name, &gone).await?;
            }
            if !live.is_empty() {
                per_stream.push((*i, key.clone(), live));
            }
        }
        self.with_state(lease, |s| s.history = next)?;
        let mut counts: HashMap<String, u32> = HashMap::new();
        for (_, key, live) in &per_stream {
            counts.extend(
                self.delivery_counts(key, &sub.spec.name, consumer, live)
                    .await?,
            );
        }
        self.deliveries(lease, per_stream, |e| {
            counts.get(&e.id).copied().unwrap_or(1)
        })
        .await
    }

    /// Replay-queue entries with an id above `after_requeue`, then new entries, waiting up to
    /// the block time on a dedicated connection when there are neither.
    async fn fresh(
        &self,
        sub: &Subscription,
        lease: &Lease,
        consumer: &str,
        after_requeue: u64,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        let keys: Vec<String> = sub
            .streams
            .iter()
            .map(|s| self.keys().stream(s, lease.partition))
            .collect();
        let read =
            |after_requeue| self.fenced_read(sub, lease, consumer, &keys, after_requeue, max);
        let (mut replays, reply) = match read(after_requeue).await? {
            (replays, Read::Entries(reply)) => (replays, reply),
            (replays, Read::NoGroup) => return Ok(replays),
            (replays, Read::Empty(_)) if !replays.is_empty() => return Ok(replays),
            (_, Read::Empty(last_ids)) => {
                // Wait for anything newer than what the streams held, without a group (a
                // plain read changes nothing), then read through the fence again.
                let block = crate::lease::millis(self.config().block);
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block)
                    .arg("STREAMS")
                    .arg(&keys);
                cmd.arg(&last_ids);
                let mut conn = self.inner.blocking.take().await?;
                let _: Value = cmd
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| conn::error("XREAD", &e))?;
                self.inner.blocking.give_back(conn);
                match read(after_requeue).await? {
                    (replays, Read::Entries(reply)) => (replays, reply),
                    (replays, Read::NoGroup | Read::Empty(_)) => return Ok(replays),
                }
            }
        };
        let mut per_stream = Vec::new();
        for (key, entries) in entry::read_reply(reply)? {
            let Some(i) = self
                .keys()
                .stream_name(&key)
                .and_then(|name| sub.streams.iter().position(|s| s == name))
            else {
                continue;
            };
            per_stream.push((i, key, entries));
        }
        replays.extend(self.deliveries(lease, per_stream, |_| 1).await?);
        Ok(replays)
    }

    /// New entries for this consumer, read only while it holds the lease with its epoch: a
    /// consumer that lost the lease must not move entries into its own pending list, where the
    /// new owner would not look (`Conflict` then).
    ///
    /// The fence is optimistic: `WATCH` the lease key, check it, then `XREADGROUP` in
    /// `MULTI`/`EXEC`, which Redis refuses to run if the key changed in between. A Lua script
    /// did the same, but copying every entry into Lua and back cost Redis three times the read
    /// itself. `WATCH` needs a connection of its own, one of the blocking-read pool.
    async fn fenced_read(
        &self,
        sub: &Subscription,
        lease: &Lease,
        consumer: &str,
        keys: &[String],
        after_requeue: u64,
        max: usize,
    ) -> Result<(Vec<Delivery>, Read)> {
        let mut conn = self.inner.blocking.take().await?;
        // The pool's connections have no response timeout (they serve blocking reads): this
        // read gets the shared connection's.
        let read = self.fenced_transaction(sub, lease, consumer, keys, after_requeue, max);
        let watched = self.watched_read(&mut conn, lease, consumer, &read);
        let Ok(read) = tokio::time::timeout(conn::RESPONSE_TIMEOUT, watched).await else {
            return Err(Error::unavailable(
                "redis XREADGROUP failed",
                format!("no reply within {:?}", conn::RESPONSE_TIMEOUT),
            ));
        };
        // A connection left in a transaction or watching a key must not be reused.
        if read.is_ok() {
            self.inner.blocking.give_back(conn);
        }
        match read {
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                self.recreate_groups(sub, lease.partition).await?;
                Ok((Vec::new(), Read::NoGroup))
            }
            Err(e) => Err(conn::error("XREADGROUP", &e)),
            Ok(Fence::Stale(why)) => Err(Error::conflict(format!(
                "partition {} of `{}`: {why}",
                lease.partition, lease.subscription
            ))),
            Ok(Fence::Read(replays, read)) => Ok((self.replays(replays)?, read)),
            Ok(Fence::Busy) => Err(Error::unavailable(
                format!(
                    "partition {} of `{}`: the lease key changed during every read",
                    lease.partition, lease.subscription
                ),
                format!("{FENCE_ATTEMPTS} attempts"),
            )),
        }
    }

    /// The transaction of a fenced read: the replay queue after `after_requeue`, the group
    /// read and each stream's last entry (to wait from when nothing is new).
    fn fenced_transaction(
        &self,
        sub: &Subscription,
        lease: &Lease,
        consumer: &str,
        keys: &[String],
        after_requeue: u64,
        max: usize,
    ) -> redis::Pipeline {
        let mut read = redis::pipe();
        read.atomic()
            .cmd("XRANGE")
            .arg(self.keys().replay(&lease.subscription, lease.partition))
            .arg(format!("(0-{after_requeue}"))
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&sub.spec.name)
            .arg(consumer)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(keys);
        for _ in keys {
            read.arg(">");
        }
        for key in keys {
            read.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        read
    }

    /// One fenced read on `conn`: `WATCH` and check the lease, then run `read` (a
    /// [`Self::fenced_transaction`]).
    async fn watched_read(
        &self,
        conn: &mut MultiplexedConnection,
        lease: &Lease,
        consumer: &str,
        read: &redis::Pipeline,
    ) -> redis::RedisResult<Fence> {
        let lease_key = self.keys().lease(&lease.subscription, lease.partition);
        for _ in 0..FENCE_ATTEMPTS {
            let (held,): (Option<String>,) = redis::pipe()
                .cmd("WATCH")
                .arg(&lease_key)
                .ignore()
                .cmd("GET")
                .arg(&lease_key)
                .query_async(conn)
                .await?;
            if let Some(why) = stale(held.as_deref(), consumer, lease.epoch) {
                redis::cmd("UNWATCH").query_async::<()>(conn).await?;
                return Ok(Fence::Stale(why));
            }
            // `EXEC` answers nil, and ran nothing, when the lease key changed since `WATCH`.
            let Some(mut replies) = read.query_async::<Option<Vec<Value>>>(conn).await? else {
                continue;
            };
            let tops = replies.split_off(2.min(replies.len()));
            let entries = replies.pop();
            let replays = replies.pop().unwrap_or(Value::Nil);
            return Ok(Fence::Read(
                replays,
                match entries {
                    Some(Value::Nil) | None => last_ids(tops),
                    Some(entries) => Read::Entries(entries),
                },
            ));
        }
        Ok(Fence::Busy)
    }

    /// Turns entries into deliveries merged by log position (each stream keeps its order),
    /// numbering them and remembering them for settlement. Entries that cannot be read are
    /// dead-lettered and acknowledged at once.
    async fn deliveries(
        &self,
        lease: &Lease,
        per_stream: Vec<(usize, String, Vec<Entry>)>,
        count_of: impl Fn(&Entry) -> u32,
    ) -> Result<Vec<Delivery>> {
        let partitions = self.partitions();
        let mut queues: Vec<(usize, String, VecDeque<Entry>)> = per_stream
            .into_iter()
            .map(|(i, k, e)| (i, k, e.into()))
            .collect();
        let mut ordered = Vec::new();
        loop {
            let next = queues
                .iter()
                .enumerate()
                .filter_map(|(q, (_, _, entries))| {
                    entries.front().map(|e| (e.position().unwrap_or(0), q))
                })
                .min();
            let Some((_, q)) = next else { break };
            let (i, key, entries) = &mut queues[q];
            if let Some(e) = entries.pop_front() {
                ordered.push((*i, key.clone(), e));
            }
        }
        let mut out = Vec::with_capacity(ordered.len());
        let mut unreadable = Vec::new();
        let received_at = Timestamp::now();
        for (i, key, e) in ordered {
            match e.recorded(partitions) {
                Ok(event) => {
                    let count = count_of(&e);
                    out.push((i, e.id, event, count));
                }
                Err(error) => unreadable.push((key, e, error)),
            }
        }
        let (failed, handled) = self.known(lease, &out).await?;
        for (key, e, error) in unreadable {
            self.dead_letter_unreadable(lease, &key, &e, &error).await?;
        }
        self.with_state(lease, |state| {
            out.into_iter()
                .zip(failed.into_iter().zip(handled))
                .map(|((i, id, event, count), (failed, handled))| {
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.inflight.insert(seq, (i, id));
                    Delivery {
                        event,
                        seq,
                        delivery_count: count.max(failed.saturating_add(1)),
                        replay: false,
                        requeue_id: None,
                        received_at,
                        handled,
                    }
                })
                .collect()
        })
    }

    /// Per delivery, the failed attempts recorded for it and whether the partition's inbox
    /// holds its event id, read in one round trip.
    async fn known(
        &self,
        lease: &Lease,
        out: &[(usize, String, Recorded, u32)],
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        if out.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.keys().failures(&lease.subscription))
            .arg(out.iter().map(|d| d.2.position).collect::<Vec<_>>())
            .cmd("ZMSCORE")
            .arg(self.keys().inbox(&lease.subscription, lease.partition))
            .arg(
                out.iter()
                    .map(|d| d.2.envelope.id.as_str())
                    .collect::<Vec<_>>(),
            );
        let mut conn = self.conn();
        let (failures, scores): (Vec<Option<String>>, Vec<Option<f64>>) = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("HMGET/ZMSCORE", &e))?;
        let failed = failures
            .into_iter()
            .map(|json| {
                crate::settle::attempts(json).map(|a| u32::try_from(a.len()).unwrap_or(u32::MAX))
            })
            .collect::<Result<Vec<u32>>>()?;
        if failed.iter().any(|n| *n > 0) {
            let positions = out.iter().zip(&failed).filter(|(_, n)| **n > 0);
            self.note_failed(&lease.subscription, positions.map(|(d, _)| d.2.position));
        }
        Ok((failed, scores.iter().map(Option::is_some).collect()))
    }

    /// Delivery counts of this consumer's pending entries (`XPENDING`).
    async fn delivery_counts(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        entries: &[Entry],
    ) -> Result<HashMap<String, u32>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(HashMap::new());
        };
        let mut conn = self.conn();
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(key)
            .arg(group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(consumer)
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("XPENDING", &e))?;
        Ok(rows
            .into_iter()
            .map(|(id, _, _, count)| (id, u32::try_from(count).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Pending entries whose stream entry is gone: acknowledged, so they are not read back in
    /// a loop, and reported.
    async fn drop_deleted(&self, key: &str, group: &str, gone: &[Entry]) -> Result<()> {
        let ids: Vec<&str> = gone.iter().map(|e| e.id.as_str()).collect();
        tracing::warn!(
            stream = key,
            group,
            ?ids,
            "pending entries were trimmed before they were handled; acknowledged"
        );
        let mut conn = self.conn();
        redis::cmd("XACK")
            .arg(key)
            .arg(group)
            .arg(&ids)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("XACK", &e))
    }

    /// Recreates a partition's missing consumer groups (after Redis lost them) from the last
    /// id the subscription acknowledged there, or from the start.
    async fn recreate_groups(&self, sub: &Subscription, partition: u32) -> Result<()> {
        let acked = self.acked_ids(&sub.spec.name, partition).await?;
        let mut pipe = redis::pipe();
        for stream in &sub.streams {
            let key = self.keys().stream(stream, partition);
            let from = acked.get(&key).map_or("0", String::as_str);
            tracing::warn!(stream = %key, group = %sub.spec.name, from, "consumer group missing; recreated");
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(&sub.spec.name)
                .arg(from)
                .arg("MKSTREAM");
        }
        let mut conn = self.conn();
        for reply in conn::each(&mut conn, pipe).await? {
            if let Err(e) = reply
                && e.code() != Some("BUSYGROUP")
            {
                return Err(conn::error("XGROUP CREATE", &e));
            }
        }
        Ok(())
    }
}
