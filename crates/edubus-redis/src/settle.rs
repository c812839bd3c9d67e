//! Fenced acknowledgement, failed attempts and the replay queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use edubus_core::{Attempt, Delivery, Error, Lease, Recorded, Result};
use jiff::Timestamp;
use redis::Script;

use crate::entry::{self, parse_id};
use crate::{RedisStreams, conn};

/// Checks that the lease is still held with its epoch, then acknowledges entries per stream,
/// remembers the highest id acknowledged per stream, deletes settled replay entries and
/// records handled event ids in the inbox, scored by the settling process's clock (ms).
/// KEYS: lease, acked hash, replay stream, inbox, stream keys...; ARGV: owner, epoch, group,
/// then per stream key: count, ids..., highest id (when count > 0); then replay count, replay
/// ids...; then inbox count, (score, event id) pairs... Lists are passed to commands with
/// `unpack` ranges of ARGV: building Lua tables of them cost Redis more than the commands.
const ACK: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return redis.error_reply('STALE the lease expired') end
local owner, epoch = string.match(cur, '^(.*)|(%d+)|')
if owner ~= ARGV[1] or epoch ~= ARGV[2] then
  return redis.error_reply('STALE the lease was taken over by ' .. owner .. ' (epoch ' .. epoch .. ')')
end
local a = 4
for k = 5, #KEYS do
  local n = tonumber(ARGV[a]); a = a + 1
  if n > 0 then
    redis.call('XACK', KEYS[k], ARGV[3], unpack(ARGV, a, a + n - 1))
    a = a + n
    redis.call('HSET', KEYS[2], KEYS[k], ARGV[a]); a = a + 1
  end
end
local r = tonumber(ARGV[a]); a = a + 1
for i = 1, r do redis.call('XDEL', KEYS[3], ARGV[a]); a = a + 1 end
local h = tonumber(ARGV[a]); a = a + 1
if h > 0 then
  redis.call('ZADD', KEYS[4], unpack(ARGV, a, a + 2 * h - 1))
end
return 1
";

/// The [`ACK`] script, hashed once: every settlement runs it.
static ACK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACK));

/// A failed-attempt history as stored in the failures hash (none when the field is absent).
pub(crate) fn attempts(json: Option<String>) -> Result<Vec<Attempt>> {
    match json {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| Error::internal("a failed-attempt history is unreadable", e.to_string())),
    }
}

impl RedisStreams {
    /// Fails with `Conflict` unless this process still holds the lease with its epoch.
    pub async fn check_lease(&self, lease: &Lease) -> Result<()> {
        self.ack(lease, &[], &[], &[]).await
    }

    /// Acknowledges fetched deliveries (by seq) and settled replay entries (by requeue id),
    /// and records `handled` event ids in the subscription's inbox of the partition,
    /// atomically and only while the lease is held with its epoch (`Conflict` otherwise).
    pub async fn ack(
        &self,
        lease: &Lease,
        seqs: &[u64],
        requeue_ids: &[u64],
        handled: &[&str],
    ) -> Result<()> {
        let sub = self.subscription(&lease.subscription).await?;
        let (consumer, picked) = self.with_state(lease, |s| {
            let picked: Vec<(usize, String)> = seqs
                .iter()
                .filter_map(|seq| s.inflight.get(seq).cloned())
                .collect();
            (s.consumer.clone(), picked)
        })?;
        let mut by_stream: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, id) in picked {
            by_stream.entry(i).or_default().push(id);
        }
        let p = lease.partition;
        let mut call = ACK_SCRIPT.prepare_invoke();
        call.key(self.keys().lease(&lease.subscription, p))
            .key(self.acked_key(&lease.subscription, p))
            .key(self.keys().replay(&lease.subscription, p))
            .key(self.keys().inbox(&lease.subscription, p))
            .arg(&consumer)
            .arg(lease.epoch)
            .arg(&lease.subscription);
        for (i, ids) in &by_stream {
            call.key(self.keys().stream(&sub.streams[*i], p));
            call.arg(ids.len()).arg(ids);
            let highest = ids
                .iter()
                .max_by_key(|id| parse_id(id))
                .cloned()
                .unwrap_or_default();
            call.arg(highest);
        }
        call.arg(requeue_ids.len());
        for id in requeue_ids {
            call.arg(format!("0-{id}"));
        }
        call.arg(handled.len());
        let now = Timestamp::now().as_millisecond();
        for id in handled {
            call.arg(now).arg(*id);
        }
        let mut conn = self.conn();
        match call.invoke_async::<i64>(&mut conn).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("STALE") => {
                return Err(Error::conflict(format!(
                    "partition {p} of `{}`: {}",
                    lease.subscription,
                    e.detail().unwrap_or("the lease moved")
                )));
            }
            Err(e) => return Err(conn::error("XACK", &e)),
        }
        self.with_state(lease, |s| {
            for seq in seqs {
                s.inflight.remove(seq);
            }
        })
        .ok();
        Ok(())
    }

    /// Of these `(partition, event id)` pairs, those whose id is in `subscription`'s inbox of
    /// that partition.
    pub async fn handled<'a>(
        &self,
        subscription: &str,
        events: &[(u32, &'a str)],
    ) -> Result<Vec<&'a str>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (partition, id) in events {
            pipe.cmd("ZSCORE")
                .arg(self.keys().inbox(subscription, *partition))
                .arg(*id);
        }
        let mut conn = self.conn();
        let scores: Vec<Option<f64>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("ZSCORE", &e))?;
        Ok(events
            .iter()
            .zip(scores)
            .filter(|(_, score)| score.is_some())
            .map(|((_, id), _)| *id)
            .collect())
    }

    pub(crate) fn acked_key(&self, subscription: &str, partition: u32) -> String {
        format!("{}:acked", self.keys().lease(subscription, partition))
    }

    /// The highest id the subscription acknowledged per stream key of a partition.
    pub(crate) async fn acked_ids(
        &self,
        subscription: &str,
        partition: u32,
    ) -> Result<HashMap<String, String>> {
        let mut conn = self.conn();
        redis::cmd("HGETALL")
            .arg(self.acked_key(subscription, partition))
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("HGETALL", &e))
    }

    /// Records a failed attempt of the delivery of `position`.
    pub async fn record_failure(
        &self,
        subscription: &str,
        position: u64,
        attempt: Attempt,
    ) -> Result<()> {
        let mut history = self
            .failures_of(subscription, &[position])
            .await?
            .pop()
            .unwrap_or_default();
        history.push(attempt);
        self.store_failures(subscription, &[position], &[history])
            .await
    }

    /// The failed attempts recorded for the delivery of `position`, oldest first.
    pub async fn failures(&self, subscription: &str, position: u64) -> Result<Vec<Attempt>> {
        Ok(self
            .failures_of(subscription, &[position])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// Of `positions`, those whose deliveries this process saw failed attempts recorded for
    /// (recorded here, or read when fetched): only those need [`Self::clear_failures`].
    pub fn known_failed(&self, subscription: &str, positions: &[u64]) -> Vec<u64> {
        let failed = self.failed();
        let Some(known) = failed.get(subscription) else {
            return Vec::new();
        };
        positions
            .iter()
            .copied()
            .filter(|p| known.contains(p))
            .collect()
    }

    /// Remembers deliveries with failed attempts recorded.
    pub(crate) fn note_failed(&self, subscription: &str, positions: impl Iterator<Item = u64>) {
        let mut failed = self.failed();
        let known = match failed.get_mut(subscription) {
            Some(known) => known,
            None => failed.entry(subscription.to_owned()).or_default(),
        };
        known.extend(positions);
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<u64>>> {
        self.inner
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the failed attempts of settled deliveries.
    pub async fn clear_failures(&self, subscription: &str, positions: &[u64]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        if let Some(known) = self.failed().get_mut(subscription) {
            for p in positions {
                known.remove(p);
            }
        }
        let mut conn = self.conn();
        redis::cmd("HDEL")
            .arg(self.keys().failures(subscription))
            .arg(positions)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("HDEL", &e))
    }

    pub(crate) async fn failures_of(
        &self,
        subscription: &str,
        positions: &[u64],
    ) -> Result<Vec<Vec<Attempt>>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys().failures(subscription))
            .arg(positions)
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("HMGET", &e))?;
        raw.into_iter().map(attempts).collect()
    }

    pub(crate) async fn store_failures(
        &self,
        subscription: &str,
        positions: &[u64],
        histories: &[Vec<Attempt>],
    ) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        self.note_failed(subscription, positions.iter().copied());
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys().failures(subscription));
        for (p, h) in positions.iter().zip(histories) {
            let json = serde_json::to_string(h)
                .map_err(|e| Error::internal("cannot encode attempts", e.to_string()))?;
            cmd.arg(p).arg(json);
        }
        let mut conn = self.conn();
        cmd.query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("HSET", &e))
    }

    /// Queues events for redelivery to `subscription` only, marked `replay`; returns how
    /// many were queued. Each queue entry takes the next id of its partition's queue (`0-*`):
    /// ids taken from one shared counter reached a queue out of order when two replays ran at
    /// once, and Redis refused the lower one.
    pub async fn requeue(&self, subscription: &str, events: &[Recorded]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        self.subscription(subscription).await?;
        let mut pipe = redis::pipe();
        for event in events {
            let partition = edubus_core::partition_of(&event.key, self.partitions());
            pipe.cmd("XADD")
                .arg(self.keys().replay(subscription, partition))
                .arg("0-*")
                .arg(entry::Fields::new(event))
                .ignore();
        }
        let mut conn = self.conn();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("XADD", &e))?;
        Ok(u64::try_from(events.len()).unwrap_or(u64::MAX))
    }

    /// Replay-queue entries of the lease's partition with an id above `after`.
    pub(crate) async fn requeued(
        &self,
        lease: &Lease,
        after: u64,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        let mut conn = self.conn();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys().replay(&lease.subscription, lease.partition))
            .arg(format!("(0-{after}"))
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("XRANGE", &e))?;
        self.replays(reply)
    }

    /// Deliveries of the replay-queue entries of an `XRANGE` reply.
    pub(crate) fn replays(&self, reply: redis::Value) -> Result<Vec<Delivery>> {
        let received_at = Timestamp::now();
        entry::entries_of(reply)?
            .into_iter()
            .map(|e| {
                let requeue_id = parse_id(&e.id).map(|(_, seq)| seq);
                let mut event = e.recorded(self.partitions())?;
                event.envelope.replay = Some(true);
                Ok(Delivery {
                    event,
                    seq: 0,
                    delivery_count: 1,
                    replay: true,
                    requeue_id,
                    received_at,
                    handled: false,
                })
            })
            .collect()
    }
}
