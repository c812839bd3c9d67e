//! The by-key index, maintained in batches. Keys arrive in random order, so an index on
//! `events(key, position)` rewrites most of its pages at every group commit: measured, it cost
//! a third of the append throughput. Instead `event_keys (key, position)` is filled by the
//! writer, one partition at a time, once [`KEY_BATCH`] events of the log are waiting, sorted;
//! `meta.keys_indexed_upto:<partition>` says how far each partition goes (an older file's
//! `meta.keys_indexed_upto` for partitions without one). A by-key read takes the indexed part
//! from it and the short tail after it from the key's partition: a key has one partition.
//!
//! One slice per partition keeps each pause of the writer short (a sixteenth of a batch with
//! the default partitions) where one batch of the whole log held it for tens of milliseconds.

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

/// The partition most behind, when it is [`KEY_BATCH`] events or more behind `head`.
pub(crate) fn due(head: u64, bounds: &[u64]) -> Option<u32> {
    let (partition, upto) = bounds.iter().enumerate().min_by_key(|&(_, upto)| *upto)?;
    let partition = u32::try_from(partition).ok()?;
    (head.saturating_sub(*upto) >= KEY_BATCH).then_some(partition)
}

/// Indexes the events of `partition` after its bound in one transaction of its own; returns
/// the new bound.
pub(crate) fn index_partition(conn: &mut Connection, partition: u32) -> Result<u64> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let upto = indexed_upto(&tx, partition)?;
    let head = head_position(&tx)?;
    if head > upto {
        tx.prepare_cached(
            "INSERT INTO event_keys (key, position)
             SELECT key, position FROM events
             WHERE partition = ?1 AND position > ?2 AND position <= ?3
             ORDER BY key, position",
        )
        .and_then(|mut st| st.execute(params![partition, int(upto), int(head)]))
        .db()?;
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut st| st.execute([bound_key(partition), head.to_string()]))
        .db()?;
    }
    tx.commit().db()?;
    Ok(head.max(upto))
}

/// Removes the by-key entry of an event being deleted (trim).
pub(crate) fn forget(conn: &Connection, key: &str, position: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM event_keys WHERE key = ?1 AND position = ?2")
        .and_then(|mut st| st.execute(params![key, position]))
        .db()?;
    Ok(())
}
