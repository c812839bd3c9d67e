//! Subscription health from `XINFO GROUPS`, and retention by `XTRIM MINID`.

use std::collections::HashMap;

use edubus_core::{Result, SubscriptionStats};
use jiff::Timestamp;
use redis::Value;

use crate::entry::{self, next_id, parse_id};
use crate::{RedisStreams, conn};

/// What `XINFO GROUPS` says of one group on one stream.
#[derive(Debug, Clone, Default)]
struct GroupInfo {
    pending: u64,
    last_delivered: String,
    /// `None` when Redis cannot tell (entries deleted in between).
    lag: Option<u64>,
}

impl RedisStreams {
    /// Health of every registered subscription: lag (with queued replays) and pending summed
    /// over its streams' partitions, DLQ depth, live consumers, leased partitions and the
    /// newest event time.
    pub async fn stats(&self) -> Result<Vec<SubscriptionStats>> {
        let specs = self.subscriptions().await?;
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            let sub = self.subscription(&spec.name).await?;
            let mut keys = Vec::new();
            for stream in &sub.streams {
                for p in 0..self.partitions() {
                    keys.push(self.keys().stream(stream, p));
                }
            }
            let groups = self.groups(&keys).await?;
            let (mut lag, mut pending) = (0u64, 0u64);
            for (key, groups) in &groups {
                if let Some(g) = groups.get(&spec.name) {
                    pending += g.pending;
                    lag += match g.lag {
                        Some(l) => l,
                        None => self.undelivered(key, &g.last_delivered).await?,
                    };
                }
            }
            let mut conn = self.conn();
            let mut pipe = redis::pipe();
            pipe.cmd("ZCARD").arg(self.keys().members(&spec.name));
            pipe.cmd("XLEN").arg(self.keys().dlq(&spec.name));
            for p in 0..self.partitions() {
                pipe.cmd("EXISTS").arg(self.keys().lease(&spec.name, p));
            }
            for p in 0..self.partitions() {
                pipe.cmd("XLEN").arg(self.keys().replay(&spec.name, p));
            }
            for key in &keys {
                pipe.cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("stats", &e))?;
            let mut it = replies.into_iter();
            let consumers = it.next().as_ref().and_then(entry::int).unwrap_or(0);
            let dlq_depth = it.next().as_ref().and_then(entry::int).unwrap_or(0);
            let partitions = self.partitions() as usize;
            let leased = it
                .by_ref()
                .take(partitions)
                .filter(|v| entry::int(v) == Some(1))
                .count();
            // Queued replays are deliveries still to make.
            lag += it
                .by_ref()
                .take(partitions)
                .filter_map(|v| entry::int(&v))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .sum::<u64>();
            let mut last: Option<(u64, u64)> = None;
            for v in it {
                if let Some(e) = entry::entries_of(v)?.into_iter().next() {
                    last = last.max(parse_id(&e.id));
                }
            }
            out.push(SubscriptionStats {
                subscription: spec.name.clone(),
                lag,
                pending,
                dlq_depth: u64::try_from(dlq_depth).unwrap_or(0),
                consumers: u32::try_from(consumers).unwrap_or(0),
                leased_partitions: u32::try_from(leased).unwrap_or(0),
                last_event_at: last
                    .and_then(|(ms, _)| Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()),
            });
        }
        Ok(out)
    }

    /// Trims every stream partition to entries recorded at or after `before`, never past the
    /// oldest entry some group has not acknowledged (or not yet received), and the inboxes to
    /// ids settled at or after it; returns how many stream entries were removed.
    pub async fn trim(&self, before: Timestamp) -> Result<u64> {
        let cutoff = (u64::try_from(before.as_millisecond()).unwrap_or(0), 0u64);
        let mut keys = Vec::new();
        for stream in self.all_streams() {
            for p in 0..self.partitions() {
                keys.push(self.keys().stream(&stream, p));
            }
        }
        let groups = self.groups(&keys).await?;
        let mut conn = self.conn();
        let mut removed = 0u64;
        for (key, groups) in groups {
            let mut bound = cutoff;
            for (name, g) in &groups {
                let keep_from = if g.pending > 0 {
                    let summary: Value = redis::cmd("XPENDING")
                        .arg(&key)
                        .arg(name)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| conn::error("XPENDING", &e))?;
                    oldest_pending(summary)
                } else {
                    next_id(&g.last_delivered)
                };
                if let Some(id) = keep_from.as_deref().and_then(parse_id) {
                    bound = bound.min(id);
                }
            }
            if bound == (0, 0) {
                continue;
            }
            let n: u64 = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg(format!("{}-{}", bound.0, bound.1))
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("XTRIM", &e))?;
            removed += n;
        }
        self.trim_inboxes(cutoff.0).await?;
        Ok(removed)
    }

    /// Forgets inbox members recorded before `cutoff_ms`, in every subscription's partitions.
    async fn trim_inboxes(&self, cutoff_ms: u64) -> Result<()> {
        let subscriptions = self.subscriptions().await?;
        if subscriptions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for spec in subscriptions {
            for p in 0..self.partitions() {
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(self.keys().inbox(&spec.name, p))
                    .arg("-inf")
                    .arg(format!("({cutoff_ms}"))
                    .ignore();
            }
        }
        let mut conn = self.conn();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("ZREMRANGEBYSCORE", &e))
    }

    /// The groups of each existing stream key, by name.
    async fn groups(&self, keys: &[String]) -> Result<Vec<(String, HashMap<String, GroupInfo>)>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("XINFO").arg("GROUPS").arg(key);
        }
        let mut conn = self.conn();
        let replies = conn::each(&mut conn, pipe).await?;
        let mut out = Vec::new();
        for (key, reply) in keys.iter().zip(replies) {
            // A stream nobody published to or registered for does not exist: nothing to say.
            let Ok(Value::Array(groups)) = reply else {
                continue;
            };
            let parsed = groups.into_iter().filter_map(group_info).collect();
            out.push((key.clone(), parsed));
        }
        Ok(out)
    }

    /// Entries after `last_delivered` (when Redis does not report a group's lag).
    async fn undelivered(&self, key: &str, last_delivered: &str) -> Result<u64> {
        let mut conn = self.conn();
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("({last_delivered}"))
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("XRANGE", &e))?;
        Ok(u64::try_from(entry::entries_of(reply)?.len()).unwrap_or(0))
    }
}

fn group_info(value: Value) -> Option<(String, GroupInfo)> {
    let pairs: Vec<(String, Value)> = match value {
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((entry::string(k).ok()?, v));
            }
            out
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((entry::string(k).ok()?, v)))
            .collect(),
        _ => return None,
    };
    let mut name = None;
    let mut info = GroupInfo::default();
    for (k, v) in pairs {
        match k.as_str() {
            "name" => name = entry::string(v).ok(),
            "pending" => info.pending = entry::int(&v).and_then(|i| u64::try_from(i).ok())?,
            "last-delivered-id" => info.last_delivered = entry::string(v).ok()?,
            "lag" => info.lag = entry::int(&v).and_then(|i| u64::try_from(i).ok()),
            _ => {}
        }
    }
    Some((name?, info))
}

/// The smallest id of an `XPENDING key group` summary.
fn oldest_pending(summary: Value) -> Option<String> {
    match summary {
        Value::Array(parts) => parts.into_iter().nth(1).and_then(|v| entry::string(v).ok()),
        _ => None,
    }
}
