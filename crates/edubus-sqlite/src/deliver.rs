//! Delivery: fetch (replayed entries first, then the partition's log after a position),
//! `seen`, and the failed-attempt history that keeps delivery counts across crashes.

use edubus_core::{Attempt, Delivery, Error, Fetched, Lease, Position, Result};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use crate::SqliteBackend;
use crate::clock::{int, uint};
use crate::error::{Db, from_json};
use crate::store::{RECORDED_COLUMNS, head_position, recorded};
use crate::subs::{self, Sub, type_filter};

/// Fetches up to `max` deliveries: replay-queue entries above `after_requeue`, then log events
/// above `after`, flagged when the inbox already has them, in one read snapshot whose head
/// bounds `scanned_to`. When log events were fetched, records through the writer how far the
/// lease fetched before returning them (a replay-only fetch writes nothing).
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
    let read_lease = lease.clone();
    let (sub_id, deliveries, scanned_to) = backend
        .readers()
        .snapshot(move |conn| read_deliveries(conn, &read_lease, after, after_requeue, max))
        .await?;
    let highest = deliveries
        .iter()
        .filter(|d| !d.replay)
        .map(|d| d.event.position)
        .max();
    if let Some(highest) = highest {
        let lease = lease.clone();
        // One UPDATE that fails as a whole: no savepoint needed.
        backend
            .writer()
            .call_unguarded(move |tx, _| mark_fetched(tx, sub_id, &lease, highest))
            .await?;
    }
    Ok(Fetched {
        deliveries,
        scanned_to,
    })
}

/// Reads (and decodes, on this blocking thread) the deliveries of one fetch, with the
/// position up to which the partition was scanned.
fn read_deliveries(
    conn: &Connection,
    lease: &Lease,
    after: Position,
    after_requeue: u64,
    max: usize,
) -> Result<(i64, Vec<Delivery>, Position)> {
    let head = head_position(conn)?;
    let sub = subs::load(conn, &lease.subscription)?;
    let mut out = requeued(conn, &sub, lease.partition, after_requeue, max)?;
    let sql = format!(
        "SELECT {RECORDED_COLUMNS}, COALESCE(json_array_length(f.attempts), 0),
                i.event_id IS NOT NULL
         FROM events e
         LEFT JOIN failures f ON f.subscription_id = ?1 AND f.position = e.position
         LEFT JOIN inbox i ON i.subscription_id = ?1 AND i.event_id = e.id
         WHERE e.partition = ?2 AND e.position > ?3 AND {}
         ORDER BY e.position LIMIT ?5",
        type_filter!("e", "?4")
    );
    let left = max - out.len();
    let mut scanned_to = head.max(after);
    if left > 0 {
        let mut st = conn.prepare_cached(&sql).db()?;
        let args = params![
            sub.id,
            lease.partition,
            int(after),
            sub.types_json,
            int(left as u64)
        ];
        let rows = st.query_map(args, |row| delivery(row, None)).db()?;
        let before = out.len();
        for row in rows {
            out.push(row.db()?);
        }
        if out.len() - before == left {
            scanned_to = out.last().map_or(after, |d| d.event.position);
        }
    } else {
        scanned_to = after;
    }
    Ok((sub.id, out, scanned_to))
}

/// Replay-queue entries of the partition with an id above `after`, by id.
fn requeued(
    conn: &Connection,
    sub: &Sub,
    partition: u32,
    after: u64,
    max: usize,
) -> Result<Vec<Delivery>> {
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
        .query_map(args, |row| delivery(row, Some(uint(row.get(0)?))))
        .db()?;
    rows.map(|r| r.db()).collect()
}

/// One delivery from a row: [`RECORDED_COLUMNS`] (after the requeue id, if any), then the
/// number of recorded attempts.
fn delivery(row: &rusqlite::Row<'_>, requeue_id: Option<u64>) -> rusqlite::Result<Delivery> {
    let at = usize::from(requeue_id.is_some());
    let mut event = recorded(row, at)?;
    let attempts: u32 = row.get(at + 9)?;
    let handled = match requeue_id {
        Some(_) => {
            event.envelope.replay = Some(true);
            false
        }
        None => row.get(at + 10)?,
    };
    Ok(Delivery {
        seq: event.position,
        event,
        delivery_count: attempts.saturating_add(1),
        replay: requeue_id.is_some(),
        requeue_id,
        received_at: Timestamp::now(),
        handled,
    })
}

/// Checks the epoch and records how far the lease fetched (`fetched_upto`).
fn mark_fetched(conn: &Connection, sub_id: i64, lease: &Lease, highest: u64) -> Result<()> {
    let changed = conn
        .prepare_cached(
            "UPDATE partitions SET fetched_upto = max(fetched_upto, ?4)
             WHERE subscription_id = ?1 AND partition = ?2 AND epoch = ?3",
        )
        .and_then(|mut st| {
            st.execute(params![
                sub_id,
                lease.partition,
                int(lease.epoch),
                int(highest)
            ])
        })
        .db()?;
    if changed == 0 {
        return Err(stale(lease));
    }
    Ok(())
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
