//! The by-key index, maintained in batches. Keys arrive in random order, so an index on
//! `events(key, position)` rewrites most of its pages at every group commit: measured, it cost
//! a third of the append throughput. Instead `event_keys (key, position)` is filled by the
//! writer once [`KEY_BATCH`] events are waiting, sorted, and `meta.keys_indexed_upto` says how
//! far it goes; a by-key read takes the indexed part from it and the short tail after it from
//! the key's partition.

use edubus_core::Result;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::clock::int;
use crate::error::Db;
use crate::store::head_position;

/// Unindexed events that trigger a batch (bounds the tail a by-key read scans).
pub(crate) const KEY_BATCH: u64 = 32_768;

/// How far `event_keys` is complete (read in the caller's snapshot).
pub(crate) fn indexed_upto(conn: &Connection) -> Result<u64> {
    let upto: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'keys_indexed_upto'")
        .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
        .db()?;
    Ok(upto.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Indexes every event after `keys_indexed_upto` in one transaction of its own; returns the
/// new bound.
pub(crate) fn index_batch(conn: &mut Connection) -> Result<u64> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let upto = indexed_upto(&tx)?;
    let head = head_position(&tx)?;
    if head > upto {
        tx.prepare_cached(
            "INSERT INTO event_keys (key, position)
             SELECT key, position FROM events WHERE position > ?1 ORDER BY key, position",
        )
        .and_then(|mut st| st.execute([int(upto)]))
        .db()?;
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('keys_indexed_upto', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut st| st.execute([head.to_string()]))
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

/// Whether enough events wait for the next batch.
pub(crate) fn due(head: u64, upto: u64) -> bool {
    head.saturating_sub(upto) >= KEY_BATCH
}
