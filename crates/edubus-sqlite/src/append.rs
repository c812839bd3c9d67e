//! Appending to the log on the writer thread: idempotent per event id, atomic per batch
//! without a savepoint of its own.

use std::sync::Arc;

use edubus_core::{Append, Appended, Envelope, Error, Result, partition_of};
use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::{now_micros, uint};
use crate::counts::{self, Inserted};
use crate::error::{Db, from_sqlite};
use crate::store::RawRecorded;
use crate::writer::WriterState;

/// An event ready to insert: the envelope serialized and its indexed columns extracted.
pub(crate) struct NewEvent {
    pub(crate) id: String,
    pub(crate) stream: String,
    pub(crate) partition: u32,
    pub(crate) key: String,
    pub(crate) event_type: String,
    pub(crate) version: u32,
    correlation_id: String,
    causation_id: Option<String>,
    tenant_id: Option<String>,
    pub(crate) envelope: String,
    /// The envelope `envelope` was serialized from, when `keep` asked for it and it is valid
    /// (so it reads back from `envelope` unchanged): a hand-off gives it to the consumer,
    /// which then does not decode the JSON.
    pub(crate) parsed: Option<Arc<Envelope>>,
}

impl NewEvent {
    /// Serializes one append; the key is `partitionkey`, else `subject`, else the event id.
    pub(crate) fn new(append: Append, partitions: u32, keep: bool) -> Self {
        let env = &append.envelope;
        let key = env.key().unwrap_or(&env.id).to_owned();
        let envelope = env.to_json();
        let mut event = Self {
            id: env.id.clone(),
            stream: append.stream,
            partition: partition_of(&key, partitions),
            key,
            event_type: env.event_type.clone(),
            version: env.schemaversion.unwrap_or(1),
            correlation_id: env.correlation_id().to_owned(),
            causation_id: env.causationid.clone(),
            tenant_id: env.tenantid.clone(),
            envelope,
            parsed: None,
        };
        if keep && append.envelope.validate().is_ok() {
            event.parsed = Some(Arc::new(append.envelope));
        }
        event
    }

    /// Serializes a batch; `keep`: see [`NewEvent::parsed`].
    pub(crate) fn batch(appends: Vec<Append>, partitions: u32, keep: bool) -> Vec<Self> {
        appends
            .into_iter()
            .map(|a| Self::new(a, partitions, keep))
            .collect()
    }
}

/// The stored event with `ev`'s id: a duplicate if identical, else a conflict.
fn existing(conn: &Connection, ev: &NewEvent) -> Result<u64> {
    let (position, stored): (i64, String) = conn
        .prepare_cached("SELECT position, envelope FROM events WHERE id = ?1")
        .and_then(|mut st| st.query_row([&ev.id], |r| Ok((r.get(0)?, r.get(1)?))))
        .db()?;
    if stored != ev.envelope {
        return Err(Error::conflict(format!(
            "event `{}` is already stored with different content; nothing of the batch was stored",
            ev.id
        )));
    }
    Ok(uint(position))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Appends `events` in order, idempotently per id, and counts them into the lag counters.
///
/// Runs without a savepoint of its own (one would copy every page the group already touched):
/// a reused id with other content undoes this batch's inserts by hand (they are the newest
/// positions, under the write lock) before failing with `Conflict`. Any other failure after
/// a write marks the writer state poisoned, and the whole group rolls back.
pub(crate) fn insert_events(
    conn: &Connection,
    events: &mut [NewEvent],
    state: &mut WriterState,
) -> Result<Vec<Appended>> {
    let head = state.head;
    let before = sequence(conn)?;
    if uint(before) > head {
        // Another process appended: the keys of its events are not in `seen`.
        state.foreign = true;
        state.seen.restart(uint(before));
    }
    let written = write(conn, events, state);
    if let Err(e) = &written {
        state.rewind(head);
        let undone = matches!(e, Error::Conflict { .. }) && undo(conn, before).is_ok();
        state.poisoned |= !undone;
    }
    written
}

/// The last position assigned (`sqlite_sequence`), 0 for a new log.
fn sequence(conn: &Connection) -> Result<i64> {
    conn.prepare_cached(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
    )
    .and_then(|mut st| st.query_row([], |r| r.get(0)))
    .db()
}

/// Removes the events inserted after `before` and restores the sequence, so positions stay
/// gapless.
fn undo(conn: &Connection, before: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM events WHERE position > ?1")
        .and_then(|mut st| st.execute([before]))
        .db()?;
    conn.prepare_cached("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'events'")
        .and_then(|mut st| st.execute([before]))
        .db()?;
    Ok(())
}

fn write(
    conn: &Connection,
    events: &mut [NewEvent],
    state: &mut WriterState,
) -> Result<Vec<Appended>> {
    let now = recording_time(conn)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (id, stream, partition, key, type, version, correlation_id,
                causation_id, tenant_id, recorded_at, envelope)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .db()?;
    let mut out: Vec<Appended> = Vec::with_capacity(events.len());
    let mut counted = Inserted::new();
    for ev in events.iter_mut() {
        let row = params![
            ev.id,
            ev.stream,
            ev.partition,
            ev.key,
            ev.event_type,
            ev.version,
            ev.correlation_id,
            ev.causation_id,
            ev.tenant_id,
            now,
            ev.envelope
        ];
        // A plain INSERT, not `ON CONFLICT DO NOTHING`: an ignored row would still consume
        // an AUTOINCREMENT value and leave a gap in the positions.
        let (position, duplicate) = match insert.execute(row) {
            Ok(_) => {
                *counted
                    .entry((ev.partition, ev.event_type.as_str()))
                    .or_default() += 1;
                (uint(conn.last_insert_rowid()), false)
            }
            Err(e) if is_unique_violation(&e) => (existing(conn, ev)?, true),
            Err(e) => return Err(from_sqlite(e)),
        };
        state.head = state.head.max(position);
        state.touched.push((ev.partition, position));
        if !duplicate {
            state.seen.push(ev.partition, &ev.key, position);
        }
        if state.collecting && !duplicate {
            let parsed = ev.parsed.take();
            state
                .fresh
                .push(RawRecorded::inserted(ev, parsed, position, now));
        }
        out.push(Appended {
            id: ev.id.clone(),
            position,
            duplicate,
        });
    }
    counts::on_append(conn, &counted)?;
    note_type_heads(conn, &counted, now)?;
    Ok(out)
}

/// Now, or the newest event's time if the clock went back (or another process's clock is
/// ahead): `recorded_at` never decreases with the position, which time bounds rely on
/// ([`crate::store::first_at`]).
fn recording_time(conn: &Connection) -> Result<i64> {
    let newest: Option<i64> = conn
        .prepare_cached("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1")
        .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
        .db()?;
    Ok(newest.map_or_else(now_micros, |at| at.max(now_micros())))
}

/// Records `now` as the newest time of each type just appended (`type_heads`).
fn note_type_heads(conn: &Connection, counted: &Inserted<'_>, now: i64) -> Result<()> {
    let mut types: Vec<&str> = counted.keys().map(|(_, ty)| *ty).collect();
    types.sort_unstable();
    types.dedup();
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO type_heads (type, recorded_at) VALUES (?1, ?2)
             ON CONFLICT (type) DO UPDATE SET recorded_at = max(recorded_at, excluded.recorded_at)",
        )
        .db()?;
    for ty in types {
        upsert.execute(params![ty, now]).db()?;
    }
    Ok(())
}
