//! The by-key index, maintained in batches. Keys arrive in random order, so an index on
//! `events(key, position)` rewrites most of its pages at every group commit: measured, it cost
//! a third of the append throughput. Instead `event_keys (key, position)` is filled by the
//! writer, one partition at a time, once [`KEY_BATCH`] events of the log are waiting, sorted;
//! `meta.keys_indexed_upto:<partition>` says how far each partition goes (an older file's
//! `meta.keys_indexed_upto` for partitions without one). A by-key read takes the indexed part
//! from it and the short tail after it from the key's partition: a key has one partition.
//!
//! A round reads the keys of the waiting events by position, [`READ_CHUNK`] positions at a
//! time, then indexes them partition by partition, [`INDEX_CHUNK`] keys per transaction: the
//! writer runs one step between groups of commands, and no step holds it for more than a
//! couple of milliseconds (a round of the whole log in one go held it for tens of them).

use edubus_core::Result;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::clock::int;
use crate::error::Db;
use crate::store::head_position;

/// Unindexed events of the log after which each partition is indexed (bounds the tail a
/// by-key read scans).
pub(crate) const KEY_BATCH: u64 = 32_768;
/// Log positions a round reads per step (about 2 ms at 1 KB per event).
const READ_CHUNK: u64 = 4_096;
/// Keys a round indexes per transaction.
const INDEX_CHUNK: usize = 1_024;

/// The `meta` key of a partition's bound.
fn bound_key(partition: u32) -> String {
    format!("keys_indexed_upto:{partition}")
}

/// How far `event_keys` is complete for the keys of `partition` (in the caller's snapshot).
pub(crate) fn indexed_upto(conn: &Connection, partition: u32) -> Result<u64> {
    let own = meta_u64(conn, &bound_key(partition))?;
    match own {
        Some(upto) => Ok(upto),
        None => Ok(meta_u64(conn, "keys_indexed_upto")?.unwrap_or(0)),
    }
}

/// The bound of every partition, for the writer's schedule.
pub(crate) fn bounds(conn: &Connection, partitions: u32) -> Result<Vec<u64>> {
    (0..partitions).map(|p| indexed_upto(conn, p)).collect()
}

fn meta_u64(conn: &Connection, key: &str) -> Result<Option<u64>> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
        .db()?;
    Ok(value.and_then(|v| v.parse().ok()))
}

/// Whether some partition is [`KEY_BATCH`] events or more behind `head`.
pub(crate) fn due(head: u64, bounds: &[u64]) -> bool {
    bounds
        .iter()
        .min()
        .is_some_and(|upto| head.saturating_sub(*upto) >= KEY_BATCH)
}

/// The keys of a round: read from the log by position, then indexed partition by partition.
pub(crate) struct Staged {
    /// The log head when the round began: each partition's bound once indexed.
    head: u64,
    /// Each partition's bound when the round began: only keys above it are staged.
    from: Vec<u64>,
    /// Positions up to here are read.
    read_upto: u64,
    /// Per partition, `(key, position)` (sorted once every position is read); `None` once
    /// indexed.
    rows: Vec<Option<Vec<(String, i64)>>>,
    /// Keys of the partition being indexed already written.
    written: usize,
}

/// What one [`Staged::step`] did.
pub(crate) enum Step {
    /// Read keys, or indexed part of a partition.
    Progress,
    /// Indexed the rest of `partition`: its bound is now the `u64`.
    Indexed(u32, u64),
    /// Every partition is indexed: the round is over.
    Done,
}

impl Staged {
    /// A round over the events after each partition's `bounds`, up to the head.
    pub(crate) fn start(conn: &Connection, bounds: &[u64]) -> Result<Self> {
        Ok(Self {
            head: head_position(conn)?,
            from: bounds.to_vec(),
            read_upto: bounds.iter().copied().min().unwrap_or(0),
            rows: vec![Some(Vec::new()); bounds.len()],
            written: 0,
        })
    }

    /// One bounded piece of the round: reads the next [`READ_CHUNK`] positions while some are
    /// unread, then writes the next [`INDEX_CHUNK`] keys of the first partition not indexed,
    /// in a transaction of its own (entries another process indexed meanwhile are kept). A
    /// partition's bound moves only with its last keys: `event_keys` entries above a bound are
    /// ignored by reads, which scan the tail after it.
    pub(crate) fn step(&mut self, conn: &mut Connection) -> Result<Step> {
        if self.read_upto < self.head {
            self.read_chunk(conn)?;
            return Ok(Step::Progress);
        }
        let Some(index) = self.rows.iter().position(Option::is_some) else {
            return Ok(Step::Done);
        };
        let partition = u32::try_from(index).unwrap_or(u32::MAX);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let upto = indexed_upto(&tx, partition)?;
        let keys = self.rows[index].as_deref().unwrap_or_default();
        let chunk = keys.get(self.written..).unwrap_or_default();
        let chunk = &chunk[..chunk.len().min(INDEX_CHUNK)];
        let last = self.written + chunk.len() >= keys.len();
        if upto < self.head {
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO event_keys (key, position) VALUES (?1, ?2)")
                .db()?;
            for (key, position) in chunk {
                if *position > int(upto) {
                    insert.execute(params![key, position]).db()?;
                }
            }
            drop(insert);
            if last {
                tx.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut st| st.execute([bound_key(partition), self.head.to_string()]))
                .db()?;
            }
        }
        tx.commit().db()?;
        if !last && upto < self.head {
            self.written += chunk.len();
            return Ok(Step::Progress);
        }
        self.rows[index] = None;
        self.written = 0;
        Ok(Step::Indexed(partition, self.head.max(upto)))
    }

    /// Reads the keys of the next [`READ_CHUNK`] positions; sorts every partition's keys
    /// once the last one is read.
    fn read_chunk(&mut self, conn: &Connection) -> Result<()> {
        let to = self.head.min(self.read_upto.saturating_add(READ_CHUNK));
        let mut st = conn
            .prepare_cached(
                "SELECT partition, key, position FROM events
                 WHERE position > ?1 AND position <= ?2",
            )
            .db()?;
        let mut found = st.query(params![int(self.read_upto), int(to)]).db()?;
        while let Some(row) = found.next().db()? {
            let (partition, position): (u32, i64) = (row.get(0).db()?, row.get(2).db()?);
            let partition = partition as usize;
            if let (Some(Some(part)), Some(bound)) =
                (self.rows.get_mut(partition), self.from.get(partition))
                && position > int(*bound)
            {
                part.push((row.get(1).db()?, position));
            }
        }
        self.read_upto = to;
        if to >= self.head {
            for part in self.rows.iter_mut().flatten() {
                part.sort_unstable();
            }
        }
        Ok(())
    }
}

/// Removes the by-key entry of an event being deleted (trim).
pub(crate) fn forget(conn: &Connection, key: &str, position: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM event_keys WHERE key = ?1 AND position = ?2")
        .and_then(|mut st| st.execute(params![key, position]))
        .db()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteConfig;
    use crate::schema::{migrate, open_writer};

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_round_reads_and_indexes_in_bounded_steps_and_moves_the_bound_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_writer(&SqliteConfig::in_dir(dir.path())).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n
                 WHERE value < 5000)
             INSERT INTO events (id, stream, partition, key, type, version, recorded_at,
                 envelope)
             SELECT 'id-' || value, 's', 0, 'k' || (value % 50), 't', 1, value, '{}' FROM n",
        )
        .unwrap();
        let mut round = Staged::start(&conn, &[0]).unwrap();
        let mut steps = Vec::new();
        loop {
            let keys_before = count(&conn, "SELECT count(*) FROM event_keys");
            match round.step(&mut conn).unwrap() {
                Step::Progress => {
                    let written = count(&conn, "SELECT count(*) FROM event_keys") - keys_before;
                    assert!(written <= INDEX_CHUNK as i64);
                    assert_eq!(indexed_upto(&conn, 0).unwrap(), 0, "the bound moves last");
                    steps.push(written);
                }
                Step::Indexed(partition, upto) => {
                    assert_eq!((partition, upto), (0, 5000));
                    assert_eq!(indexed_upto(&conn, 0).unwrap(), 5000);
                    steps.push(-1);
                }
                Step::Done => break,
            }
        }
        // Two reads (4,096 and 904 positions), four chunks of 1,024 keys, then the last 904
        // with the bound.
        assert_eq!(steps, [0, 0, 1024, 1024, 1024, 1024, -1]);
        assert_eq!(count(&conn, "SELECT count(*) FROM event_keys"), 5000);
    }
}
