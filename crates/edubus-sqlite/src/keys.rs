//! The by-key index, maintained in batches. Keys arrive in random order, so an index on
//! `events(key, position)` rewrites most of its pages at every group commit: measured, it cost
//! a third of the append throughput. Instead `event_keys (key, position)` is filled by the
//! writer, one partition at a time, once [`KEY_BATCH`] events of the log are waiting, sorted;
//! `meta.keys_indexed_upto:<partition>` says how far each partition goes (an older file's
//! `meta.keys_indexed_upto` for partitions without one). A by-key read takes the indexed part
//! from it and the short tail after it from the key's partition: a key has one partition.
//!
//! A round reads the keys of the waiting events in one scan by position, then indexes them
//! one partition per transaction: each pause of the writer is a fraction of a round (a
//! sixteenth with the default partitions), where one batch of the whole log held it for tens
//! of milliseconds.

use edubus_core::Result;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::clock::int;
use crate::error::Db;
use crate::store::head_position;

/// Unindexed events of the log after which each partition is indexed (bounds the tail a
/// by-key read scans).
pub(crate) const KEY_BATCH: u64 = 32_768;

/// The `meta` key of a partition's bound.
fn bound_key(partition: u32) -> String {
    format!("keys_indexed_upto:{partition}")
}

/// How far `event_keys` is complete for the keys of `partition` (in the caller's snapshot).
pub(crate) fn indexed_upto(conn: &Connection, partition: u32) -> Result<u64> {
    let own = meta_u64(conn, &bound_key(partition))?;
    match own {
        Some(upto) => Ok(upto),
        None => Ok(meta_u64(conn, "keys_indexed_upto")?.unwrap_or(0)),
    }
}

/// The bound of every partition, for the writer's schedule.
pub(crate) fn bounds(conn: &Connection, partitions: u32) -> Result<Vec<u64>> {
    (0..partitions).map(|p| indexed_upto(conn, p)).collect()
}

fn meta_u64(conn: &Connection, key: &str) -> Result<Option<u64>> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
        .db()?;
    Ok(value.and_then(|v| v.parse().ok()))
}

/// Whether some partition is [`KEY_BATCH`] events or more behind `head`.
pub(crate) fn due(head: u64, bounds: &[u64]) -> bool {
    bounds
        .iter()
        .min()
        .is_some_and(|upto| head.saturating_sub(*upto) >= KEY_BATCH)
}

/// The keys of a round, read from the log in one scan by position and indexed one partition
/// at a time.
pub(crate) struct Staged {
    /// The log head the keys were read at: each partition's bound once indexed.
    head: u64,
    /// Per partition, `(key, position)` sorted; `None` once indexed.
    rows: Vec<Option<Vec<(String, i64)>>>,
}

impl Staged {
    /// Reads the keys of each partition after its bound, up to the head.
    pub(crate) fn read(conn: &Connection, bounds: &[u64]) -> Result<Self> {
        let head = head_position(conn)?;
        let from = bounds.iter().copied().min().unwrap_or(0);
        let mut rows: Vec<Vec<(String, i64)>> = vec![Vec::new(); bounds.len()];
        let mut st = conn
            .prepare_cached(
                "SELECT partition, key, position FROM events
                 WHERE position > ?1 AND position <= ?2",
            )
            .db()?;
        let mut found = st.query(params![int(from), int(head)]).db()?;
        while let Some(row) = found.next().db()? {
            let (partition, position): (u32, i64) = (row.get(0).db()?, row.get(2).db()?);
            let partition = partition as usize;
            if let (Some(part), Some(bound)) = (rows.get_mut(partition), bounds.get(partition))
                && position > int(*bound)
            {
                part.push((row.get(1).db()?, position));
            }
        }
        let rows = rows
            .into_iter()
            .map(|mut part| {
                part.sort_unstable();
                Some(part)
            })
            .collect();
        Ok(Self { head, rows })
    }
}

/// Indexes the next partition of `staged` in one transaction of its own; returns it with its
/// new bound, or `None` when every partition is done. Entries another process indexed
/// meanwhile are kept.
pub(crate) fn index_staged(
    conn: &mut Connection,
    staged: &mut Staged,
) -> Result<Option<(u32, u64)>> {
    let Some(index) = staged.rows.iter().position(Option::is_some) else {
        return Ok(None);
    };
    let partition = u32::try_from(index).unwrap_or(u32::MAX);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let upto = indexed_upto(&tx, partition)?;
    if upto < staged.head {
        let mut insert = tx
            .prepare_cached("INSERT OR IGNORE INTO event_keys (key, position) VALUES (?1, ?2)")
            .db()?;
        for (key, position) in staged.rows[index].iter().flatten() {
            if *position > int(upto) {
                insert.execute(params![key, position]).db()?;
            }
        }
        drop(insert);
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut st| st.execute([bound_key(partition), staged.head.to_string()]))
        .db()?;
    }
    tx.commit().db()?;
    staged.rows[index] = None;
    Ok(Some((partition, staged.head.max(upto))))
}

/// Removes the by-key entry of an event being deleted (trim).
pub(crate) fn forget(conn: &Connection, key: &str, position: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM event_keys WHERE key = ?1 AND position = ?2")
        .and_then(|mut st| st.execute(params![key, position]))
        .db()?;
    Ok(())
}
