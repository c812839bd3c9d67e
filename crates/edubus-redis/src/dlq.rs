//! Dead-letter streams, one per subscription, with ids `0-<n>` unique across subscriptions.

use std::collections::HashMap;

use edubus_core::{DeadLetter, DeadLetterEntry, DeadReason, Error, Lease, Recorded, Result};
use jiff::Timestamp;
use redis::{ToRedisArgs, Value};

use crate::entry::{self, Entry, parse_id};
use crate::{RedisStreams, conn};

/// A dead-letter entry with the event it holds, for replay.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// The entry as listed.
    pub entry: DeadLetterEntry,
    /// The event, when it could be read.
    pub event: Option<Recorded>,
}

/// Attempts to park one dead letter when other letters keep overtaking it.
const PARK_TRIES: usize = 16;

/// Whether XADD refused an explicit id because the stream already holds a higher one.
/// (A pipeline reports it inside its own error, so the text is searched.)
fn overtaken(e: &redis::RedisError) -> bool {
    e.to_string()
        .contains("equal or smaller than the target stream top item")
}

impl RedisStreams {
    /// Parks `event` in the DLQ of `letter.subscription`; returns the entry id.
    pub async fn dead_letter(&self, letter: &DeadLetter, event: &Recorded) -> Result<u64> {
        self.park(letter, entry::Fields::new(event)).await
    }

    /// Adds `fields`, the dead letter and the time to the subscription's DLQ stream.
    ///
    /// The id comes from a counter shared by all subscriptions, so two letters parked at once
    /// may reach one stream out of order: the later-numbered one lands first and the other
    /// takes a new id ([`PARK_TRIES`] at most). Ids stay unique, with gaps; the index entry
    /// written beside a refused id finds no letter.
    async fn park(&self, letter: &DeadLetter, fields: impl ToRedisArgs) -> Result<u64> {
        let json = serde_json::to_string(letter)
            .map_err(|e| Error::internal("cannot encode a dead letter", e.to_string()))?;
        let mut conn = self.conn();
        let mut tries = 0;
        loop {
            let id: u64 = redis::cmd("INCR")
                .arg(self.keys().dlq_seq())
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("INCR", &e))?;
            let mut pipe = redis::pipe();
            pipe.cmd("XADD")
                .arg(self.keys().dlq(&letter.subscription))
                .arg(format!("0-{id}"))
                .arg(&fields)
                .arg("letter")
                .arg(&json)
                .arg("at")
                .arg(Timestamp::now().as_microsecond())
                .ignore()
                .cmd("HSET")
                .arg(self.keys().dlq_index())
                .arg(id)
                .arg(&letter.subscription)
                .ignore();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => return Ok(id),
                Err(e) if tries + 1 < PARK_TRIES && overtaken(&e) => tries += 1,
                Err(e) => return Err(conn::error("XADD", &e)),
            }
        }
    }

    /// Dead-letters an entry that cannot be read as an event, and acknowledges it.
    pub(crate) async fn dead_letter_unreadable(
        &self,
        lease: &Lease,
        key: &str,
        e: &Entry,
        error: &Error,
    ) -> Result<()> {
        let letter = DeadLetter {
            subscription: lease.subscription.clone(),
            handler: format!("{}/-", lease.subscription),
            reason: DeadReason::Undecodable,
            error: error.to_string(),
            attempts: Vec::new(),
            stream: self.keys().stream_name(key).unwrap_or(key).to_owned(),
            partition: lease.partition,
            position: e.position().unwrap_or(0),
            event_id: String::new(),
            event_type: String::new(),
        };
        let raw: Vec<(&'static str, String)> = e
            .fields
            .iter()
            .flatten()
            .map(|(k, v)| (raw_name(k), String::from_utf8_lossy(v).into_owned()))
            .collect();
        tracing::warn!(stream = key, id = %e.id, %error, "unreadable entry dead-lettered");
        self.park(&letter, raw).await?;
        let mut conn = self.conn();
        redis::cmd("XACK")
            .arg(key)
            .arg(&lease.subscription)
            .arg(&e.id)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| conn::error("XACK", &e))
    }

    /// Entries of one subscription's DLQ or all, oldest first, after id `after`.
    pub async fn dlq_list(
        &self,
        subscription: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        let subs: Vec<String> = match subscription {
            Some(s) => vec![s.to_owned()],
            None => self
                .subscriptions()
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect(),
        };
        let mut conn = self.conn();
        let mut out = Vec::new();
        for sub in subs {
            let reply: Value = redis::cmd("XRANGE")
                .arg(self.keys().dlq(&sub))
                .arg(format!("(0-{after}"))
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("XRANGE", &e))?;
            for e in entry::entries_of(reply)? {
                out.push(self.record_of(&e)?);
            }
        }
        out.sort_by_key(|r| r.entry.id);
        out.truncate(limit.max(1));
        self.with_replayed(&mut out).await?;
        Ok(out)
    }

    /// One dead-letter entry.
    pub async fn dlq_get(&self, id: u64) -> Result<Option<DeadLetterRecord>> {
        let mut conn = self.conn();
        let sub: Option<String> = redis::cmd("HGET")
            .arg(self.keys().dlq_index())
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("HGET", &e))?;
        let Some(sub) = sub else { return Ok(None) };
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.keys().dlq(&sub))
            .arg(format!("0-{id}"))
            .arg(format!("0-{id}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("XRANGE", &e))?;
        let Some(e) = entry::entries_of(reply)?.into_iter().next() else {
            return Ok(None);
        };
        let mut records = vec![self.record_of(&e)?];
        self.with_replayed(&mut records).await?;
        Ok(records.pop())
    }

    /// Queues dead letters for redelivery to their own subscription; returns how many.
    pub async fn dlq_replay(&self, ids: &[u64]) -> Result<u64> {
        let mut queued = 0;
        for id in ids {
            let record = self
                .dlq_get(*id)
                .await?
                .ok_or_else(|| Error::not_found("dead letter", id.to_string()))?;
            let event = record.event.ok_or_else(|| {
                Error::invalid(format!(
                    "dead letter {id} holds no readable event and cannot be replayed"
                ))
            })?;
            queued += self
                .requeue(&record.entry.letter.subscription, &[event])
                .await?;
            let mut conn = self.conn();
            redis::cmd("HSET")
                .arg(self.keys().dlq_replayed())
                .arg(id)
                .arg(Timestamp::now().as_microsecond())
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| conn::error("HSET", &e))?;
        }
        Ok(queued)
    }

    /// Deletes dead letters; returns how many existed.
    pub async fn dlq_purge(&self, ids: &[u64]) -> Result<u64> {
        let mut conn = self.conn();
        let mut purged = 0;
        for id in ids {
            let sub: Option<String> = redis::cmd("HGET")
                .arg(self.keys().dlq_index())
                .arg(id)
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("HGET", &e))?;
            let Some(sub) = sub else { continue };
            let mut pipe = redis::pipe();
            pipe.cmd("XDEL")
                .arg(self.keys().dlq(&sub))
                .arg(format!("0-{id}"))
                .cmd("HDEL")
                .arg(self.keys().dlq_index())
                .arg(id)
                .ignore()
                .cmd("HDEL")
                .arg(self.keys().dlq_replayed())
                .arg(id)
                .ignore();
            let (deleted,): (u64,) = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| conn::error("XDEL", &e))?;
            purged += deleted;
        }
        Ok(purged)
    }

    /// Entries in a subscription's DLQ.
    pub async fn dlq_depth(&self, subscription: &str) -> Result<u64> {
        let mut conn = self.conn();
        redis::cmd("XLEN")
            .arg(self.keys().dlq(subscription))
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("XLEN", &e))
    }

    /// The DLQ entry ids of a subscription by event id (for `edubus trace`).
    pub async fn dead_letters_by_event(&self, subscription: &str) -> Result<HashMap<String, u64>> {
        let records = self
            .dlq_list(Some(subscription), 0, usize::MAX >> 1)
            .await?;
        Ok(records
            .into_iter()
            .map(|r| (r.entry.letter.event_id, r.entry.id))
            .collect())
    }

    fn record_of(&self, e: &Entry) -> Result<DeadLetterRecord> {
        let id = parse_id(&e.id).map_or(0, |(_, seq)| seq);
        let field = |name: &str| {
            e.fields
                .iter()
                .flatten()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let letter: DeadLetter = serde_json::from_slice(field("letter").unwrap_or_default())
            .map_err(|err| {
                Error::internal(format!("dead letter {id} is unreadable"), err.to_string())
            })?;
        let dead_at = field("at")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .and_then(|us| Timestamp::from_microsecond(us).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Ok(DeadLetterRecord {
            event: e.recorded(self.partitions()).ok(),
            entry: DeadLetterEntry {
                id,
                letter,
                dead_at,
                replayed_at: None,
            },
        })
    }

    async fn with_replayed(&self, records: &mut [DeadLetterRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = records.iter().map(|r| r.entry.id).collect();
        let mut conn = self.conn();
        let at: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.keys().dlq_replayed())
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(|e| conn::error("HMGET", &e))?;
        for (r, at) in records.iter_mut().zip(at) {
            r.entry.replayed_at = at.and_then(|us| Timestamp::from_microsecond(us).ok());
        }
        Ok(())
    }
}

/// Field names of an unreadable entry kept as they were, under a `raw.` prefix.
fn raw_name(name: &str) -> &'static str {
    match name {
        "p" => "p",
        "k" => "raw.k",
        "t" => "raw.t",
        "s" => "raw.s",
        "e" => "raw.e",
        _ => "raw.other",
    }
}
