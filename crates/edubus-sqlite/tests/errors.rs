//! Driver errors map to what the caller should do, on real SQLite failures.

mod common;

use std::time::Duration;

use common::{append, config};
use edubus_core::{ErrorKind, EventStore};
use edubus_sqlite::SqliteBackend;
use edubus_sqlite::error::from_sqlite;
use edubus_sqlite::rusqlite::Connection;

#[tokio::test]
async fn a_database_locked_by_another_process_is_unavailable_and_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path()).with_busy_timeout(Duration::from_millis(50));
    let bus = SqliteBackend::open(cfg).await.unwrap();
    let other = Connection::open(dir.path().join("edubus.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let err = bus
        .append(vec![append("a.happened", "k")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());

    other.execute_batch("COMMIT").unwrap();
    let ok = bus.append(vec![append("a.happened", "k")]).await.unwrap();
    assert_eq!(ok[0].position, 1, "the failed group left nothing behind");
    bus.close().await;
}

#[test]
fn a_constraint_violation_is_a_conflict() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY); INSERT INTO t VALUES ('a');")
        .unwrap();
    let err = conn.execute("INSERT INTO t VALUES ('a')", []).unwrap_err();
    assert_eq!(from_sqlite(err).kind(), ErrorKind::Conflict);
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_internal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("edubus.db"), vec![0x5a; 8192]).unwrap();
    let err = SqliteBackend::open(config(dir.path())).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_invalid_configuration_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteBackend::open(config(dir.path()).with_partitions(0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
}
