//! The by-key index, maintained in batches. Keys arrive in random order, so an index on
//! `events(key, position)` rewrites most of its pages at every group commit: measured, it cost
//! a third of the append throughput. Instead `event_keys` is filled by the writer, one
//! partition at a time, once [`KEY_BATCH`] events of the log are waiting, sorted;
//! `meta.keys_indexed_upto:<partition>` says how far each partition goes (an older file's
//! `meta.keys_indexed_upto` for partitions without one). A by-key read takes the indexed part
//! from it and the short tail after it from the key's partition: a key has one partition.
//!
//! Each round writes, under a segment of its own named by the log head it indexes up to, one
//! row per key with the key's positions (a JSON array): `(segment, partition, key, first)`
//! grows at its right edge only, so a round writes each page once, and a key published a
//! hundred times in a round costs one row. Sorting a round's entries into the older entries of
//! the same keys dirtied one page per key and split pages in the middle of the tree: at a
//! million entries that cost 2 µs per entry against 0.75 µs appended. A by-key read seeks the
//! key once per segment; trimming drops the segments wholly below the oldest event left.
//!
//! The writer remembers the keys it appends ([`Seen`]), so a round usually starts with all its
//! keys at hand. Otherwise (after a restart, or when another process appended too) it reads
//! them from the log by position, [`READ_CHUNK`] positions per step. It then indexes them
//! partition by partition, [`INDEX_CHUNK`] entries per transaction: the writer runs one step
//! between groups of commands, and no step holds it for more than a couple of milliseconds
//! (a round of the whole log in one go held it for tens of them).

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
/// Log positions one round covers at most, so a long unindexed log (an older file) is
/// indexed in several rounds instead of holding all its keys in memory at once.
const ROUND_MAX: u64 = 8 * KEY_BATCH;
/// Entries (events) a round indexes per transaction.
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

/// The keys the writer appended and no round has taken yet, in position order: complete for
/// the positions after `from` up to the writer's head.
pub(crate) struct Seen {
    from: u64,
    entries: Vec<(u32, String, i64)>,
}

impl Seen {
    /// Nothing known after `head` (the log's head when the writer starts).
    pub(crate) fn new(head: u64) -> Self {
        Self {
            from: head,
            entries: Vec::new(),
        }
    }

    /// The writer appended `key` at `position`.
    pub(crate) fn push(&mut self, partition: u32, key: &str, position: u64) {
        if self.entries.len() >= ROUND_MAX as usize {
            // No round took them (rounds kept failing): a later round reads them from the log.
            self.restart(position.saturating_sub(1));
        }
        self.entries
            .push((partition, key.to_owned(), int(position)));
    }

    /// Positions up to `head` were assigned by someone else, or the entries were lost: what
    /// is known starts after `head`.
    pub(crate) fn restart(&mut self, head: u64) {
        self.entries.clear();
        self.from = head;
    }

    /// Forgets the entries after `head` (their transaction rolled back).
    pub(crate) fn rewind(&mut self, head: u64) {
        while self.entries.last().is_some_and(|e| e.2 > int(head)) {
            self.entries.pop();
        }
    }

    /// Takes the entries up to `upto`: whoever takes them indexes them.
    fn take_upto(&mut self, upto: u64) -> Vec<(u32, String, i64)> {
        let n = self.entries.partition_point(|e| e.2 <= int(upto));
        self.from = self.from.max(upto);
        self.entries.drain(..n).collect()
    }
}

/// The keys of a round: from [`Seen`] or read from the log by position, then indexed
/// partition by partition.
pub(crate) struct Staged {
    /// The log head when the round began, or [`ROUND_MAX`] past the lowest bound: each
    /// partition's bound once indexed, and the segment of the round's entries.
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
    /// A round over the events after each partition's `bounds`, up to the head; `seen` and
    /// `known` (the writer's head) say whether the writer's memory holds all its keys.
    pub(crate) fn start(
        conn: &Connection,
        bounds: &[u64],
        seen: &mut Seen,
        known: u64,
    ) -> Result<Self> {
        let lowest = bounds.iter().copied().min().unwrap_or(0);
        let head = head_position(conn)?.min(lowest.saturating_add(ROUND_MAX));
        let complete = seen.from <= lowest && known >= head;
        // The round indexes every position up to its head: from memory, or else from the log.
        let taken = seen.take_upto(head);
        let mut round = Self {
            head,
            from: bounds.to_vec(),
            read_upto: lowest,
            rows: vec![Some(Vec::new()); bounds.len()],
            written: 0,
        };
        if complete {
            for (partition, key, position) in taken {
                round.stage(partition, key, position);
            }
            round.read_upto = head;
            round.sort();
        }
        Ok(round)
    }

    /// Keeps `key` at `position` for its partition if the partition's bound is below it.
    fn stage(&mut self, partition: u32, key: String, position: i64) {
        let index = partition as usize;
        if let (Some(Some(part)), Some(bound)) = (self.rows.get_mut(index), self.from.get(index))
            && position > int(*bound)
        {
            part.push((key, position));
        }
    }

    fn sort(&mut self) {
        for part in self.rows.iter_mut().flatten() {
            part.sort_unstable();
        }
    }

    /// One bounded piece of the round: reads the next [`READ_CHUNK`] positions while some are
    /// unread, then writes the next [`INDEX_CHUNK`] keys of the first partition not indexed,
    /// in a transaction of its own. A partition's bound moves only with its last keys:
    /// `event_keys` entries above a bound are ignored by reads, which scan the tail after it.
    /// Another process may index the same events under its own segment: reads take the
    /// positions as a set.
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
                .prepare_cached(
                    "INSERT OR IGNORE INTO event_keys (segment, partition, key, first, positions)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .db()?;
            let segment = int(self.head);
            let fresh = chunk.iter().filter(|(_, position)| *position > int(upto));
            for (key, positions) in group(fresh) {
                let first = positions.first().copied().unwrap_or_default();
                let list = serde_json::to_string(&positions).unwrap_or_default();
                insert
                    .execute(params![segment, partition, key, first, list])
                    .db()?;
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
            self.stage(row.get(0).db()?, row.get(1).db()?, row.get(2).db()?);
        }
        self.read_upto = to;
        if to >= self.head {
            self.sort();
        }
        Ok(())
    }
}

/// Consecutive entries of one key as one `(key, positions)` (entries sorted by key).
fn group<'a>(entries: impl Iterator<Item = &'a (String, i64)>) -> Vec<(&'a str, Vec<i64>)> {
    let mut out: Vec<(&str, Vec<i64>)> = Vec::new();
    for (key, position) in entries {
        match out.last_mut() {
            Some((last, positions)) if *last == key.as_str() => positions.push(*position),
            _ => out.push((key, vec![*position])),
        }
    }
    out
}

/// Drops the segments whose events are all trimmed: a segment's name is at least every
/// position in it. The entries of trimmed events in younger segments stay until their segment
/// goes; reads skip them, as they find no event at their position.
pub(crate) fn drop_trimmed(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM event_keys
         WHERE segment < COALESCE((SELECT min(position) FROM events), 9223372036854775807)",
    )
    .and_then(|mut st| st.execute([]))
    .db()?;
    Ok(())
}

/// The `IN` list of a by-key read: the key's positions in `event_keys` after `?1` (`after`)
/// up to `?7` (its partition's bound), one seek per segment, `?3` being the key and `?8` its
/// partition. Segments named at or below `after` hold no position after it.
pub(crate) const INDEXED_POSITIONS: &str = "
    WITH RECURSIVE seg(s) AS (
        SELECT min(segment) FROM event_keys WHERE segment > ?1
        UNION ALL
        SELECT (SELECT min(segment) FROM event_keys WHERE segment > seg.s)
        FROM seg WHERE seg.s IS NOT NULL)
    SELECT p.value FROM seg
        JOIN event_keys k ON k.segment = seg.s AND k.partition = ?8 AND k.key = ?3
        JOIN json_each(k.positions) p
    WHERE p.value > ?1 AND p.value <= ?7";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteConfig;
    use crate::schema::{migrate, open_writer};

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Positions indexed (rows hold a key's positions each).
    fn entries(conn: &Connection) -> i64 {
        count(
            conn,
            "SELECT COALESCE(sum(json_array_length(positions)), 0) FROM event_keys",
        )
    }

    /// A log of 5,000 events in partition 0, keys `k0` to `k49` in turn.
    fn log_of_5000(dir: &std::path::Path) -> Connection {
        let mut conn = open_writer(&SqliteConfig::in_dir(dir)).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n
                 WHERE value < 5000)
             INSERT INTO events (id, stream, partition, key, type, version, recorded_at,
                 envelope)
             SELECT 'id-' || value, 's', 0, 'k' || (value % 50), 't', 1, value, '{}' FROM n",
        )
        .unwrap();
        conn
    }

    fn run(round: &mut Staged, conn: &mut Connection) {
        while !matches!(round.step(conn).unwrap(), Step::Done) {}
    }

    #[test]
    fn a_round_reads_and_indexes_in_bounded_steps_and_moves_the_bound_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = log_of_5000(dir.path());
        // The writer started after these appends: nothing in memory, the round reads.
        let mut seen = Seen::new(5000);
        let mut round = Staged::start(&conn, &[0], &mut seen, 5000).unwrap();
        let mut steps = Vec::new();
        loop {
            let keys_before = entries(&conn);
            match round.step(&mut conn).unwrap() {
                Step::Progress => {
                    let written = entries(&conn) - keys_before;
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
        assert_eq!(entries(&conn), 5000);
        assert_eq!(
            count(&conn, "SELECT count(DISTINCT segment) FROM event_keys"),
            1,
            "one segment"
        );
        assert_eq!(
            count(&conn, "SELECT segment FROM event_keys LIMIT 1"),
            5000,
            "named by the head the round indexed up to"
        );
        // A row per key per chunk of 1,024 sorted entries: 50 keys, 4 of them split.
        assert_eq!(count(&conn, "SELECT count(*) FROM event_keys"), 54);
    }

    #[test]
    fn a_round_takes_the_keys_the_writer_remembers_instead_of_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = log_of_5000(dir.path());
        // The writer appended all 5,000 itself; its memory says `m` where the log says `k..`,
        // to tell which one the round used.
        let mut seen = Seen::new(0);
        for position in 1..=5000 {
            seen.push(0, "m", position);
        }
        let mut round = Staged::start(&conn, &[0], &mut seen, 5000).unwrap();
        assert!(matches!(round.step(&mut conn).unwrap(), Step::Progress));
        assert_eq!(
            entries(&conn),
            1024,
            "the first step indexes: nothing to read"
        );
        run(&mut round, &mut conn);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM event_keys WHERE key = 'm'"),
            5
        );
        assert_eq!(entries(&conn), 5000);

        // Another process appended 5001..5100: memory no longer covers the next round.
        seen.restart(5100);
        seen.push(0, "m", 5101);
        conn.execute_batch(
            "WITH RECURSIVE n(value) AS (SELECT 5001 UNION ALL SELECT value + 1 FROM n
                 WHERE value < 5101)
             INSERT INTO events (id, stream, partition, key, type, version, recorded_at,
                 envelope)
             SELECT 'id-' || value, 's', 0, 'k', 't', 1, value, '{}' FROM n",
        )
        .unwrap();
        let mut round = Staged::start(&conn, &[5000], &mut seen, 5101).unwrap();
        run(&mut round, &mut conn);
        assert_eq!(
            count(
                &conn,
                "SELECT json_array_length(positions) FROM event_keys WHERE key = 'k'"
            ),
            101,
            "read from the log"
        );
        assert_eq!(indexed_upto(&conn, 0).unwrap(), 5101);
    }

    #[test]
    fn a_round_over_a_long_unindexed_log_stops_at_its_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_writer(&SqliteConfig::in_dir(dir.path())).unwrap();
        migrate(&mut conn).unwrap();
        let far = ROUND_MAX + 10;
        conn.execute(
            "INSERT INTO events (position, id, stream, partition, key, type, version,
                 recorded_at, envelope)
             VALUES (1, 'a', 's', 0, 'k', 't', 1, 1, '{}'), (?1, 'b', 's', 0, 'k', 't', 1, 1, '{}')",
            [int(far)],
        )
        .unwrap();
        let mut round = Staged::start(&conn, &[0], &mut Seen::new(far), far).unwrap();
        let mut indexed = Vec::new();
        loop {
            match round.step(&mut conn).unwrap() {
                Step::Progress => {}
                Step::Indexed(partition, upto) => indexed.push((partition, upto)),
                Step::Done => break,
            }
        }
        assert_eq!(indexed, [(0, ROUND_MAX)]);
        assert_eq!(indexed_upto(&conn, 0).unwrap(), ROUND_MAX);
        let positions: Vec<String> = conn
            .prepare("SELECT positions FROM event_keys")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            positions,
            ["[1]"],
            "the event past the round waits for the next one"
        );
    }
}
