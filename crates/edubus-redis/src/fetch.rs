//! Fetching deliveries of a leased partition: queued replays first, then this consumer's own
//! pending entries (after a takeover or restart), then new entries with a blocking read.

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;

use edubus_core::{Delivery, Error, Fetched, Lease, Result};
use jiff::Timestamp;
use redis::{Script, Value};

use crate::entry::{self, Entry};
use crate::{RedisStreams, Subscription, conn};

/// Reads new entries for `consumer` only while it holds the lease with its epoch.
/// KEYS: lease, stream keys...; ARGV: consumer, epoch, group, count. Returns the
/// `XREADGROUP` reply, or `EMPTY` followed by each stream's last id when nothing is new.
const READ: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return redis.error_reply('STALE the lease expired') end
local owner, epoch = string.match(cur, '^(.*)|(%d+)|')
if owner ~= ARGV[1] or epoch ~= ARGV[2] then
  return redis.error_reply('STALE the lease was taken over by ' .. owner .. ' (epoch ' .. epoch .. ')')
end
local args = {'XREADGROUP', 'GROUP', ARGV[3], ARGV[1], 'COUNT', ARGV[4], 'STREAMS'}
for k = 2, #KEYS do args[#args + 1] = KEYS[k] end
for k = 2, #KEYS do args[#args + 1] = '>' end
local reply = redis.call(unpack(args))
if reply then return reply end
local last = {'EMPTY'}
for k = 2, #KEYS do
  local top = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
  if top[1] then last[#last + 1] = top[1][1] else last[#last + 1] = '0-0' end
end
return last
";

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
    /// Up to `max` deliveries of the lease's partition: replay-queue entries with an id above
    /// `after_requeue`, else this consumer's pending entries, else new entries (waiting up to
    /// the configured block time for some). `handled` is left false: the inbox is not here.
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
        let replays = self.requeued(lease, after_requeue, max).await?;
        if !replays.is_empty() {
            return Ok(Fetched {
                deliveries: replays,
                scanned_to: after,
            });
        }
        let read = async {
            let mut deliveries = Vec::new();
            if history.iter().any(Option::is_some) {
                deliveries = self.history(&sub, lease, &consumer, history, max).await?;
            }
            if deliveries.is_empty() {
                deliveries = self.fresh(&sub, lease, &consumer, max).await?;
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
        let scanned_to = deliveries.last().map_or(after, |d| d.seq.max(after));
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

    /// New entries, waiting up to the block time on a dedicated connection.
    async fn fresh(
        &self,
        sub: &Subscription,
        lease: &Lease,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        let keys: Vec<String> = sub
            .streams
            .iter()
            .map(|s| self.keys().stream(s, lease.partition))
            .collect();
        let reply = match self.fenced_read(sub, lease, consumer, &keys, max).await? {
            Read::Entries(reply) => reply,
            Read::NoGroup => return Ok(Vec::new()),
            Read::Empty(last_ids) => {
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
                match self.fenced_read(sub, lease, consumer, &keys, max).await? {
                    Read::Entries(reply) => reply,
                    Read::NoGroup | Read::Empty(_) => return Ok(Vec::new()),
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
        self.deliveries(lease, per_stream, |_| 1).await
    }

    /// New entries for this consumer, read only while it holds the lease with its epoch: a
    /// consumer that lost the lease must not move entries into its own pending list, where the
    /// new owner would not look (`Conflict` then).
    async fn fenced_read(
        &self,
        sub: &Subscription,
        lease: &Lease,
        consumer: &str,
        keys: &[String],
        max: usize,
    ) -> Result<Read> {
        let script = Script::new(READ);
        let mut call = script.prepare_invoke();
        call.key(self.keys().lease(&lease.subscription, lease.partition))
            .key(keys)
            .arg(consumer)
            .arg(lease.epoch)
            .arg(&sub.spec.name)
            .arg(max);
        let mut conn = self.conn();
        match call.invoke_async::<Value>(&mut conn).await {
            Ok(Value::Array(mut items))
                if items.first() == Some(&Value::BulkString(b"EMPTY".to_vec())) =>
            {
                let last: Vec<String> = items
                    .drain(1..)
                    .map(|v| entry::string(v).unwrap_or_else(|_| "$".to_owned()))
                    .collect();
                Ok(Read::Empty(last))
            }
            Ok(reply) => Ok(Read::Entries(reply)),
            Err(e) if e.code() == Some("STALE") => Err(Error::conflict(format!(
                "partition {} of `{}`: {}",
                lease.partition,
                lease.subscription,
                e.detail().unwrap_or("the lease moved")
            ))),
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                self.recreate_groups(sub, lease.partition).await?;
                Ok(Read::NoGroup)
            }
            Err(e) => Err(conn::error("XREADGROUP", &e)),
        }
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
        let positions: Vec<u64> = ordered
            .iter()
            .filter_map(|(_, _, e)| e.position())
            .collect();
        let failures = self.failures_of(&lease.subscription, &positions).await?;
        let failed: HashMap<u64, u32> = positions
            .iter()
            .zip(&failures)
            .map(|(p, f)| (*p, u32::try_from(f.len()).unwrap_or(u32::MAX)))
            .collect();
        let mut out = Vec::with_capacity(ordered.len());
        let mut unreadable = Vec::new();
        let received_at = Timestamp::now();
        for (i, key, e) in ordered {
            match e.recorded(partitions) {
                Ok(event) => {
                    let recorded = failed.get(&event.position).copied().unwrap_or(0);
                    let delivery_count = count_of(&e).max(recorded.saturating_add(1));
                    out.push((i, e.id, event, delivery_count));
                }
                Err(error) => unreadable.push((key, e, error)),
            }
        }
        for (key, e, error) in unreadable {
            self.dead_letter_unreadable(lease, &key, &e, &error).await?;
        }
        self.with_state(lease, |state| {
            out.into_iter()
                .map(|(i, id, event, delivery_count)| {
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.inflight.insert(seq, (i, id));
                    Delivery {
                        event,
                        seq,
                        delivery_count,
                        replay: false,
                        requeue_id: None,
                        received_at,
                        handled: false,
                    }
                })
                .collect()
        })
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
