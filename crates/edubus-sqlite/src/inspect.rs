//! Health and tracing: per-subscription stats and what each subscription did with an event.

use edubus_core::{DeliveryState, Recorded, Result, SubscriptionStats};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Params, params};

use crate::SqliteBackend;
use crate::clock::{int, now_micros, timestamp, uint};
use crate::error::Db;
use crate::subs::{self, Sub, type_filter, with_types};

/// Health of every subscription, from one snapshot.
pub(crate) async fn stats(backend: &SqliteBackend) -> Result<Vec<SubscriptionStats>> {
    backend
        .readers()
        .snapshot(|conn| {
            let now = now_micros();
            subs::load_all(conn)?
                .iter()
                .map(|sub| stats_of(conn, sub, now))
                .collect()
        })
        .await
}

/// One integer from a cached query.
fn count(conn: &Connection, sql: &str, args: impl Params) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(sql)
        .and_then(|mut st| st.query_row(args, |r| r.get(0)))
        .db()?;
    Ok(uint(n))
}

fn stats_of(conn: &Connection, sub: &Sub, now: i64) -> Result<SubscriptionStats> {
    let beyond_cursor =
        "SELECT COALESCE(sum(appended - settled), 0) FROM partitions WHERE subscription_id = ?1";
    let fetched = format!(
        "SELECT count(*) FROM partitions p JOIN events e
           ON e.partition = p.partition AND e.position > p.cursor AND e.position <= p.fetched_upto
         WHERE p.subscription_id = ?1 AND {}",
        type_filter("e", 2, &sub.types)
    );
    let replays = "SELECT count(*) FROM requeue WHERE subscription_id = ?1";
    let types = with_types(&[&sub.id], &sub.types);
    Ok(SubscriptionStats {
        subscription: sub.name.clone(),
        lag: count(conn, beyond_cursor, [sub.id])? + count(conn, replays, [sub.id])?,
        pending: count(conn, &fetched, &*types)?,
        dlq_depth: count(
            conn,
            "SELECT count(*) FROM dead_letters WHERE subscription_id = ?1 AND replayed_at IS NULL",
            [sub.id],
        )?,
        consumers: small(count(
            conn,
            "SELECT count(*) FROM consumers WHERE subscription_id = ?1 AND expires_at >= ?2",
            params![sub.id, now],
        )?),
        leased_partitions: small(count(
            conn,
            "SELECT count(*) FROM partitions
             WHERE subscription_id = ?1 AND owner IS NOT NULL AND expires_at >= ?2",
            params![sub.id, now],
        )?),
        last_event_at: last_event_at(conn, sub)?,
    })
}

fn small(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// When the newest event the subscription receives was recorded (a `type_heads` look-up per
/// type).
fn last_event_at(conn: &Connection, sub: &Sub) -> Result<Option<Timestamp>> {
    if sub.types.is_empty() {
        let last: Option<i64> = conn
            .prepare_cached("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1")
            .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
            .db()?;
        return Ok(last.map(timestamp));
    }
    let mut newest: Option<i64> = None;
    let mut st = conn
        .prepare_cached("SELECT max(recorded_at) FROM type_heads WHERE type = ?1")
        .db()?;
    for ty in &sub.types {
        let at: Option<i64> = st.query_row([ty], |r| r.get(0)).db()?;
        newest = newest.max(at);
    }
    Ok(newest.map(timestamp))
}

/// For each event, each subscription's state, by subscription name.
pub(crate) async fn states(
    backend: &SqliteBackend,
    events: &[Recorded],
) -> Result<Vec<Vec<(String, DeliveryState)>>> {
    let events: Vec<(u64, u32, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.position,
                e.partition,
                e.envelope.id.clone(),
                e.envelope.event_type.clone(),
            )
        })
        .collect();
    backend
        .readers()
        .snapshot(move |conn| {
            let subs = subs::load_all(conn)?;
            let mut out = Vec::with_capacity(events.len());
            for event in &events {
                let mut row = Vec::with_capacity(subs.len());
                for sub in &subs {
                    row.push((sub.name.clone(), state_of(conn, sub, event)?));
                }
                out.push(row);
            }
            Ok(out)
        })
        .await
}

/// What `sub` did with the event `(position, partition, id, type)`.
fn state_of(
    conn: &Connection,
    sub: &Sub,
    event: &(u64, u32, String, String),
) -> Result<DeliveryState> {
    let (position, partition, id, ty) = event;
    let pos = int(*position);
    if !sub.receives(ty) || *position <= sub.start_position {
        return Ok(DeliveryState::NotSubscribed);
    }
    let attempts = || -> Result<u32> {
        Ok(small(
            crate::deliver::attempts(conn, sub.id, *position)?.len() as u64,
        ))
    };
    let requeued = "SELECT count(*) FROM requeue WHERE subscription_id = ?1 AND position = ?2";
    if count(conn, requeued, params![sub.id, pos])? > 0 {
        return Ok(DeliveryState::Pending {
            attempts: attempts()?,
        });
    }
    let dead: Option<i64> = conn
        .prepare_cached(
            "SELECT id FROM dead_letters WHERE subscription_id = ?1 AND position = ?2
               AND replayed_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .and_then(|mut st| st.query_row(params![sub.id, pos], |r| r.get(0)).optional())
        .db()?;
    if let Some(dlq_id) = dead {
        return Ok(DeliveryState::DeadLettered {
            dlq_id: uint(dlq_id),
        });
    }
    let cursor = "SELECT cursor FROM partitions WHERE subscription_id = ?1 AND partition = ?2";
    let settled = count(conn, cursor, params![sub.id, partition])? >= *position;
    let inbox = "SELECT count(*) FROM inbox WHERE subscription_id = ?1 AND event_id = ?2";
    if settled || count(conn, inbox, params![sub.id, id])? > 0 {
        return Ok(DeliveryState::Handled);
    }
    Ok(DeliveryState::Pending {
        attempts: attempts()?,
    })
}
