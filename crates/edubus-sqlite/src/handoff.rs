//! The fast path from an append to an idle consumer of the same process.
//!
//! A fetch that finds nothing leaves a waiter for its lease. While a lease waits, the writer
//! keeps the events each group appends; before the commit it picks each waiter's deliveries
//! from them and records `fetched_upto` in the same transaction, so the fetch is recorded in
//! the commit that appended the events. After the commit it leaves them for the lease's next
//! fetch, which returns them without a read snapshot or a second commit before the handler
//! runs. Commits of other processes still reach waiters through the head channels, and a fetch
//! finding no hand-off reads the log as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use edubus_core::{Lease, Position};
use rusqlite::{Connection, params};

use crate::clock::{int, uint};
use crate::deliver::{RawDelivery, raise_fetched};
use crate::store::RawRecorded;

/// A waiter older than this is dropped unheard: its fetch was given up (the runtime fetches
/// again within its idle timeout, which registers anew).
const WAITER_TTL: Duration = Duration::from_secs(1);

type Slot = (String, u32);

/// Waiters and the deliveries handed to them, by (subscription, partition).
#[derive(Default)]
pub(crate) struct Handoff {
    waiting: Mutex<HashMap<Slot, Waiter>>,
    ready: Mutex<HashMap<Slot, Ready>>,
}

/// A lease whose last fetch came back empty.
struct Waiter {
    sub_id: i64,
    /// The types the subscription receives (empty: all).
    types: Vec<String>,
    epoch: u64,
    after: Position,
    max: usize,
    since: Instant,
}

/// Deliveries recorded by the writer for a lease's next fetch after `after`.
pub(crate) struct Ready {
    epoch: u64,
    after: Position,
    rows: Vec<RawDelivery>,
}

/// Hand-offs decided inside a group's transaction, published once it committed.
#[derive(Default)]
pub(crate) struct Offered(Vec<(Slot, Ready)>);

impl Handoff {
    /// Leaves a waiter for `lease`, whose fetch found nothing after `after`.
    pub(crate) fn wait_for(
        &self,
        lease: &Lease,
        sub_id: i64,
        types: Vec<String>,
        after: Position,
        max: usize,
    ) {
        let waiter = Waiter {
            sub_id,
            types,
            epoch: lease.epoch,
            after,
            max,
            since: Instant::now(),
        };
        lock(&self.waiting).insert(slot(lease), waiter);
    }

    /// Whether some lease waits: the writer then keeps the events a group appends
    /// ([`WriterState::fresh`](crate::writer::WriterState)) for [`Handoff::offer`].
    pub(crate) fn anyone_waiting(&self) -> bool {
        !lock(&self.waiting).is_empty()
    }

    /// The deliveries handed to `lease` for a fetch after `after`, if any; a hand-off for
    /// another epoch or position is dropped (the fetch reads the log instead).
    pub(crate) fn take(&self, lease: &Lease, after: Position) -> Option<Vec<RawDelivery>> {
        let ready = lock(&self.ready).remove(&slot(lease))?;
        (ready.epoch == lease.epoch && ready.after == after).then_some(ready.rows)
    }

    /// On the writer thread, inside the group's transaction: hands each waiter the events
    /// `fresh` (everything the group appended, by position) holds for it, and records them as
    /// fetched (fenced by the lease epoch and a live owner). A waiter is served only when no
    /// other event of its partition lies between its position and the group's first one.
    pub(crate) fn offer(&self, conn: &Connection, fresh: &[RawRecorded]) -> Offered {
        let mut waiting = lock(&self.waiting);
        if waiting.is_empty() || fresh.is_empty() {
            return Offered::default();
        }
        waiting.retain(|_, w| w.since.elapsed() < WAITER_TTL);
        let partitions: HashSet<u32> = fresh.iter().map(RawRecorded::partition).collect();
        let slots: Vec<Slot> = waiting
            .keys()
            .filter(|(_, p)| partitions.contains(p))
            .cloned()
            .collect();
        let mut offered = Vec::new();
        for slot in slots {
            let Some(waiter) = waiting.get(&slot) else {
                continue;
            };
            if let Some(rows) = serve(conn, slot.1, waiter, fresh) {
                let ready = Ready {
                    epoch: waiter.epoch,
                    after: waiter.after,
                    rows,
                };
                waiting.remove(&slot);
                offered.push((slot, ready));
            }
        }
        Offered(offered)
    }

    /// After the group committed: leaves its hand-offs for the leases' next fetches.
    pub(crate) fn publish(&self, offered: Offered) {
        if offered.0.is_empty() {
            return;
        }
        lock(&self.ready).extend(offered.0);
    }
}

/// The waiter's deliveries among `fresh`, recorded as fetched; `None` when there is none, when
/// an older event of the partition may be missing from them, or on any failure (the lease's
/// next fetch then reads the log as usual).
fn serve(
    conn: &Connection,
    partition: u32,
    w: &Waiter,
    fresh: &[RawRecorded],
) -> Option<Vec<RawDelivery>> {
    let mut mine = fresh
        .iter()
        .filter(|e| e.partition() == partition && e.position() > w.after);
    let first = mine.clone().next()?.position();
    if prior(conn, partition, first).ok()? > w.after {
        return None;
    }
    let rows: Vec<RawDelivery> = mine
        .by_ref()
        .filter(|e| w.types.is_empty() || w.types.iter().any(|t| t == e.event_type()))
        .take(w.max)
        .map(|e| RawDelivery::fresh(e.clone()))
        .collect();
    let highest = rows.last()?.position();
    let live = (partition, w.epoch);
    raise_fetched(conn, w.sub_id, live, highest, true)
        .ok()?
        .then_some(rows)
}

/// The newest position of `partition` below `position` (0 when there is none).
fn prior(conn: &Connection, partition: u32, position: Position) -> rusqlite::Result<Position> {
    conn.prepare_cached(
        "SELECT COALESCE(max(position), 0) FROM events WHERE partition = ?1 AND position < ?2",
    )
    .and_then(|mut st| st.query_row(params![partition, int(position)], |r| r.get(0)))
    .map(uint)
}

fn slot(lease: &Lease) -> Slot {
    (lease.subscription.clone(), lease.partition)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
