//! Partition leases: membership heartbeats, fair-share rebalancing, takeover of expired and
//! stalled partitions with epoch fencing, and release (docs/embedded.md, "Rebalance").

use std::collections::BTreeMap;

use edubus_core::{Attempt, ConsumerId, Lease, LeaseOptions, Result};
use jiff::Timestamp;
use rusqlite::{Connection, Row, params};

use crate::SqliteBackend;
use crate::clock::{duration_micros, int, micros, now_micros, timestamp, uint};
use crate::deliver::push_attempt;
use crate::error::Db;
use crate::subs::{self, Sub, type_filter, with_types};

/// One partition row of a subscription.
#[derive(Debug, Clone)]
pub(crate) struct PartRow {
    pub partition: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub cursor: u64,
    pub expires_at: i64,
    pub busy_since: Option<i64>,
    pub fetched_upto: u64,
}

/// Why a partition is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Take {
    /// Nobody holds it.
    Free,
    /// Its owner stopped renewing.
    Expired(String),
    /// Its owner has had a delivery in flight for longer than `claim_after`.
    Stalled(String),
}

/// Renews, rebalances and returns the leases `consumer` holds afterwards.
pub(crate) async fn rebalance(
    backend: &SqliteBackend,
    subscription: &str,
    consumer: &ConsumerId,
    options: LeaseOptions,
    busy_since: &[(u32, Timestamp)],
) -> Result<Vec<Lease>> {
    let name = subscription.to_owned();
    let me = consumer.0.clone();
    let busy: Vec<(u32, i64)> = busy_since.iter().map(|(p, t)| (*p, micros(*t))).collect();
    backend
        .writer()
        .call(move |tx, state| {
            let sub = subs::load(tx, &name)?;
            let now = now_micros();
            let live = heartbeat(tx, &sub, &me, now, duration_micros(options.ttl), &busy)?;
            let rows = partition_rows(tx, sub.id)?;
            let fair = state.partitions.div_ceil(live.max(1)) as usize;
            let claim_after = duration_micros(options.claim_after);
            let (takes, releases) = plan(&rows, &me, now, claim_after, fair);
            for (row, why) in takes {
                take(tx, &sub, &rows[row], &me, why, now, options)?;
            }
            for row in releases {
                release_one(tx, sub.id, rows[row].partition, &me, None)?;
            }
            leases_of(tx, &sub, &me)
        })
        .await
}

/// Renews membership and leases, records `busy_since`, drops expired consumers; returns the
/// number of live consumers.
fn heartbeat(
    conn: &Connection,
    sub: &Sub,
    me: &str,
    now: i64,
    ttl: i64,
    busy: &[(u32, i64)],
) -> Result<u32> {
    let expires = now.saturating_add(ttl);
    let run = |sql: &str, args: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute(args))
            .db()
    };
    run(
        "INSERT INTO consumers (subscription_id, consumer, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT DO UPDATE SET expires_at = excluded.expires_at",
        params![sub.id, me, expires],
    )?;
    run(
        "DELETE FROM consumers WHERE subscription_id = ?1 AND expires_at < ?2",
        params![sub.id, now],
    )?;
    run(
        "UPDATE partitions SET expires_at = ?3, busy_since = NULL
         WHERE subscription_id = ?1 AND owner = ?2",
        params![sub.id, me, expires],
    )?;
    let mut mark = conn
        .prepare_cached(
            "UPDATE partitions SET busy_since = ?3
             WHERE subscription_id = ?1 AND partition = ?2 AND owner = ?4",
        )
        .db()?;
    for (partition, since) in busy {
        mark.execute(params![sub.id, partition, since, me]).db()?;
    }
    conn.prepare_cached("SELECT count(*) FROM consumers WHERE subscription_id = ?1")
        .and_then(|mut st| st.query_row([sub.id], |r| r.get(0)))
        .db()
}

fn part_row(row: &Row<'_>) -> rusqlite::Result<PartRow> {
    Ok(PartRow {
        partition: row.get(0)?,
        owner: row.get(1)?,
        epoch: uint(row.get(2)?),
        cursor: uint(row.get(3)?),
        expires_at: row.get(4)?,
        busy_since: row.get(5)?,
        fetched_upto: uint(row.get(6)?),
    })
}

/// Every partition row of a subscription, by partition.
pub(crate) fn partition_rows(conn: &Connection, sub_id: i64) -> Result<Vec<PartRow>> {
    let mut st = conn
        .prepare_cached(
            "SELECT partition, owner, epoch, cursor, expires_at, busy_since, fetched_upto
             FROM partitions WHERE subscription_id = ?1 ORDER BY partition",
        )
        .db()?;
    let rows = st.query_map([sub_id], part_row).db()?;
    rows.map(|r| r.db()).collect()
}

/// Which rows to take (stalled ones always, free or expired ones up to the fair share) and,
/// when nothing is taken, which idle rows of ours above the fair share to release.
fn plan(
    rows: &[PartRow],
    me: &str,
    now: i64,
    claim_after: i64,
    fair: usize,
) -> (Vec<(usize, Take)>, Vec<usize>) {
    let mine: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].owner.as_deref() == Some(me))
        .collect();
    let mut takes = Vec::new();
    let mut room = fair.saturating_sub(mine.len());
    for (i, row) in rows.iter().enumerate() {
        let why = match &row.owner {
            None => Take::Free,
            Some(owner) if owner == me => continue,
            Some(owner) if row.expires_at < now => Take::Expired(owner.clone()),
            Some(owner) if row.busy_since.is_some_and(|b| b < now - claim_after) => {
                takes.push((i, Take::Stalled(owner.clone())));
                continue;
            }
            Some(_) => continue,
        };
        if room > 0 {
            room -= 1;
            takes.push((i, why));
        }
    }
    let mut releases = Vec::new();
    if takes.is_empty() && mine.len() > fair {
        let idle = mine.iter().rev().filter(|&&i| rows[i].busy_since.is_none());
        releases.extend(idle.take(mine.len() - fair));
    }
    (takes, releases)
}

/// Takes one partition with a new epoch; from another owner, every fetched but unsettled
/// delivery gets an attempt recorded so its delivery count carries over.
fn take(
    conn: &Connection,
    sub: &Sub,
    row: &PartRow,
    me: &str,
    why: Take,
    now: i64,
    options: LeaseOptions,
) -> Result<()> {
    let (previous, error) = match why {
        Take::Free => (None, String::new()),
        Take::Expired(owner) => {
            let error = format!("interrupted: consumer {owner} stopped");
            (Some(owner), error)
        }
        Take::Stalled(owner) => {
            let error = format!("stalled for more than {:?}", options.claim_after);
            (Some(owner), error)
        }
    };
    if let Some(owner) = previous {
        for position in in_flight(conn, sub, row)? {
            push_attempt(conn, sub.id, position, |number| Attempt {
                number,
                at: timestamp(now),
                consumer: owner.clone(),
                error: error.clone(),
            })?;
        }
    }
    conn.prepare_cached(
        "UPDATE partitions SET owner = ?3, epoch = epoch + 1, expires_at = ?4, busy_since = NULL,
            fetched_upto = cursor
         WHERE subscription_id = ?1 AND partition = ?2 AND epoch = ?5",
    )
    .and_then(|mut st| {
        let expires = now.saturating_add(duration_micros(options.ttl));
        st.execute(params![sub.id, row.partition, me, expires, int(row.epoch)])
    })
    .db()?;
    Ok(())
}

/// Positions of matching events fetched but not settled: `(cursor, fetched_upto]`.
fn in_flight(conn: &Connection, sub: &Sub, row: &PartRow) -> Result<Vec<u64>> {
    if row.fetched_upto <= row.cursor {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT e.position FROM events e
         WHERE e.partition = ?1 AND e.position > ?2 AND e.position <= ?3 AND {}
         ORDER BY e.position",
        type_filter("e", 4, &sub.types)
    );
    let mut st = conn.prepare_cached(&sql).db()?;
    let (cursor, upto) = (int(row.cursor), int(row.fetched_upto));
    let args = with_types(&[&row.partition, &cursor, &upto], &sub.types);
    let rows = st.query_map(&*args, |r| r.get::<_, i64>(0)).db()?;
    rows.map(|r| r.db().map(uint)).collect()
}

/// Gives one partition up (only if `me` holds it, at `epoch` when given).
fn release_one(
    conn: &Connection,
    sub_id: i64,
    partition: u32,
    me: &str,
    epoch: Option<u64>,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE partitions SET owner = NULL, expires_at = 0, busy_since = NULL,
            fetched_upto = cursor
         WHERE subscription_id = ?1 AND partition = ?2 AND owner = ?3
           AND (?4 IS NULL OR epoch = ?4)",
    )
    .and_then(|mut st| st.execute(params![sub_id, partition, me, epoch.map(int)]))
    .db()?;
    Ok(())
}

/// The leases `me` holds in `sub`.
fn leases_of(conn: &Connection, sub: &Sub, me: &str) -> Result<Vec<Lease>> {
    let mut st = conn
        .prepare_cached(
            "SELECT partition, epoch, cursor FROM partitions
             WHERE subscription_id = ?1 AND owner = ?2 ORDER BY partition",
        )
        .db()?;
    let rows = st
        .query_map(params![sub.id, me], |r| {
            Ok(Lease {
                subscription: sub.name.clone(),
                partition: r.get(0)?,
                epoch: uint(r.get(1)?),
                cursor: uint(r.get(2)?),
            })
        })
        .db()?;
    rows.map(|r| r.db()).collect()
}

/// Gives leases back; a consumer left without partitions also leaves the membership, so the
/// others' fair share grows at once (a shutting-down worker).
pub(crate) async fn release(
    backend: &SqliteBackend,
    consumer: &ConsumerId,
    leases: &[Lease],
) -> Result<()> {
    let me = consumer.0.clone();
    let mut by_sub: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for lease in leases {
        let parts = by_sub.entry(lease.subscription.clone()).or_default();
        parts.push((lease.partition, lease.epoch));
    }
    backend
        .writer()
        .call(move |tx, _| {
            for (name, parts) in &by_sub {
                let sub = subs::load(tx, name)?;
                for &(partition, epoch) in parts {
                    release_one(tx, sub.id, partition, &me, Some(epoch))?;
                }
                if leases_of(tx, &sub, &me)?.is_empty() {
                    tx.prepare_cached(
                        "DELETE FROM consumers WHERE subscription_id = ?1 AND consumer = ?2",
                    )
                    .and_then(|mut st| st.execute(params![sub.id, me]))
                    .db()?;
                }
            }
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: u32, owner: Option<&str>, expires_at: i64, busy: Option<i64>) -> PartRow {
        PartRow {
            partition,
            owner: owner.map(str::to_owned),
            epoch: 1,
            cursor: 0,
            expires_at,
            busy_since: busy,
            fetched_upto: 0,
        }
    }

    #[test]
    fn plan_takes_fair_share_stalled_always_and_releases_idle_excess() {
        let rows: Vec<_> = (0..4).map(|p| row(p, None, 0, None)).collect();
        let (takes, _) = plan(&rows, "a", 100, 50, 2);
        assert_eq!(takes, vec![(0, Take::Free), (1, Take::Free)]);

        let mut rows: Vec<_> = (0..4).map(|p| row(p, Some("a"), 200, None)).collect();
        rows[3].owner = Some("b".into());
        rows[3].busy_since = Some(10);
        let (takes, releases) = plan(&rows, "c", 100, 50, 1);
        assert_eq!(takes, vec![(3, Take::Stalled("b".into()))]);
        assert!(releases.is_empty());

        rows[3].busy_since = None;
        let (takes, releases) = plan(&rows, "a", 100, 50, 2);
        assert!(takes.is_empty());
        assert_eq!(releases, vec![2]);

        rows[1].expires_at = 50;
        rows[1].owner = Some("x".into());
        let (takes, _) = plan(&rows, "b", 100, 50, 2);
        assert_eq!(takes, vec![(1, Take::Expired("x".into()))]);
    }
}
