//! Dead letters and replays: the DLQ of each subscription and the replay queue (`requeue`),
//! every action recorded in the audit trail.

use edubus_core::{
    DeadLetter, DeadLetterEntry, DeadLetterQueue, DeadReason, Position, Replay, Result,
};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use crate::SqliteBackend;
use crate::audit::{SYSTEM_ACTOR, record};
use crate::clock::{int, micros, now_micros, timestamp, uint};
use crate::error::{Db, from_json};
use crate::store::first_at;
use crate::subs::{self, type_filter, with_types};

/// Page size of a DLQ list whose `limit` is 0.
const DEFAULT_LIST_LIMIT: usize = 100;

const ENTRY_COLUMNS: &str = "d.id, s.name, d.handler, d.reason, d.error, d.attempts, d.stream,
    d.partition, d.position, d.event_id, d.type, d.dead_at, d.replayed_at";

/// Parks a delivery in the subscription's DLQ (inside the settlement's savepoint).
pub(crate) fn insert_dead_letter(
    conn: &Connection,
    sub_id: i64,
    partition: u32,
    letter: &DeadLetter,
) -> Result<()> {
    let reason = serde_json::to_value(letter.reason).map_err(|e| from_json("reason", e))?;
    let attempts = serde_json::to_string(&letter.attempts).map_err(|e| from_json("attempts", e))?;
    conn.prepare_cached(
        "INSERT INTO dead_letters (subscription_id, event_id, position, type, stream, partition,
            handler, reason, error, attempts, dead_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut st| {
        st.execute(params![
            sub_id,
            letter.event_id,
            int(letter.position),
            letter.event_type,
            letter.stream,
            partition,
            letter.handler,
            reason.as_str().unwrap_or("exhausted"),
            letter.error,
            attempts,
            now_micros()
        ])
    })
    .db()?;
    Ok(())
}

/// A row selected with [`ENTRY_COLUMNS`]; the JSON columns are decoded by [`finish_entry`].
fn raw_entry(row: &Row<'_>) -> rusqlite::Result<(DeadLetterEntry, String, String)> {
    let replayed: Option<i64> = row.get(12)?;
    let entry = DeadLetterEntry {
        id: uint(row.get(0)?),
        letter: DeadLetter {
            subscription: row.get(1)?,
            handler: row.get(2)?,
            reason: DeadReason::Exhausted,
            error: row.get(4)?,
            attempts: Vec::new(),
            stream: row.get(6)?,
            partition: row.get(7)?,
            position: uint(row.get(8)?),
            event_id: row.get(9)?,
            event_type: row.get(10)?,
        },
        dead_at: timestamp(row.get(11)?),
        replayed_at: replayed.map(timestamp),
    };
    Ok((entry, row.get(3)?, row.get(5)?))
}

fn finish_entry(
    (mut entry, reason, attempts): (DeadLetterEntry, String, String),
) -> Result<DeadLetterEntry> {
    entry.letter.reason =
        serde_json::from_value(Value::String(reason)).map_err(|e| from_json("reason", e))?;
    entry.letter.attempts =
        serde_json::from_str(&attempts).map_err(|e| from_json("attempts", e))?;
    Ok(entry)
}

fn list_in(
    conn: &Connection,
    subscription: Option<&str>,
    after: u64,
    limit: usize,
) -> Result<Vec<DeadLetterEntry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM dead_letters d JOIN subscriptions s ON s.id = d.subscription_id
         WHERE (?1 IS NULL OR s.name = ?1) AND d.id > ?2 ORDER BY d.id LIMIT ?3"
    );
    let limit = if limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        limit
    };
    let mut st = conn.prepare_cached(&sql).db()?;
    let rows = st
        .query_map(
            params![subscription, int(after), int(limit as u64)],
            raw_entry,
        )
        .db()?;
    rows.map(|r| finish_entry(r.db()?)).collect()
}

fn get_in(conn: &Connection, id: u64) -> Result<Option<DeadLetterEntry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM dead_letters d JOIN subscriptions s ON s.id = d.subscription_id
         WHERE d.id = ?1"
    );
    let raw = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row([int(id)], raw_entry).optional())
        .db()?;
    raw.map(finish_entry).transpose()
}

/// Queues one DLQ entry for redelivery unless a replay of it is already queued; true if queued.
fn requeue_entry(conn: &Connection, id: u64, now: i64) -> Result<bool> {
    let queued = conn
        .prepare_cached(
            "INSERT INTO requeue (subscription_id, partition, position, queued_at, reason)
             SELECT d.subscription_id, d.partition, d.position, ?2, 'dlq.replay'
             FROM dead_letters d WHERE d.id = ?1 AND NOT EXISTS (
                SELECT 1 FROM requeue r
                WHERE r.subscription_id = d.subscription_id AND r.position = d.position)",
        )
        .and_then(|mut st| st.execute(params![int(id), now]))
        .db()?;
    conn.prepare_cached("UPDATE dead_letters SET replayed_at = ?2 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![int(id), now]))
        .db()?;
    Ok(queued == 1)
}

impl DeadLetterQueue for SqliteBackend {
    async fn list(
        &self,
        subscription: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>> {
        let name = subscription.map(str::to_owned);
        let query = name.clone();
        let entries = self
            .readers()
            .run(move |conn| list_in(conn, query.as_deref(), after, limit))
            .await?;
        let detail = json!({ "after": after, "limit": limit, "returned": entries.len() });
        let subject = name.unwrap_or_else(|| "*".into());
        self.writer()
            .call(move |tx, _| record(tx, SYSTEM_ACTOR, "dlq.list", &subject, &detail))
            .await?;
        Ok(entries)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetterEntry>> {
        let entry = self.readers().run(move |conn| get_in(conn, id)).await?;
        let detail = json!({ "found": entry.is_some() });
        self.writer()
            .call(move |tx, _| record(tx, SYSTEM_ACTOR, "dlq.get", &id.to_string(), &detail))
            .await?;
        Ok(entry)
    }

    async fn replay(&self, ids: &[u64], actor: &str) -> Result<u64> {
        let (ids, actor) = (ids.to_vec(), actor.to_owned());
        self.writer()
            .call(move |tx, _| {
                let now = now_micros();
                let mut queued = 0;
                for &id in &ids {
                    let done = requeue_entry(tx, id, now)?;
                    let detail = json!({ "queued": done });
                    record(tx, &actor, "dlq.replay", &id.to_string(), &detail)?;
                    queued += u64::from(done);
                }
                Ok(queued)
            })
            .await
    }

    async fn purge(&self, ids: &[u64], actor: &str) -> Result<u64> {
        let (ids, actor) = (ids.to_vec(), actor.to_owned());
        self.writer()
            .call(move |tx, _| {
                let mut st = tx
                    .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")
                    .db()?;
                let mut purged = 0;
                for &id in &ids {
                    let done = st.execute([int(id)]).db()? == 1;
                    let detail = json!({ "purged": done });
                    record(tx, &actor, "dlq.purge", &id.to_string(), &detail)?;
                    purged += u64::from(done);
                }
                Ok(purged)
            })
            .await
    }
}

impl Replay for SqliteBackend {
    /// Queues, in one `INSERT ... SELECT`, the subscription's matching events from `from` (or
    /// recorded since `since`) that it has already settled; events above its cursors are
    /// delivered anyway and are not queued twice.
    async fn replay(
        &self,
        subscription: &str,
        from: Position,
        since: Option<Timestamp>,
        actor: &str,
    ) -> Result<u64> {
        let (name, actor) = (subscription.to_owned(), actor.to_owned());
        self.writer()
            .call(move |tx, _| {
                let sub = subs::load(tx, &name)?;
                let sql = format!(
                    "INSERT INTO requeue (subscription_id, partition, position, queued_at, reason)
                     SELECT ?1, e.partition, e.position, ?2, 'replay'
                     FROM events e JOIN partitions p
                       ON p.subscription_id = ?1 AND p.partition = e.partition
                     WHERE e.position >= ?3 AND e.position > ?5 AND e.position <= p.cursor
                       AND (?4 IS NULL OR e.recorded_at >= ?4) AND {}
                     ORDER BY e.position",
                    type_filter("e", 6, &sub.types)
                );
                let since_us = since.map(micros);
                // Events recorded since `since` start at a position found by binary search.
                let from = match since_us {
                    Some(at) => from.max(first_at(tx, at)?),
                    None => from,
                };
                let (now, from) = (now_micros(), int(from));
                let start = int(sub.start_position);
                let args = with_types(&[&sub.id, &now, &from, &since_us, &start], &sub.types);
                let queued = tx
                    .prepare_cached(&sql)
                    .and_then(|mut st| st.execute(&*args))
                    .db()? as u64;
                let detail = json!({
                    "from": from, "since": since.map(|t| t.to_string()), "queued": queued
                });
                record(tx, &actor, "replay", &name, &detail)?;
                Ok(queued)
            })
            .await
    }
}
