//! The event store role: the `events` table is the log, appended by the writer thread and read
//! from the reader pool.

use edubus_core::{
    Append, Appended, Envelope, Error, EventStore, Position, ReadQuery, Recorded, Result,
    partition_of,
};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::SqliteBackend;
use crate::append::{NewEvent, insert_events};
use crate::clock::{int, micros, timestamp, uint};
use crate::error::Db;
use crate::keys;

/// Page size of a read whose `limit` is 0.
pub const DEFAULT_READ_LIMIT: usize = 1000;
/// Batches at least this large are serialized on the blocking pool, not a tokio worker.
const BLOCKING_ENCODE_MIN: usize = 64;

/// The columns [`recorded`] decodes, for `events` aliased `e`.
pub(crate) const RECORDED_COLUMNS: &str =
    "e.position, e.stream, e.partition, e.key, e.recorded_at, e.envelope, e.id, e.type, e.version";

/// The highest position ever assigned (0 for an empty log); survives trimming.
pub(crate) fn head_position(conn: &Connection) -> Result<u64> {
    let head: i64 = conn
        .prepare_cached(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .db()?;
    Ok(uint(head))
}

/// The position of the first event recorded at or after `at` (unix µs), or one past the
/// newest if there is none: a binary search over positions, one index seek per step, since
/// `recorded_at` never decreases with the position (`append.rs`). Trimmed gaps are skipped.
pub(crate) fn first_at(conn: &Connection, at: i64) -> Result<u64> {
    let mut probe = conn
        .prepare_cached(
            "SELECT position, recorded_at FROM events WHERE position >= ?1
             ORDER BY position LIMIT 1",
        )
        .db()?;
    let (low, newest): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT min(position), max(position) FROM events")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .db()?;
    let (Some(mut low), Some(newest)) = (low, newest) else {
        return head_position(conn).map(|h| h + 1);
    };
    // The answer lies in [low, high]; high = newest + 1 stands for "none".
    let mut high = newest + 1;
    while low < high {
        let mid = low + (high - low) / 2;
        let found: Option<(i64, i64)> = probe
            .query_row([mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()?;
        match found {
            Some((position, recorded)) if position < high => {
                if recorded >= at {
                    high = position;
                } else {
                    low = position + 1;
                }
            }
            _ => high = mid,
        }
    }
    Ok(uint(high))
}

/// Decodes a row selected with [`RECORDED_COLUMNS`] starting at column `at`.
pub(crate) fn recorded(row: &Row<'_>, at: usize) -> rusqlite::Result<Recorded> {
    RawRecorded::read(row, at).map(RawRecorded::decode)
}

/// A stored event, its envelope not decoded yet: events the writer hands to consumers are
/// decoded by them, off the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct RawRecorded {
    position: i64,
    stream: String,
    partition: u32,
    key: String,
    recorded_at: i64,
    envelope: Body,
    id: String,
    event_type: String,
    version: u32,
}

/// An envelope as stored (JSON), or the envelope its JSON was serialized from, which decoding
/// the JSON would give back.
#[derive(Debug, Clone)]
enum Body {
    Json(String),
    Parsed(Arc<Envelope>),
}

impl RawRecorded {
    /// Reads the [`RECORDED_COLUMNS`] of a row, starting at column `at`.
    pub(crate) fn read(row: &Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            position: row.get(at)?,
            stream: row.get(at + 1)?,
            partition: row.get(at + 2)?,
            key: row.get(at + 3)?,
            recorded_at: row.get(at + 4)?,
            envelope: Body::Json(row.get(at + 5)?),
            id: row.get(at + 6)?,
            event_type: row.get(at + 7)?,
            version: row.get(at + 8)?,
        })
    }

    /// An event just inserted at `position`, recorded at `recorded_at` (unix µs), with the
    /// envelope it was serialized from if kept (taken out of `ev`, so that a single consumer
    /// handed it holds the only reference and need not copy it).
    pub(crate) fn inserted(
        ev: &NewEvent,
        parsed: Option<Arc<Envelope>>,
        position: u64,
        recorded_at: i64,
    ) -> Self {
        Self {
            position: int(position),
            stream: ev.stream.clone(),
            partition: ev.partition,
            key: ev.key.clone(),
            recorded_at,
            envelope: match parsed {
                Some(parsed) => Body::Parsed(parsed),
                None => Body::Json(ev.envelope.clone()),
            },
            id: ev.id.clone(),
            event_type: ev.event_type.clone(),
            version: ev.version,
        }
    }

    /// The log position.
    pub(crate) fn position(&self) -> u64 {
        uint(self.position)
    }

    /// The partition of its stream.
    pub(crate) fn partition(&self) -> u32 {
        self.partition
    }

    /// The canonical event type.
    pub(crate) fn event_type(&self) -> &str {
        &self.event_type
    }

    /// Decodes the envelope; one that no longer decodes becomes an [`undecodable`] stand-in.
    pub(crate) fn decode(self) -> Recorded {
        let envelope = match self.envelope {
            Body::Parsed(envelope) => Arc::unwrap_or_clone(envelope),
            Body::Json(json) => match serde_json::from_str::<Envelope>(&json) {
                Ok(envelope) => envelope,
                Err(e) => undecodable(json, self.id, self.event_type, self.version, &e),
            },
        };
        Recorded {
            position: uint(self.position),
            stream: self.stream,
            partition: self.partition,
            key: self.key,
            recorded_at: timestamp(self.recorded_at),
            envelope,
        }
    }
}

/// A stand-in for a stored envelope that no longer decodes: its raw text in `data`, so a
/// consumer dead-letters it as undecodable instead of the partition stopping.
fn undecodable(
    raw: String,
    id: String,
    ty: String,
    version: u32,
    e: &serde_json::Error,
) -> Envelope {
    let mut env = Envelope::new(ty, version, Value::String(raw))
        .with_id(id)
        .with_source("urn:edubus:sqlite:undecodable")
        .with_extension("decodeerror", e.to_string());
    env.time = None;
    env
}

/// Which rows a read scans.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The log by position (or the index its filters pick).
    Log,
    /// Positions of the key from `event_keys`, up to its bound.
    KeyIndexed,
    /// The key's partition after the bound of `event_keys`.
    KeyTail,
}

/// Reads a page of the log matching `query` (in the caller's snapshot).
fn read_page(conn: &Connection, query: &ReadQuery, partitions: u32) -> Result<Vec<Recorded>> {
    let limit = if query.limit == 0 {
        DEFAULT_READ_LIMIT
    } else {
        query.limit
    };
    let since = query.since.map(|t| first_at(conn, micros(t))).transpose()?;
    let query = &ReadQuery {
        after: since.map_or(query.after, |first| query.after.max(first - 1)),
        ..query.clone()
    };
    let Some(key) = &query.key else {
        return select(conn, query, Source::Log, (0, 0), limit);
    };
    let partition = partition_of(key, partitions);
    let upto = keys::indexed_upto(conn, partition)?;
    let mut out = select(conn, query, Source::KeyIndexed, (upto, partition), limit)?;
    if out.len() < limit {
        let tail = (upto, partition);
        out.extend(select(
            conn,
            query,
            Source::KeyTail,
            tail,
            limit - out.len(),
        )?);
    }
    Ok(out)
}

/// One query of a read: `bounds` is the key index bound and the key's partition.
fn select(
    conn: &Connection,
    query: &ReadQuery,
    source: Source,
    (upto, partition): (u64, u32),
    limit: usize,
) -> Result<Vec<Recorded>> {
    let mut st = conn.prepare_cached(&select_sql(query, source)).db()?;
    let types = serde_json::to_string(&query.types).unwrap_or_else(|_| "[]".into());
    let since = query.since.map(micros);
    let args = params![
        int(query.after),
        types,
        query.key,
        query.correlation_id,
        query.stream,
        since,
        int(upto),
        partition,
        int(limit as u64)
    ];
    // Parameters the SQL does not name are bound and ignored: `?9` is always the highest.
    let rows = st.query_map(args, |row| recorded(row, 0)).db()?;
    rows.map(Db::db).collect()
}

/// The SQL of [`select`]: `?1` after, `?2` types (JSON), `?3` key, `?4` correlation id,
/// `?5` stream, `?6` since, `?7` key index bound, `?8` partition, `?9` limit.
fn select_sql(query: &ReadQuery, source: Source) -> String {
    let mut sql = format!("SELECT {RECORDED_COLUMNS} FROM events e WHERE e.position > ?1");
    match source {
        Source::Log => {}
        Source::KeyIndexed => {
            sql.push_str(&format!(" AND e.position IN ({})", keys::INDEXED_POSITIONS));
        }
        Source::KeyTail => sql.push_str(" AND e.partition = ?8 AND e.position > ?7 AND e.key = ?3"),
    }
    if !query.types.is_empty() {
        sql.push_str(" AND e.type IN (SELECT value FROM json_each(?2))");
    }
    for (cond, present) in [
        (
            // The partial index holds the caused events, the id index the root.
            " AND (e.correlation_id = ?4 AND e.correlation_id <> e.id
                   OR e.id = ?4 AND e.correlation_id = ?4)",
            query.correlation_id.is_some(),
        ),
        (" AND e.stream = ?5", query.stream.is_some()),
        (" AND e.recorded_at >= ?6", query.since.is_some()),
    ] {
        if present {
            sql.push_str(cond);
        }
    }
    sql.push_str(" ORDER BY e.position LIMIT ?9");
    sql
}

impl EventStore for SqliteBackend {
    async fn append(&self, batch: Vec<Append>) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = self.partitions_stored();
        // Envelopes a waiting lease may be handed are kept, so its consumer need not decode.
        let keep = self.handoff().anyone_waiting();
        let rows = if batch.len() >= BLOCKING_ENCODE_MIN {
            tokio::task::spawn_blocking(move || NewEvent::batch(batch, partitions, keep))
                .await
                .map_err(|e| Error::internal("envelope serialization failed", e))?
        } else {
            NewEvent::batch(batch, partitions, keep)
        };
        // No savepoint: `insert_events` undoes its own inserts on a conflict. The rows travel
        // back to be freed here, not on the writer thread.
        let (appended, rows) = self
            .writer()
            .call_unguarded(move |tx, state| {
                let mut rows = rows;
                Ok((insert_events(tx, &mut rows, state), rows))
            })
            .await?;
        drop(rows);
        appended
    }

    async fn read(&self, query: ReadQuery) -> Result<Vec<Recorded>> {
        let partitions = self.partitions_stored();
        self.readers()
            .snapshot(move |conn| read_page(conn, &query, partitions))
            .await
    }

    async fn get(&self, id: &str) -> Result<Option<Recorded>> {
        let id = id.to_owned();
        self.readers()
            .run(move |conn| {
                let sql = format!("SELECT {RECORDED_COLUMNS} FROM events e WHERE e.id = ?1");
                conn.prepare_cached(&sql)
                    .and_then(|mut st| st.query_row([id], |row| recorded(row, 0)).optional())
                    .db()
            })
            .await
    }

    async fn head(&self) -> Result<Position> {
        self.readers().run(head_position).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteConfig;
    use crate::schema;

    #[test]
    fn a_read_by_correlation_searches_the_partial_index_and_the_id_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&SqliteConfig::in_dir(dir.path())).unwrap();
        schema::migrate(&mut conn).unwrap();
        let query = ReadQuery {
            correlation_id: Some("c".into()),
            ..Default::default()
        };
        let plan = format!("EXPLAIN QUERY PLAN {}", select_sql(&query, Source::Log));
        let mut st = conn.prepare(&plan).unwrap();
        let steps: Vec<String> = st
            .query_map(
                params![
                    0,
                    "[]",
                    None::<String>,
                    "c",
                    None::<String>,
                    None::<i64>,
                    0,
                    0,
                    100
                ],
                |r| r.get(3),
            )
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let searches = |index: &str| {
            steps
                .iter()
                .any(|s| s.starts_with("SEARCH e USING INDEX") && s.contains(index))
        };
        assert!(searches("events_correlation"), "{steps:?}");
        assert!(searches("sqlite_autoindex_events_1"), "{steps:?}");
        assert!(!steps.iter().any(|s| s.starts_with("SCAN e")), "{steps:?}");
    }
}
