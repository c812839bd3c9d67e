//! Settlement (one writer command): check the lease epoch, commit each settlement in its own
//! savepoint (work, caused events, dead letter, cleanup), advance the cursor but never past a
//! failed settlement, and write inbox rows only for what stays above the new cursor.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use edubus_core::{Error, Lease, Outcome, Position, Result, Settlement};
use rusqlite::{Connection, Transaction, params};

use crate::SqliteBackend;
use crate::append::{NewEvent, insert_events};
use crate::clock::{int, now_micros, uint};
use crate::counts;
use crate::deliver::check_epoch;
use crate::dlq::insert_dead_letter;
use crate::error::{Db, from_sqlite};
use crate::subs::{self, Sub};
use crate::transport::SqliteWork;
use crate::writer::{WriterState, exec};

/// What a committed settlement leaves for the inbox pass.
struct Done {
    position: Position,
    event_id: String,
    replay: bool,
}

/// Settles a batch of one lease; see the module documentation.
pub(crate) async fn settle(
    backend: &SqliteBackend,
    lease: &Lease,
    settlements: Vec<Settlement<SqliteWork>>,
    cursor: Position,
) -> Result<Vec<Result<()>>> {
    let lease = lease.clone();
    backend
        .writer()
        .call_unguarded(move |tx, state| settle_in(tx, state, &lease, settlements, cursor))
        .await
}

/// Runs without a savepoint of its own: a savepoint per settlement command copied the pages
/// the group had already touched (the partitions' cursor rows share a page) before every
/// change. It fails before its first write (unknown subscription, lost lease) or else marks
/// the group poisoned; a failed settlement is undone by its own nested savepoint.
fn settle_in(
    tx: &Transaction<'_>,
    state: &mut WriterState,
    lease: &Lease,
    settlements: Vec<Settlement<SqliteWork>>,
    cursor: Position,
) -> Result<Vec<Result<()>>> {
    let sub = subs::load(tx, &lease.subscription)?;
    let current = check_epoch(tx, sub.id, lease)?;
    let failed_before = failure_positions(tx, sub.id, &settlements)?;
    let written = write_settled(
        tx,
        state,
        &sub,
        lease,
        settlements,
        (current, cursor),
        &failed_before,
    );
    state.poisoned |= written.is_err();
    written
}

/// The writes of [`settle_in`]: each settlement's outcome, the inbox rows, the cursor.
fn write_settled(
    tx: &Transaction<'_>,
    state: &mut WriterState,
    sub: &Sub,
    lease: &Lease,
    settlements: Vec<Settlement<SqliteWork>>,
    (current, cursor): (Position, Position),
    failed_before: &HashSet<Position>,
) -> Result<Vec<Result<()>>> {
    let mut results = Vec::with_capacity(settlements.len());
    let mut done = Vec::with_capacity(settlements.len());
    let mut lowest_failed: Option<Position> = None;
    for s in settlements {
        let (position, event_id, requeue_id) = (s.position, s.event_id.clone(), s.requeue_id);
        let clean_failures = failed_before.contains(&position);
        // The common case, an in-order success with nothing to write, costs no statement.
        let result = if is_trivial(&s, clean_failures) {
            Ok(())
        } else {
            in_savepoint(tx, state, |tx, state| {
                apply(tx, state, sub, lease, s, clean_failures)
            })?
        };
        match &result {
            Ok(()) => done.push(Done {
                position,
                event_id,
                replay: requeue_id.is_some(),
            }),
            // A replayed delivery sits at or below the cursor already: it holds nothing back.
            Err(_) if requeue_id.is_none() => {
                lowest_failed = Some(lowest_failed.map_or(position, |p| p.min(position)));
            }
            Err(_) => {}
        }
        results.push(result);
    }
    let new_cursor = next_cursor(current, cursor, lowest_failed);
    write_inbox(tx, sub.id, lease.partition, new_cursor, &done)?;
    if new_cursor > current {
        counts::advance(
            tx,
            sub.id,
            &sub.types,
            lease.partition,
            (current, new_cursor),
        )?;
    }
    Ok(results)
}

/// The cursor after a batch: as asked, but below the lowest failed settlement, never back.
fn next_cursor(
    current: Position,
    requested: Position,
    lowest_failed: Option<Position>,
) -> Position {
    let capped = lowest_failed.map_or(requested, |f| requested.min(f.saturating_sub(1)));
    capped.max(current)
}

/// Positions of the batch with a failure history, in one range query (not one per event).
fn failure_positions(
    conn: &Connection,
    sub_id: i64,
    settlements: &[Settlement<SqliteWork>],
) -> Result<HashSet<Position>> {
    let positions = settlements.iter().map(|s| s.position);
    let (Some(low), Some(high)) = (positions.clone().min(), positions.max()) else {
        return Ok(HashSet::new());
    };
    let mut st = conn
        .prepare_cached(
            "SELECT position FROM failures
             WHERE subscription_id = ?1 AND position BETWEEN ?2 AND ?3",
        )
        .db()?;
    let rows = st
        .query_map(params![sub_id, int(low), int(high)], |r| r.get::<_, i64>(0))
        .db()?;
    rows.map(|r| r.db().map(uint)).collect()
}

/// A success without work, caused events, failure history or replay entry: nothing to write.
fn is_trivial(s: &Settlement<SqliteWork>, clean_failures: bool) -> bool {
    let nothing = match &s.outcome {
        Outcome::Handled { work, caused } => work.is_none() && caused.is_empty(),
        Outcome::Duplicate => true,
        Outcome::Dead(_) => false,
    };
    nothing && !clean_failures && s.requeue_id.is_none()
}

/// Runs `f` in a nested savepoint, rolled back (with the head it moved) if it fails. The
/// outer error is a savepoint that could not be managed: the whole command must fail.
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    state: &mut WriterState,
    f: impl FnOnce(&Transaction<'_>, &mut WriterState) -> Result<T>,
) -> Result<Result<T>> {
    exec(tx, "SAVEPOINT settlement")?;
    let head = state.head;
    let result = f(tx, state);
    if result.is_err() {
        state.rewind(head);
        exec(tx, "ROLLBACK TO settlement")?;
    }
    exec(tx, "RELEASE settlement")?;
    Ok(result)
}

/// Commits one settlement's outcome and removes its failure history and replay entry.
fn apply(
    tx: &Transaction<'_>,
    state: &mut WriterState,
    sub: &Sub,
    lease: &Lease,
    settlement: Settlement<SqliteWork>,
    clean_failures: bool,
) -> Result<()> {
    match settlement.outcome {
        Outcome::Handled { work, caused } => {
            let mut appends = caused;
            if let Some(work) = work {
                appends.extend(run_work(tx, work)?);
            }
            let mut rows = NewEvent::batch(appends, state.partitions, false);
            insert_events(tx, &mut rows, state)?;
        }
        Outcome::Duplicate => {}
        Outcome::Dead(letter) => insert_dead_letter(tx, sub.id, lease.partition, &letter)?,
    }
    if clean_failures {
        tx.prepare_cached("DELETE FROM failures WHERE subscription_id = ?1 AND position = ?2")
            .and_then(|mut st| st.execute(params![sub.id, int(settlement.position)]))
            .db()?;
    }
    if let Some(id) = settlement.requeue_id {
        tx.prepare_cached("DELETE FROM requeue WHERE id = ?1 AND subscription_id = ?2")
            .and_then(|mut st| st.execute(params![int(id), sub.id]))
            .db()?;
    }
    Ok(())
}

/// Runs a handler's transactional work; its error (or panic) fails only this settlement.
fn run_work(tx: &Transaction<'_>, work: SqliteWork) -> Result<Vec<edubus_core::Append>> {
    let outcome = catch_unwind(AssertUnwindSafe(|| work(tx)))
        .map_err(|_| Error::internal("the handler's transactional work panicked", "panic"))?;
    outcome.map_err(|e| match e.downcast::<Error>() {
        Ok(err) => *err,
        Err(e) => match e.downcast::<rusqlite::Error>() {
            Ok(err) => from_sqlite(*err),
            Err(e) => Error::Internal {
                message: format!("the handler's transactional work failed: {e}"),
                source: Some(e),
            },
        },
    })
}

/// Inbox rows for what committed above the new cursor (replays bypass the inbox): at or below
/// it, the cursor itself records the event as handled.
fn write_inbox(
    conn: &Connection,
    sub_id: i64,
    partition: u32,
    cursor: Position,
    done: &[Done],
) -> Result<()> {
    let above = done.iter().filter(|d| d.position > cursor && !d.replay);
    let mut st = None;
    let now = now_micros();
    for d in above {
        let st = match &mut st {
            Some(st) => st,
            None => st.insert(
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO inbox
                        (subscription_id, event_id, partition, position, handled_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .db()?,
            ),
        };
        st.execute(params![sub_id, d.event_id, partition, int(d.position), now])
            .db()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_cursor;

    #[test]
    fn cursor_stops_below_a_failure_and_never_goes_back() {
        assert_eq!(next_cursor(5, 10, None), 10);
        assert_eq!(next_cursor(5, 10, Some(8)), 7);
        assert_eq!(next_cursor(5, 10, Some(6)), 5);
        assert_eq!(next_cursor(5, 3, None), 5);
    }
}
