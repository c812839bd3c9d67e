//! Retention: deletes old events every subscription has settled, in short writer commands so
//! trimming a large log never holds the write lock for long.

use edubus_core::Result;
use jiff::Timestamp;
use rusqlite::{Connection, params};

use crate::SqliteBackend;
use crate::clock::{int, micros, uint};
use crate::error::Db;
use crate::keys;
use crate::store::first_at;

/// Positions examined per writer command.
const CHUNK: u64 = 5000;

/// An event is kept while a subscription that receives it has not settled it (its cursor is
/// below it), or a failure history, replay entry or dead letter refers to it.
const TRIMMABLE: &str = "
SELECT position FROM events WHERE position > ?1 AND position <= ?2 AND recorded_at < ?3
  AND NOT EXISTS (
    SELECT 1 FROM partitions p JOIN subscriptions s ON s.id = p.subscription_id
    WHERE p.partition = events.partition AND events.position > p.cursor
      AND (s.types = '[]' OR events.type IN (SELECT value FROM json_each(s.types))))
  AND NOT EXISTS (SELECT 1 FROM failures f WHERE f.position = events.position)
  AND NOT EXISTS (SELECT 1 FROM requeue r WHERE r.position = events.position)
  AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.position = events.position)";

/// Inbox rows older than the retention that the cursor has made redundant; rows still above a
/// cursor keep deduplicating and stay.
const TRIM_INBOX: &str = "
DELETE FROM inbox WHERE handled_at < ?1 AND position <= (
    SELECT p.cursor FROM partitions p
    WHERE p.subscription_id = inbox.subscription_id AND p.partition = inbox.partition)";

/// Deletes settled events recorded before `before`; returns how many events were removed.
pub(crate) async fn trim(backend: &SqliteBackend, before: Timestamp) -> Result<u64> {
    let before = micros(before);
    let (low, high) = backend
        .readers()
        .run(move |conn| bounds(conn, before))
        .await?;
    let mut removed = 0;
    let mut from = low;
    while from < high {
        let to = from.saturating_add(CHUNK).min(high);
        removed += backend
            .writer()
            .call(move |tx, state| {
                // Its keys may include events this chunk removes: the next round reads anew.
                state.key_round = None;
                trim_chunk(tx, (from, to), before)
            })
            .await?;
        from = to;
    }
    backend
        .writer()
        .call(move |tx, _| {
            keys::drop_trimmed(tx)?;
            tx.prepare_cached(TRIM_INBOX)
                .and_then(|mut st| st.execute([before]))
                .db()
        })
        .await?;
    Ok(removed)
}

/// Deletes the trimmable events of positions `(from, to]`; their by-key entries go with
/// their segment ([`keys::drop_trimmed`]).
fn trim_chunk(conn: &Connection, (from, to): (u64, u64), before: i64) -> Result<u64> {
    let doomed: Vec<i64> = {
        let mut st = conn.prepare_cached(TRIMMABLE).db()?;
        let rows = st
            .query_map(params![int(from), int(to), before], |r| r.get(0))
            .db()?;
        rows.map(|r| r.db()).collect::<Result<_>>()?
    };
    let mut delete = conn
        .prepare_cached("DELETE FROM events WHERE position = ?1")
        .db()?;
    for position in &doomed {
        delete.execute([position]).db()?;
    }
    Ok(doomed.len() as u64)
}

/// The position range that holds the events recorded before `before`: `(low, high]`, found
/// by binary search (`recorded_at` never decreases with the position).
fn bounds(conn: &Connection, before: i64) -> Result<(u64, u64)> {
    let low: Option<i64> = conn
        .prepare_cached("SELECT min(position) FROM events")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .db()?;
    let high = first_at(conn, before)?.saturating_sub(1);
    match low {
        Some(low) if uint(low) <= high => Ok((uint(low) - 1, high)),
        _ => Ok((0, 0)),
    }
}
