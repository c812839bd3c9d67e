//! Connection settings and the versioned schema, migrated at open (docs/embedded.md, "Schema").

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::config::SqliteConfig;
use crate::error::Db;
use edubus_core::Result;

/// Migrations by version, applied in order, each in its own transaction.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, MIGRATION_1),
    (2, MIGRATION_2),
    (3, MIGRATION_3),
    (4, MIGRATION_4),
];

/// The current schema: the log, subscriptions and their delivery state, DLQ, inbox, audit.
///
/// Beyond the design's table: the `(key, position)` index is the table `event_keys`, filled in
/// sorted batches (see `keys.rs`); the partition index carries `type`, so subscriptions filter
/// and count by type from the index alone; `subscriptions.start` keeps the registered
/// [`StartFrom`]; `partitions.appended`/`settled` count matching events for an O(1) lag (see
/// `counts.rs`); `inbox.partition`/`position` let trim keep the rows still above a cursor;
/// triggers refuse updates of events and any change to the audit trail.
///
/// [`StartFrom`]: edubus_core::StartFrom
const MIGRATION_1: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    partition INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    correlation_id TEXT,
    causation_id TEXT,
    tenant_id TEXT,
    recorded_at INTEGER NOT NULL,
    envelope TEXT NOT NULL
);
CREATE INDEX events_partition ON events (partition, position, type);
CREATE INDEX events_correlation ON events (correlation_id, position);
CREATE INDEX events_type ON events (type, recorded_at);
CREATE TRIGGER events_immutable BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'stored events are immutable'); END;
CREATE TABLE event_keys (
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (key, position)
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('keys_indexed_upto', '0');

CREATE TABLE subscriptions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    types TEXT NOT NULL,
    ordered INTEGER NOT NULL,
    start TEXT NOT NULL,
    start_position INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE partitions (
    subscription_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    owner TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0,
    busy_since INTEGER,
    fetched_upto INTEGER NOT NULL,
    appended INTEGER NOT NULL DEFAULT 0,
    settled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_id, partition)
) WITHOUT ROWID;
CREATE TABLE consumers (
    subscription_id INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, consumer)
) WITHOUT ROWID;
CREATE TABLE failures (
    subscription_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    attempts TEXT NOT NULL,
    PRIMARY KEY (subscription_id, position)
) WITHOUT ROWID;
CREATE INDEX failures_position ON failures (position);
CREATE TABLE requeue (
    id INTEGER PRIMARY KEY,
    subscription_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    queued_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX requeue_partition ON requeue (subscription_id, partition, id);
CREATE INDEX requeue_position ON requeue (position);
CREATE TABLE inbox (
    subscription_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, event_id)
) WITHOUT ROWID;
CREATE INDEX inbox_handled ON inbox (handled_at);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY,
    subscription_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    type TEXT NOT NULL,
    stream TEXT NOT NULL,
    partition INTEGER NOT NULL,
    handler TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts TEXT NOT NULL,
    dead_at INTEGER NOT NULL,
    replayed_at INTEGER
);
CREATE INDEX dead_letters_subscription ON dead_letters (subscription_id, id);
CREATE INDEX dead_letters_position ON dead_letters (position);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is immutable'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is immutable'); END;
";

/// The correlation index leaves out events whose correlation id is their own id: a root
/// event is found by its id, so every publish that starts a correlation writes one index
/// entry less. Queries by correlation id read both indexes (`store.rs`).
const MIGRATION_2: &str = "
DROP INDEX events_correlation;
CREATE INDEX events_correlation ON events (correlation_id, position) WHERE correlation_id <> id;
";

/// The by-key index in segments (`keys.rs`): each round of the writer appends, under a
/// segment of its own and at the right edge of the tree, one row per key with the key's
/// positions, instead of inserting an entry per event among the older entries of its key
/// (which dirtied a page per key every round). The entries of the old table become one
/// segment per partition, named by its bound; grouped by key in the old table's order, with
/// no sort (a key's partition, hence its bound, is the same for all its entries).
const MIGRATION_3: &str = "
CREATE TABLE event_keys_3 (
    segment INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    key TEXT NOT NULL,
    first INTEGER NOT NULL,
    positions TEXT NOT NULL,
    PRIMARY KEY (segment, partition, key, first)
) WITHOUT ROWID;
INSERT INTO event_keys_3 (segment, partition, key, first, positions)
SELECT upto, partition, key, min(position), json_group_array(position) FROM (
    SELECT CAST(COALESCE(
               (SELECT value FROM meta WHERE key = 'keys_indexed_upto:' || e.partition),
               (SELECT value FROM meta WHERE key = 'keys_indexed_upto'), '0') AS INTEGER) AS upto,
           e.partition AS partition, k.key AS key, k.position AS position
    FROM event_keys k JOIN events e ON e.position = k.position)
WHERE position <= upto
GROUP BY key;
DROP TABLE event_keys;
ALTER TABLE event_keys_3 RENAME TO event_keys;
";

/// Without the `(type, recorded_at)` index: one index entry less per publish. Time bounds
/// become positions by a binary search (`recorded_at` never decreases with the position: the
/// writer sees to it), and the newest event of each type is kept in `type_heads`, filled here
/// with one index seek per type before the index goes.
const MIGRATION_4: &str = "
CREATE TABLE type_heads (type TEXT PRIMARY KEY, recorded_at INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO type_heads (type, recorded_at)
WITH RECURSIVE t(type) AS (
    SELECT min(type) FROM events
    UNION ALL
    SELECT (SELECT min(type) FROM events WHERE type > t.type) FROM t WHERE t.type IS NOT NULL)
SELECT type, (SELECT max(recorded_at) FROM events e WHERE e.type = t.type)
FROM t WHERE type IS NOT NULL;
DROP INDEX events_type;
";

/// Version of the newest migration.
pub const SCHEMA_VERSION: u32 = 4;

/// Opens the read-write connection of the writer thread, in WAL mode. It never checkpoints:
/// [`crate::checkpoint`] does, on its own thread.
pub(crate) fn open_writer(config: &SqliteConfig) -> Result<Connection> {
    let conn = Connection::open(&config.path).db()?;
    conn.busy_timeout(config.busy_timeout).db()?;
    stable_plans(&conn)?;
    // Large pages: fewer pages per event row and per index page touched by a group commit.
    // Only takes effect on a new, empty file.
    conn.execute_batch("PRAGMA page_size = 16384").db()?;
    let _mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .db()?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA journal_size_limit = 268435456;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = OFF;",
        config.durability.pragma()
    ))
    .db()?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a connection that only reads (the reader pool and the commit watcher).
pub(crate) fn open_reader(config: &SqliteConfig) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(&config.path, flags).db()?;
    conn.busy_timeout(config.busy_timeout).db()?;
    stable_plans(&conn)?;
    // No memory-mapped reads: after every commit of the writer, SQLite unmaps a reader's
    // mapping at its next read transaction, and the pages it touches fault back in; at
    // 5,000 events/s that cost the consumers some 20 % more CPU per event than reading pages
    // with `pread` (docs/benchmarks.md).
    conn.execute_batch(
        "PRAGMA query_only = ON;
         PRAGMA cache_size = -32768;
         PRAGMA mmap_size = 0;
         PRAGMA temp_store = MEMORY;",
    )
    .db()?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Plans a statement once, whatever values are bound to it. Without this, the bundled
/// SQLite (built with STAT4) lets bound values steer some plans, e.g. the fetch's `position >
/// ?`, and then re-prepares the cached statement on a later bind with another value: a full
/// parse and plan, often, on the hottest reads.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .db()?;
    Ok(())
}

/// Applies every migration not yet recorded; safe when several processes open at once.
/// Refuses a file migrated by a newer edubus, whose schema this binary could misuse.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let recorded = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |_| Ok(()),
        )
        .optional()
        .db()?
        .is_some();
    let newest: Option<u32> = if recorded {
        conn.query_row("SELECT max(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })
        .db()?
    } else {
        None
    };
    if let Some(newest) = newest.filter(|v| *v > SCHEMA_VERSION) {
        return Err(edubus_core::Error::invalid(format!(
            "the database {} has schema version {newest}, written by a newer edubus; this \
             binary knows versions up to {SCHEMA_VERSION} and leaves the file untouched: run \
             the newer edubus",
            conn.path().unwrap_or("(in memory)")
        )));
    }
    for &(version, sql) in MIGRATIONS {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .db()?;
        let applied = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()
            .db()?
            .is_some();
        if !applied {
            tx.execute_batch(sql).db()?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, crate::clock::now_micros()],
            )
            .db()?;
        }
        tx.commit().db()?;
    }
    Ok(())
}

/// Records `partitions` on a new file and returns the stored value, which wins on an old one.
pub(crate) fn stored_partitions(conn: &Connection, partitions: u32) -> Result<u32> {
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES
         ('partitions', ?1), ('format', ?2)",
        params![partitions.to_string(), SCHEMA_VERSION.to_string()],
    )
    .db()?;
    let stored: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'partitions'",
            [],
            |row| row.get(0),
        )
        .db()?;
    stored.parse().map_err(|_| {
        edubus_core::Error::internal(
            "the stored partition count is not a number",
            format!("meta.partitions = {stored:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    #[test]
    fn a_file_migrated_by_a_newer_edubus_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path());
        let mut conn = open_writer(&config).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let rows = |conn: &Connection| -> u32 {
            conn.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
                .unwrap()
        };
        let newer = SCHEMA_VERSION + 1;
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
            [newer],
        )
        .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert_eq!(err.kind(), edubus_core::ErrorKind::Invalid);
        let message = err.to_string();
        assert!(
            message.contains(&format!("schema version {newer}")),
            "{message}"
        );
        assert!(message.contains("edubus.db"), "{message}");
        let before = rows(&conn);
        assert!(migrate(&mut conn).is_err());
        assert_eq!(rows(&conn), before);
    }

    #[test]
    fn migrations_3_and_4_keep_the_indexed_keys_and_the_newest_time_of_each_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_writer(&SqliteConfig::in_dir(dir.path())).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(
            "CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        for &(version, sql) in &MIGRATIONS[..2] {
            tx.execute_batch(sql).unwrap();
            tx.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [version])
                .unwrap();
        }
        // A version-2 file. Partition 0 is indexed up to 3 under its own bound (the entry of
        // 5 is above it); partition 1 has only the older file-wide bound, 4.
        tx.execute_batch(
            "INSERT INTO events (id, stream, partition, key, type, version, recorded_at,
                 envelope)
             VALUES ('e1', 's', 0, 'a', 't', 1, 1, '{}'), ('e2', 's', 1, 'c', 'u', 1, 2, '{}'),
                    ('e3', 's', 0, 'b', 't', 1, 3, '{}'), ('e4', 's', 1, 'c', 't', 1, 4, '{}'),
                    ('e5', 's', 0, 'a', 't', 1, 5, '{}'), ('e6', 's', 1, 'c', 't', 1, 6, '{}');
             INSERT INTO event_keys (key, position)
             VALUES ('a', 1), ('b', 3), ('a', 5), ('c', 2), ('c', 4);
             UPDATE meta SET value = '4' WHERE key = 'keys_indexed_upto';
             INSERT INTO meta (key, value) VALUES ('keys_indexed_upto:0', '3');",
        )
        .unwrap();
        tx.commit().unwrap();

        migrate(&mut conn).unwrap();
        let rows: Vec<(i64, u32, String, i64)> = conn
            .prepare("SELECT segment, partition, key, first FROM event_keys")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected = [(3, 0, "a", 1), (3, 0, "b", 3), (4, 1, "c", 2)]
            .map(|(s, p, k, n)| (s, p, k.to_owned(), n));
        assert_eq!(rows, expected);
        let positions = |key: &str, partition: u32, after: i64, bound: i64| -> Vec<i64> {
            conn.prepare(crate::keys::INDEXED_POSITIONS)
                .unwrap()
                .query_map(
                    params![
                        after,
                        None::<i64>,
                        key,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        bound,
                        partition
                    ],
                    |r| r.get(0),
                )
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(positions("c", 1, 0, 4), [2, 4]);
        assert_eq!(positions("c", 1, 2, 4), [4]);
        assert_eq!(positions("a", 0, 0, 3), [1]);

        let heads: Vec<(String, i64)> = conn
            .prepare("SELECT type, recorded_at FROM type_heads")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(heads, [("t".to_owned(), 6), ("u".to_owned(), 2)]);
        let type_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'events_type'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(type_index, 0);
    }

    #[test]
    fn a_cached_fetch_is_not_prepared_again_for_other_bound_values() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::in_dir(dir.path());
        let mut writer = open_writer(&config).unwrap();
        migrate(&mut writer).unwrap();
        writer
            .execute_batch(
                "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n
                     WHERE value < 200)
                 INSERT INTO events (id, stream, partition, key, type, version, recorded_at,
                     envelope)
                 SELECT 'id-' || value, 's', value % 16, 'k', 't', 1, value, '{}' FROM n",
            )
            .unwrap();
        let reader = open_reader(&config).unwrap();
        let mut fetch = reader
            .prepare(
                "SELECT position FROM events
                 WHERE partition = ?1 AND position > ?2 ORDER BY position LIMIT 10",
            )
            .unwrap();
        for (partition, after) in (0..16).flat_map(|p| [(p, 0), (p, 100)]) {
            let rows = fetch.query_map([partition, after], |_| Ok(())).unwrap();
            assert!(rows.count() > 0);
        }
        assert_eq!(fetch.get_status(StatementStatus::RePrepare), 0);
    }
}
