//! Delivery: fetch (replayed entries first, then the partition's log after a position),
//! `seen`, and the failed-attempt history that keeps delivery counts across crashes.

use edubus_core::{Attempt, Delivery, Error, Fetched, Lease, Position, Result};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use crate::SqliteBackend;
use crate::clock::{int, uint};
use crate::error::{Db, from_json};
use crate::store::{RECORDED_COLUMNS, RawRecorded, head_position};
use crate::subs::{self, Sub, type_filter, with_types};

/// Fetches up to `max` deliveries: replay-queue entries above `after_requeue`, then log events
/// above `after`, flagged when the inbox already has them, in one read snapshot whose head
/// bounds `scanned_to`. When log events were fetched, records through the writer how far the
/// lease fetched before returning them (a replay-only fetch writes nothing).
///
/// Events the writer handed to this lease since its last empty fetch (see [`crate::handoff`])
/// are returned as they are: their fetch was recorded in the commit that appended them.
pub(crate) async fn fetch(
    backend: &SqliteBackend,
    lease: &Lease,
    after: Position,
    after_requeue: u64,
    max: usize,
) -> Result<Fetched> {
    if max == 0 {
        return Ok(Fetched {
            deliveries: Vec::new(),
            scanned_to: after,
        });
    }
    if let Some(rows) = backend.handoff().take(lease, after) {
        return Ok(handed(rows, after));
    }
    let read_lease = lease.clone();
    let (sub, deliveries, scanned_to) = backend
        .readers()
        .snapshot(move |conn| read_deliveries(conn, &read_lease, after, after_requeue, max))
        .await?;
    let highest = deliveries
        .iter()
        .filter(|d| !d.replay)
        .map(|d| d.event.position)
        .max();
    match highest {
        Some(highest) => {
            let lease = lease.clone();
            // One UPDATE that fails as a whole: no savepoint needed.
            backend
                .writer()
                .call_unguarded(move |tx, _| mark_fetched(tx, sub.id, &lease, highest))
                .await?;
        }
        None => backend
            .handoff()
            .wait_for(lease, sub.id, sub.types, scanned_to, max),
    }
    Ok(Fetched {
        deliveries,
        scanned_to,
    })
}

/// The deliveries of a hand-off, decoded here rather than on the writer thread.
fn handed(rows: Vec<RawDelivery>, after: Position) -> Fetched {
    let scanned_to = rows.last().map_or(after, RawDelivery::position);
    Fetched {
        deliveries: rows.into_iter().map(RawDelivery::decode).collect(),
        scanned_to,
    }
}

/// Reads (and decodes, on this blocking thread) the deliveries of one fetch, with the
/// position up to which the partition was scanned.
fn read_deliveries(
    conn: &Connection,
    lease: &Lease,
    after: Position,
    after_requeue: u64,
    max: usize,
) -> Result<(Sub, Vec<Delivery>, Position)> {
    let head = head_position(conn)?;
    let sub = subs::load(conn, &lease.subscription)?;
    let mut rows = requeued(conn, &sub, lease.partition, after_requeue, max)?;
    let left = max - rows.len();
    let mut scanned_to = head.max(after);
    if left > 0 {
        let before = rows.len();
        rows.extend(log_rows(
            conn,
            sub.id,
            &sub.types,
            lease.partition,
            after,
            left,
        )?);
        if rows.len() - before == left {
            scanned_to = rows.last().map_or(after, RawDelivery::position);
        }
    } else {
        scanned_to = after;
    }
    let deliveries = rows.into_iter().map(RawDelivery::decode).collect();
    Ok((sub, deliveries, scanned_to))
}

/// Up to `max` log events of `partition` after `after` that the subscription receives, by
/// position, with their recorded attempts and whether its inbox has them.
fn log_rows(
    conn: &Connection,
    sub_id: i64,
    types: &[String],
    partition: u32,
    after: Position,
    max: usize,
) -> Result<Vec<RawDelivery>> {
    let sql = format!(
        "SELECT {RECORDED_COLUMNS}, COALESCE(json_array_length(f.attempts), 0),
                i.event_id IS NOT NULL
         FROM events e
         LEFT JOIN failures f ON f.subscription_id = ?1 AND f.position = e.position
         LEFT JOIN inbox i ON i.subscription_id = ?1 AND i.event_id = e.id
         WHERE e.partition = ?2 AND e.position > ?3 AND {}
         ORDER BY e.position LIMIT ?4",
        type_filter("e", 5, types)
    );
    let mut st = conn.prepare_cached(&sql).db()?;
    let (after, max) = (int(after), int(max as u64));
    let args = with_types(&[&sub_id, &partition, &after, &max], types);
    let rows = st
        .query_map(&*args, |row| RawDelivery::read(row, None))
        .db()?;
    rows.map(|r| r.db()).collect()
}

/// Replay-queue entries of the partition with an id above `after`, by id.
fn requeued(
    conn: &Connection,
    sub: &Sub,
    partition: u32,
    after: u64,
    max: usize,
) -> Result<Vec<RawDelivery>> {
    let sql = format!(
        "SELECT r.id, {RECORDED_COLUMNS}, COALESCE(json_array_length(f.attempts), 0)
         FROM requeue r JOIN events e ON e.position = r.position
         LEFT JOIN failures f ON f.subscription_id = r.subscription_id AND f.position = r.position
         WHERE r.subscription_id = ?1 AND r.partition = ?2 AND r.id > ?3
         ORDER BY r.id LIMIT ?4"
    );
    let mut st = conn.prepare_cached(&sql).db()?;
    let args = params![sub.id, partition, int(after), int(max as u64)];
    let rows = st
        .query_map(args, |row| RawDelivery::read(row, Some(uint(row.get(0)?))))
        .db()?;
    rows.map(|r| r.db()).collect()
}

/// A delivery as read, its envelope not decoded yet.
#[derive(Debug)]
pub(crate) struct RawDelivery {
    event: RawRecorded,
    attempts: u32,
    handled: bool,
    requeue_id: Option<u64>,
}

impl RawDelivery {
    /// One delivery from a row: [`RECORDED_COLUMNS`] (after the requeue id, if any), the
    /// number of recorded attempts, then (log rows only) whether the inbox has it.
    fn read(row: &rusqlite::Row<'_>, requeue_id: Option<u64>) -> rusqlite::Result<Self> {
        let at = usize::from(requeue_id.is_some());
        Ok(Self {
            event: RawRecorded::read(row, at)?,
            attempts: row.get(at + 9)?,
            handled: requeue_id.is_none() && row.get(at + 10)?,
            requeue_id,
        })
    }

    /// A first delivery of an event just appended: no attempts, not in any inbox.
    pub(crate) fn fresh(event: RawRecorded) -> Self {
        Self {
            event,
            attempts: 0,
            handled: false,
            requeue_id: None,
        }
    }

    /// The event's log position.
    pub(crate) fn position(&self) -> Position {
        self.event.position()
    }

    /// Decodes the envelope into a delivery.
    pub(crate) fn decode(self) -> Delivery {
        let mut event = self.event.decode();
        if self.requeue_id.is_some() {
            event.envelope.replay = Some(true);
        }
        Delivery {
            seq: event.position,
            event,
            delivery_count: self.attempts.saturating_add(1),
            replay: self.requeue_id.is_some(),
            requeue_id: self.requeue_id,
            received_at: Timestamp::now(),
            handled: self.handled,
        }
    }
}

/// Checks the epoch and records how far the lease fetched (`fetched_upto`).
fn mark_fetched(conn: &Connection, sub_id: i64, lease: &Lease, highest: u64) -> Result<()> {
    let (partition, epoch) = (lease.partition, lease.epoch);
    if raise_fetched(conn, sub_id, (partition, epoch), highest, false)? {
        Ok(())
    } else {
        Err(stale(lease))
    }
}

/// Raises `fetched_upto` of a partition to `highest` if it is still at `epoch` (and, with
/// `owned_only`, has an owner); false when it is not.
pub(crate) fn raise_fetched(
    conn: &Connection,
    sub_id: i64,
    (partition, epoch): (u32, u64),
    highest: u64,
    owned_only: bool,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE partitions SET fetched_upto = max(fetched_upto, ?4)
             WHERE subscription_id = ?1 AND partition = ?2 AND epoch = ?3
               AND (NOT ?5 OR owner IS NOT NULL)",
        )
        .and_then(|mut st| {
            st.execute(params![
                sub_id,
                partition,
                int(epoch),
                int(highest),
                owned_only
            ])
        })
        .db()?;
    Ok(changed == 1)
}

/// The error for a lease whose partition changed owner.
pub(crate) fn stale(lease: &Lease) -> Error {
    Error::conflict(format!(
        "lease of `{}` partition {} at epoch {} is stale: the partition changed owner",
        lease.subscription, lease.partition, lease.epoch
    ))
}

/// The partition's cursor if `lease` still holds it, else a `Conflict`.
pub(crate) fn check_epoch(conn: &Connection, sub_id: i64, lease: &Lease) -> Result<u64> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT epoch, cursor FROM partitions WHERE subscription_id = ?1 AND partition = ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![sub_id, lease.partition], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .db()?;
    match row {
        Some((epoch, cursor)) if uint(epoch) == lease.epoch => Ok(uint(cursor)),
        _ => Err(stale(lease)),
    }
}

/// Of these deliveries, the ids at or below the cursor or in the inbox.
pub(crate) async fn seen(
    backend: &SqliteBackend,
    lease: &Lease,
    deliveries: &[(Position, String)],
) -> Result<Vec<String>> {
    let lease = lease.clone();
    let deliveries = deliveries.to_vec();
    backend
        .readers()
        .snapshot(move |conn| {
            let sub = subs::load(conn, &lease.subscription)?;
            let cursor: i64 = conn
                .prepare_cached(
                    "SELECT cursor FROM partitions WHERE subscription_id = ?1 AND partition = ?2",
                )
                .and_then(|mut st| st.query_row(params![sub.id, lease.partition], |r| r.get(0)))
                .optional()
                .db()?
                .unwrap_or(0);
            let mut inbox = conn
                .prepare_cached("SELECT 1 FROM inbox WHERE subscription_id = ?1 AND event_id = ?2")
                .db()?;
            let mut seen = Vec::new();
            for (position, id) in deliveries {
                if position <= uint(cursor) || inbox.exists(params![sub.id, id]).db()? {
                    seen.push(id);
                }
            }
            Ok(seen)
        })
        .await
}

/// Records a failed attempt, fenced by the lease epoch.
pub(crate) async fn record_failure(
    backend: &SqliteBackend,
    lease: &Lease,
    position: Position,
    attempt: Attempt,
) -> Result<()> {
    let lease = lease.clone();
    backend
        .writer()
        .call(move |tx, _| {
            let sub = subs::load(tx, &lease.subscription)?;
            check_epoch(tx, sub.id, &lease)?;
            push_attempt(tx, sub.id, position, |_| attempt)
        })
        .await
}

/// The recorded attempts of one delivery, oldest first.
pub(crate) async fn failures(
    backend: &SqliteBackend,
    subscription: &str,
    position: Position,
) -> Result<Vec<Attempt>> {
    let name = subscription.to_owned();
    backend
        .readers()
        .run(move |conn| {
            let sub = subs::load(conn, &name)?;
            attempts(conn, sub.id, position)
        })
        .await
}

/// The attempts stored for `(subscription, position)`.
pub(crate) fn attempts(conn: &Connection, sub_id: i64, position: Position) -> Result<Vec<Attempt>> {
    let json: Option<String> = conn
        .prepare_cached(
            "SELECT attempts FROM failures WHERE subscription_id = ?1 AND position = ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![sub_id, int(position)], |r| r.get(0))
                .optional()
        })
        .db()?;
    match json {
        Some(json) => serde_json::from_str(&json).map_err(|e| from_json("attempts", e)),
        None => Ok(Vec::new()),
    }
}

/// Appends an attempt to a delivery's history; `make` gets the attempt's 1-based number.
pub(crate) fn push_attempt(
    conn: &Connection,
    sub_id: i64,
    position: Position,
    make: impl FnOnce(u32) -> Attempt,
) -> Result<()> {
    let mut history = attempts(conn, sub_id, position)?;
    let number = u32::try_from(history.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    history.push(make(number));
    let json = serde_json::to_string(&history).map_err(|e| from_json("attempts", e))?;
    conn.prepare_cached(
        "INSERT INTO failures (subscription_id, position, attempts) VALUES (?1, ?2, ?3)
         ON CONFLICT DO UPDATE SET attempts = excluded.attempts",
    )
    .and_then(|mut st| st.execute(params![sub_id, int(position), json]))
    .db()?;
    Ok(())
}
