//! The audit trail: one immutable row per administrative action (DLQ list, show, replay,
//! purge; replays of stored events).

use edubus_core::{AuditEntry, Result};
use rusqlite::{Connection, Row, params};
use serde_json::Value;

use crate::clock::{int, now_micros, timestamp, uint};
use crate::error::{Db, from_json};

/// Actor recorded for reads that name none (the trait's `list` and `get`).
pub(crate) const SYSTEM_ACTOR: &str = "edubus";

/// Appends an audit row inside the caller's transaction.
pub(crate) fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &Value,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            now_micros(),
            actor,
            action,
            subject,
            detail.to_string()
        ])
    })
    .db()?;
    Ok(())
}

/// The newest `limit` entries, newest first.
pub(crate) fn latest(conn: &Connection, limit: usize) -> Result<Vec<AuditEntry>> {
    let mut st = conn
        .prepare_cached(
            "SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )
        .db()?;
    let rows = st.query_map([int(limit as u64)], raw_entry).db()?;
    let mut entries = Vec::new();
    for row in rows {
        let (mut entry, detail) = row.db()?;
        entry.detail = serde_json::from_str(&detail).map_err(|e| from_json("audit detail", e))?;
        entries.push(entry);
    }
    Ok(entries)
}

fn raw_entry(row: &Row<'_>) -> rusqlite::Result<(AuditEntry, String)> {
    let entry = AuditEntry {
        id: uint(row.get(0)?),
        at: timestamp(row.get(1)?),
        actor: row.get(2)?,
        action: row.get(3)?,
        subject: row.get(4)?,
        detail: Value::Null,
    };
    Ok((entry, row.get(5)?))
}
