//! Lag counters, so `stats` costs a few rows per subscription instead of a scan of the log
//! (health checks and benchmarks poll it every few milliseconds). Per subscription and
//! partition, `appended` counts the matching events after the start position and `settled`
//! those at or below the cursor; lag is their difference. Appends, cursor moves and
//! re-registrations keep them exact, in the same transaction.

use std::collections::HashMap;

use edubus_core::Result;
use rusqlite::{Connection, params};

use crate::clock::int;
use crate::error::{Db, from_json};
use crate::subs::{type_filter, with_types};

/// Events just inserted, counted by `(partition, type)`.
pub(crate) type Inserted<'a> = HashMap<(u32, &'a str), u64>;

/// Adds freshly appended events to the `appended` counter of every subscription receiving
/// them: one UPDATE per subscription and partition touched, not per event.
pub(crate) fn on_append(conn: &Connection, inserted: &Inserted<'_>) -> Result<()> {
    if inserted.is_empty() {
        return Ok(());
    }
    let mut subs = conn
        .prepare_cached("SELECT id, types FROM subscriptions")
        .db()?;
    let rows = subs
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .db()?;
    let mut add = conn
        .prepare_cached(
            "UPDATE partitions SET appended = appended + ?3
             WHERE subscription_id = ?1 AND partition = ?2",
        )
        .db()?;
    for row in rows {
        let (sub_id, types_json) = row.db()?;
        let types: Vec<String> =
            serde_json::from_str(&types_json).map_err(|e| from_json("types", e))?;
        let mut per_partition: HashMap<u32, u64> = HashMap::new();
        for ((partition, ty), n) in inserted {
            if types.is_empty() || types.iter().any(|t| t == ty) {
                *per_partition.entry(*partition).or_default() += n;
            }
        }
        for (partition, n) in per_partition {
            add.execute(params![sub_id, partition, int(n)]).db()?;
        }
    }
    Ok(())
}

/// Moves a partition's cursor from `from` to `to` (`to > from`), counting the matching events
/// it passes into `settled`.
pub(crate) fn advance(
    conn: &Connection,
    sub_id: i64,
    types: &[String],
    partition: u32,
    (from, to): (u64, u64),
) -> Result<()> {
    let sql = format!(
        "UPDATE partitions SET cursor = ?4, fetched_upto = max(fetched_upto, ?4),
            settled = settled + (SELECT count(*) FROM events e
                WHERE e.partition = ?2 AND e.position > ?3 AND e.position <= ?4 AND {})
         WHERE subscription_id = ?1 AND partition = ?2",
        type_filter("e", 5, types)
    );
    let (from, to) = (int(from), int(to));
    let args = with_types(&[&sub_id, &partition, &from, &to], types);
    conn.prepare_cached(&sql)
        .and_then(|mut st| st.execute(&*args))
        .db()?;
    Ok(())
}

/// Recounts both counters of a subscription from the log (at registration, or when its
/// types changed).
pub(crate) fn recount(conn: &Connection, sub_id: i64, types: &[String], start: u64) -> Result<()> {
    let filter = type_filter("e", 3, types);
    let sql = format!(
        "UPDATE partitions SET
            appended = (SELECT count(*) FROM events e
                WHERE e.partition = partitions.partition AND e.position > ?2 AND {filter}),
            settled = (SELECT count(*) FROM events e
                WHERE e.partition = partitions.partition AND e.position > ?2
                  AND e.position <= partitions.cursor AND {filter})
         WHERE subscription_id = ?1"
    );
    let start = int(start);
    let args = with_types(&[&sub_id, &start], types);
    conn.prepare_cached(&sql)
        .and_then(|mut st| st.execute(&*args))
        .db()?;
    Ok(())
}
