//! Membership, partition leases and the takeover of a partition's pending entries.

use std::collections::HashMap;
use std::sync::PoisonError;

use edubus_core::{Attempt, ConsumerId, Lease, LeaseOptions, Result};
use jiff::Timestamp;
use redis::Script;

use crate::entry;
use crate::{RedisStreams, conn};

/// Renews a lease held with the given epoch, takes a free one when allowed, or takes a
/// stalled one (its owner reported work older than `claim_after`). Returns the epoch held
/// afterwards, or 0.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local busy_at = 0
if tonumber(ARGV[5]) >= 0 then busy_at = now - tonumber(ARGV[5]) end
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, epoch, busy = string.match(cur, '^(.*)|(%d+)|(%d+)$')
  if owner == ARGV[1] and epoch == ARGV[2] then
    redis.call('SET', KEYS[1], owner .. '|' .. epoch .. '|' .. busy_at, 'PX', ARGV[3])
    return tonumber(epoch)
  end
  local b = tonumber(busy or '0')
  if not (b > 0 and now - b > tonumber(ARGV[4])) then return 0 end
elseif ARGV[6] ~= '1' then
  return 0
end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e .. '|' .. busy_at, 'PX', ARGV[3])
return e
";

/// Deletes a lease if it is still held with this owner and epoch.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, epoch = string.match(cur, '^(.*)|(%d+)|')
  if owner == ARGV[1] and epoch == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
";

/// Heartbeats a consumer and forgets those silent for longer than the lease time-to-live;
/// returns how many are alive.
const MEMBERS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
";

/// What this process knows of a lease it holds.
#[derive(Debug)]
pub(crate) struct LeaseState {
    pub(crate) epoch: u64,
    pub(crate) consumer: String,
    /// Whether the partition's pending entries were claimed for this lease yet.
    pub(crate) claimed: bool,
    /// The next [`edubus_core::Delivery::seq`] to hand out.
    pub(crate) next_seq: u64,
    /// Per stream (by index in the subscription's streams): while this consumer's pending
    /// entries are being read back, the last id read; `None` once they all were.
    pub(crate) history: Vec<Option<String>>,
    /// Fetched, unsettled deliveries: seq to (stream index, entry id).
    pub(crate) inflight: HashMap<u64, (usize, String)>,
}

/// The result of a rebalance.
#[derive(Debug, Default)]
pub struct Rebalanced {
    /// The leases held now.
    pub leases: Vec<Lease>,
}

/// A pending entry taken over with its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claimed {
    /// The log position of its event.
    pub(crate) position: u64,
    /// The consumer that had it.
    pub(crate) previous_owner: String,
}

impl RedisStreams {
    /// Heartbeats `consumer`, renews its leases, takes stalled partitions and free ones up to
    /// its fair share, and gives up those beyond it. The first fetch of a partition taken over
    /// claims its pending entries, each with an "interrupted" attempt recorded.
    pub async fn rebalance(
        &self,
        subscription: &str,
        consumer: &ConsumerId,
        options: LeaseOptions,
        busy_since: &[(u32, Timestamp)],
    ) -> Result<Rebalanced> {
        let sub = self.subscription(subscription).await?;
        let ttl = millis(options.ttl);
        let claim_after = millis(options.claim_after);
        let mut conn = self.conn();
        let members: u64 = Script::new(MEMBERS)
            .key(self.keys().members(subscription))
            .arg(&consumer.0)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| conn::error("membership", &e))?;
        let partitions = self.partitions();
        let share = u32::try_from(u64::from(partitions).div_ceil(members.max(1))).unwrap_or(1);
        let held = self.held(subscription, &consumer.0);
        let now = Timestamp::now();
        let busy: HashMap<u32, i64> = busy_since
            .iter()
            .map(|(p, t)| (*p, now.duration_since(*t).as_millis().max(0) as i64))
            .collect();

        // EVAL, not EVALSHA: a pipeline cannot load a script a restarted server forgot.
        let mut pipe = redis::pipe();
        for p in 0..partitions {
            pipe.cmd("EVAL")
                .arg(LEASE)
                .arg(2)
                .arg(self.keys().lease(subscription, p))
                .arg(self.keys().epoch(subscription, p))
                .arg(&consumer.0)
                .arg(held.get(&p).copied().unwrap_or(0))
                .arg(ttl)
                .arg(claim_after)
                .arg(busy.get(&p).copied().unwrap_or(-1))
                .arg(0);
        }
        let epochs: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("lease renewal", &e))?;
        let mut holding: Vec<(u32, u64)> = (0..partitions)
            .zip(epochs)
            .filter(|(_, e)| *e > 0)
            .collect();

        if holding.len() > share as usize {
            let mut extra: Vec<(u32, u64)> = holding
                .iter()
                .filter(|(p, e)| held.get(p) == Some(e))
                .copied()
                .collect();
            extra.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
            extra.truncate(holding.len() - share as usize);
            for (p, e) in &extra {
                self.release_one(subscription, &consumer.0, *p, *e).await?;
            }
            holding.retain(|h| !extra.contains(h));
        }
        if holding.len() < share as usize {
            let need = share as usize - holding.len();
            let offset = edubus_core::partition_of(&consumer.0, partitions);
            let candidates: Vec<u32> = (0..partitions)
                .map(|i| (offset + i) % partitions)
                .filter(|p| !holding.iter().any(|(h, _)| h == p))
                .collect();
            let mut pipe = redis::pipe();
            for p in &candidates {
                pipe.cmd("EXISTS").arg(self.keys().lease(subscription, *p));
            }
            let taken: Vec<bool> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("EXISTS", &e))?;
            let free: Vec<u32> = candidates
                .into_iter()
                .zip(taken)
                .filter(|(_, taken)| !taken)
                .map(|(p, _)| p)
                .take(need)
                .collect();
            let mut pipe = redis::pipe();
            for p in &free {
                pipe.cmd("EVAL")
                    .arg(LEASE)
                    .arg(2)
                    .arg(self.keys().lease(subscription, *p))
                    .arg(self.keys().epoch(subscription, *p))
                    .arg(&consumer.0)
                    .arg(0)
                    .arg(ttl)
                    .arg(claim_after)
                    .arg(-1)
                    .arg(1);
            }
            let epochs: Vec<u64> = match free.is_empty() {
                true => Vec::new(),
                false => pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| conn::error("lease", &e))?,
            };
            holding.extend(free.into_iter().zip(epochs).filter(|(_, e)| *e > 0));
        }

        let mut out = Rebalanced::default();
        let fresh: Vec<(u32, u64)> = {
            let mut leases = self
                .inner
                .leases
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            leases.retain(|(s, p), state| {
                s != subscription
                    || state.consumer != consumer.0
                    || holding.contains(&(*p, state.epoch))
            });
            holding
                .iter()
                .filter(|(p, e)| {
                    leases
                        .get(&(subscription.to_owned(), *p))
                        .is_none_or(|s| s.epoch != *e)
                })
                .copied()
                .collect()
        };
        // The pending entries of a partition taken over are claimed by its first fetch, in
        // the partition's own task: claiming here would delay the renewal of every lease.
        for (p, epoch) in fresh {
            let state = LeaseState {
                epoch,
                consumer: consumer.0.clone(),
                claimed: false,
                next_seq: 1,
                history: vec![Some("0".to_owned()); sub.streams.len()],
                inflight: HashMap::new(),
            };
            self.inner
                .leases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((subscription.to_owned(), p), state);
        }
        holding.sort_unstable();
        out.leases = holding
            .into_iter()
            .map(|(partition, epoch)| Lease {
                subscription: subscription.to_owned(),
                partition,
                epoch,
                cursor: 0,
            })
            .collect();
        Ok(out)
    }

    /// Gives leases back and leaves the subscriptions' membership.
    pub async fn release(&self, consumer: &ConsumerId, leases: &[Lease]) -> Result<()> {
        for lease in leases {
            self.release_one(
                &lease.subscription,
                &consumer.0,
                lease.partition,
                lease.epoch,
            )
            .await?;
        }
        let mut subs: Vec<&str> = leases.iter().map(|l| l.subscription.as_str()).collect();
        subs.dedup();
        let mut conn = self.conn();
        for sub in subs {
            redis::cmd("ZREM")
                .arg(self.keys().members(sub))
                .arg(&consumer.0)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| conn::error("ZREM", &e))?;
        }
        Ok(())
    }

    async fn release_one(&self, sub: &str, consumer: &str, p: u32, epoch: u64) -> Result<()> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(sub.to_owned(), p));
        let mut conn = self.conn();
        Script::new(RELEASE)
            .key(self.keys().lease(sub, p))
            .arg(consumer)
            .arg(epoch)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(|e| conn::error("lease release", &e))?;
        Ok(())
    }

    /// Partitions of `subscription` this process holds for `consumer`, with their epochs.
    fn held(&self, subscription: &str, consumer: &str) -> HashMap<u32, u64> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((s, _), state)| s == subscription && state.consumer == consumer)
            .map(|((_, p), state)| (*p, state.epoch))
            .collect()
    }

    /// Claims every pending entry of partition `p` for `consumer` (`XAUTOCLAIM`) and records
    /// an interrupted attempt for each; pending entries whose stream entry is gone are
    /// remembered for [`RedisStreams::take_lost`].
    pub(crate) async fn take_over(
        &self,
        streams: &[String],
        sub: &str,
        consumer: &str,
        p: u32,
    ) -> Result<()> {
        let mut conn = self.conn();
        for stream in streams {
            let key = self.keys().stream(stream, p);
            let owners = self.pending_owners(&key, sub).await?;
            if owners.is_empty() {
                continue;
            }
            let mut start = "0-0".to_owned();
            loop {
                // JUSTID: the claim itself does not count a delivery; reading the entry back
                // from the pending list does.
                let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(sub)
                    .arg(consumer)
                    .arg(0)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("JUSTID")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| conn::error("XAUTOCLAIM", &e))?;
                let (next, ids, deleted) = autoclaim_reply(reply)?;
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("XRANGE").arg(&key).arg(id).arg(id);
                }
                let bodies: Vec<redis::Value> = if ids.is_empty() {
                    Vec::new()
                } else {
                    pipe.query_async(&mut conn)
                        .await
                        .map_err(|e| conn::error("XRANGE", &e))?
                };
                let mut claimed = Vec::new();
                for body in bodies {
                    for e in entry::entries_of(body)? {
                        let Some(position) = e.position() else {
                            continue;
                        };
                        let previous_owner = owners.get(&e.id).cloned().unwrap_or_default();
                        claimed.push(Claimed {
                            position,
                            previous_owner,
                        });
                    }
                }
                self.record_interrupted(sub, consumer, &claimed).await?;
                if !deleted.is_empty() {
                    self.inner
                        .lost
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(deleted.into_iter().map(|id| (key.clone(), id)));
                }
                if next == "0-0" {
                    break;
                }
                start = next;
            }
        }
        Ok(())
    }

    /// The owner of each pending entry of a stream's group.
    async fn pending_owners(&self, key: &str, group: &str) -> Result<HashMap<String, String>> {
        let mut conn = self.conn();
        let mut owners = HashMap::new();
        let mut start = "-".to_owned();
        loop {
            let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(key)
                .arg(group)
                .arg(&start)
                .arg("+")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("XPENDING", &e))?;
            let done = rows.len() < 1000;
            if let Some(last) = rows.last() {
                start = format!("({}", last.0);
            }
            owners.extend(rows.into_iter().map(|(id, owner, _, _)| (id, owner)));
            if done {
                return Ok(owners);
            }
        }
    }

    async fn record_interrupted(
        &self,
        sub: &str,
        consumer: &str,
        claimed: &[Claimed],
    ) -> Result<()> {
        if claimed.is_empty() {
            return Ok(());
        }
        let positions: Vec<u64> = claimed.iter().map(|c| c.position).collect();
        let mut histories = self.failures_of(sub, &positions).await?;
        let at = Timestamp::now();
        for (c, history) in claimed.iter().zip(histories.iter_mut()) {
            let number = u32::try_from(history.len() + 1).unwrap_or(u32::MAX);
            history.push(Attempt {
                number,
                at,
                consumer: c.previous_owner.clone(),
                error: format!(
                    "interrupted: {consumer} took the delivery over from {}",
                    c.previous_owner
                ),
            });
        }
        self.store_failures(sub, &positions, &histories).await
    }
}

/// `XAUTOCLAIM ... JUSTID` reply: next start id, claimed ids, and (Redis 7) ids dropped from
/// the pending list because their entries no longer exist.
fn autoclaim_reply(value: redis::Value) -> Result<(String, Vec<String>, Vec<String>)> {
    let redis::Value::Array(parts) = value else {
        return Err(entry::unexpected("XAUTOCLAIM", &value));
    };
    let mut parts = parts.into_iter();
    let next = entry::string(parts.next().unwrap_or(redis::Value::Nil))?;
    let mut ids = || -> Result<Vec<String>> {
        match parts.next() {
            Some(redis::Value::Array(ids)) => ids.into_iter().map(entry::string).collect(),
            _ => Ok(Vec::new()),
        }
    };
    let claimed = ids()?;
    let deleted = ids()?;
    Ok((next, claimed, deleted))
}

pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
