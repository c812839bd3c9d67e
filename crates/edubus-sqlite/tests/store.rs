//! The event store role on real files: atomic idempotent appends, reads, group commit,
//! migrations, several processes on one file.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{append, config, envelope, open, spec};
use edubus_core::{Append, ErrorKind, EventStore, ReadQuery, Transport, partition_of};
use edubus_sqlite::rusqlite::Connection;
use edubus_sqlite::{SqliteBackend, schema};

#[tokio::test]
async fn append_is_atomic_idempotent_and_detects_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    let (a, b) = (
        append("attendance.marked", "s1"),
        append("attendance.marked", "s2"),
    );
    let first = bus.append(vec![a.clone(), b.clone()]).await.unwrap();
    assert_eq!(first.iter().map(|x| x.position).collect::<Vec<_>>(), [1, 2]);
    assert!(first.iter().all(|x| !x.duplicate));

    let c = append("attendance.marked", "s3");
    let again = bus.append(vec![a.clone(), c.clone()]).await.unwrap();
    assert_eq!((again[0].position, again[0].duplicate), (1, true));
    assert_eq!((again[1].position, again[1].duplicate), (3, false));

    let mut changed = b.clone();
    changed.envelope.data = serde_json::json!({"key": "other"});
    let d = append("attendance.marked", "s4");
    let err = bus.append(vec![d.clone(), changed]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        bus.get(&d.envelope.id).await.unwrap().is_none(),
        "nothing of the batch stored"
    );
    assert_eq!(bus.head().await.unwrap(), 3);

    let stored = bus.get(&a.envelope.id).await.unwrap().unwrap();
    assert_eq!(stored.envelope, a.envelope);
    assert_eq!(stored.key, "s1");
    assert_eq!(stored.partition, partition_of("s1", 16));
    assert_eq!(stored.stream, "attendance.marked");
    bus.close().await;
}

#[tokio::test]
async fn envelope_json_is_stored_verbatim_and_keys_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    let keyed = append("grade.posted", "k");
    let mut bare = append("grade.posted", "ignored");
    bare.envelope.partitionkey = None;
    bare.envelope.subject = None;
    bus.append(vec![keyed.clone(), bare.clone()]).await.unwrap();
    bus.close().await;

    let conn = Connection::open(dir.path().join("edubus.db")).unwrap();
    let (json, key): (String, String) = conn
        .query_row(
            "SELECT envelope, key FROM events WHERE position = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(json, serde_json::to_string(&keyed.envelope).unwrap());
    assert_eq!(key, "k");
    let key: String = conn
        .query_row("SELECT key FROM events WHERE position = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        key, bare.envelope.id,
        "no partitionkey or subject: the id is the key"
    );
    let updated = conn.execute("UPDATE events SET stream = 'x' WHERE position = 1", []);
    assert!(updated.is_err(), "stored events are immutable");
}

#[tokio::test]
async fn reads_by_position_key_type_correlation_stream_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    let root = envelope("enrollment.approved", "app-1");
    let caused = envelope("enrollment.provisioned", "student-9").caused_by(&root);
    let other = envelope("attendance.marked", "student-9");
    // Correlated to `caused`, which itself belongs to the correlation of `root`.
    let nested = envelope("enrollment.provisioned", "student-8").with_correlation_id(&caused.id);
    let batch = [
        (&root, "enrollment"),
        (&caused, "enrollment"),
        (&other, "attendance"),
        (&nested, "enrollment"),
    ]
    .map(|(e, s)| Append {
        envelope: e.clone(),
        stream: s.into(),
    });
    bus.append(batch.to_vec()).await.unwrap();

    let all = bus.read(ReadQuery::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.position).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let page = bus
        .read(ReadQuery {
            after: 1,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page[0].envelope.id, caused.id);

    let ids =
        |rs: Vec<edubus_core::Recorded>| rs.into_iter().map(|r| r.envelope.id).collect::<Vec<_>>();
    let by_key = ReadQuery {
        key: Some("student-9".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(bus.read(by_key).await.unwrap()),
        [caused.id.clone(), other.id.clone()]
    );
    let by_type = ReadQuery {
        types: vec!["attendance.marked".into()],
        ..Default::default()
    };
    assert_eq!(
        ids(bus.read(by_type).await.unwrap()),
        vec![other.id.clone()]
    );
    let by_corr = ReadQuery {
        correlation_id: Some(root.id.clone()),
        ..Default::default()
    };
    assert_eq!(
        ids(bus.read(by_corr).await.unwrap()),
        [root.id.clone(), caused.id.clone()]
    );
    let by_nested_corr = ReadQuery {
        correlation_id: Some(caused.id.clone()),
        ..Default::default()
    };
    assert_eq!(
        ids(bus.read(by_nested_corr).await.unwrap()),
        vec![nested.id.clone()]
    );
    let by_stream = ReadQuery {
        stream: Some("attendance".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(bus.read(by_stream).await.unwrap()),
        vec![other.id.clone()]
    );
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    let since = ReadQuery {
        since: Some(future),
        types: vec!["attendance.marked".into()],
        ..Default::default()
    };
    assert!(bus.read(since).await.unwrap().is_empty());
    bus.close().await;
}

#[tokio::test]
async fn reads_since_a_time_start_at_its_first_event_across_gaps_and_clocks_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    for b in 0..3 {
        let batch = (0..10)
            .map(|i| append("a.happened", &format!("k{b}-{i}")))
            .collect();
        bus.append(batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let positions =
        |rs: Vec<edubus_core::Recorded>| rs.iter().map(|r| r.position).collect::<Vec<_>>();
    let all = bus.read(ReadQuery::default()).await.unwrap();
    let since = |at| ReadQuery {
        since: Some(at),
        ..Default::default()
    };
    let second = all[10].recorded_at;
    assert_eq!(
        positions(bus.read(since(second)).await.unwrap()),
        (11..=30).collect::<Vec<_>>()
    );
    let typed = ReadQuery {
        types: vec!["a.happened".into()],
        after: 20,
        ..since(second)
    };
    assert_eq!(
        positions(bus.read(typed).await.unwrap()),
        (21..=30).collect::<Vec<_>>()
    );

    // Gaps left by deleted events, and another process whose clock is an hour ahead.
    let conn = Connection::open(dir.path().join("edubus.db")).unwrap();
    conn.execute("DELETE FROM events WHERE position BETWEEN 9 AND 15", [])
        .unwrap();
    assert_eq!(
        positions(bus.read(since(second)).await.unwrap()),
        (16..=30).collect::<Vec<_>>()
    );
    let hour_on = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let ahead = jiff::Timestamp::from_microsecond(hour_on.as_microsecond()).unwrap();
    conn.execute(
        "INSERT INTO events (id, stream, partition, key, type, version, recorded_at, envelope)
         SELECT 'ahead', stream, partition, key, type, version, ?1, envelope
         FROM events WHERE position = 30",
        [ahead.as_microsecond()],
    )
    .unwrap();
    bus.append(vec![append("a.happened", "after")])
        .await
        .unwrap();
    let late = bus.read(since(ahead)).await.unwrap();
    assert_eq!(positions(late.clone()), [31, 32]);
    assert!(
        late[1].recorded_at >= ahead,
        "an event is never recorded before the one it follows"
    );
    bus.close().await;
}

#[tokio::test]
async fn concurrent_appends_land_with_unique_positions_in_grouped_commits() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    let before = bus.writer_stats();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..20 {
                let batch = vec![append("attendance.marked", &format!("k{t}-{i}"))];
                positions.push(bus.append(batch).await.unwrap()[0].position);
            }
            positions
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all.len(), 640);
    assert_eq!(all.iter().copied().max(), Some(640));
    assert_eq!(bus.head().await.unwrap(), 640);
    let stats = bus.writer_stats();
    let (commands, transactions) = (
        stats.commands - before.commands,
        stats.transactions - before.transactions,
    );
    assert_eq!(commands, 640);
    assert!(
        transactions < commands,
        "{transactions} transactions for {commands} commands"
    );
    bus.close().await;
}

#[tokio::test]
async fn migrations_apply_once_and_the_stored_partition_count_wins() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBackend::open(config(dir.path()).with_partitions(8))
        .await
        .unwrap();
    bus.append(vec![append("a.happened", "k")]).await.unwrap();
    bus.close().await;
    bus.close().await; // idempotent

    let again = SqliteBackend::open(config(dir.path()).with_partitions(32))
        .await
        .unwrap();
    assert_eq!(again.config().partitions, 8);
    assert_eq!(again.partitions(), 8);
    assert_eq!(again.head().await.unwrap(), 1);
    drop(again); // the last clone stops every thread and closes every connection
    let wal = dir.path().join("edubus.db-wal");
    assert!(
        !wal.exists(),
        "SQLite removes the WAL when the last connection closes"
    );

    let conn = Connection::open(dir.path().join("edubus.db")).unwrap();
    let versions: Vec<u32> = conn
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, (1..=schema::SCHEMA_VERSION).collect::<Vec<_>>());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_second_process_sees_appends_through_wait_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let one = open(dir.path()).await;
    let two = open(dir.path()).await;
    assert_eq!(two.head().await.unwrap(), 0);
    let waiter = {
        let two = two.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            two.wait(None, 0, Duration::from_secs(10)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    one.append(vec![append("a.happened", "k")]).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woken by the other process's commit"
    );
    assert_eq!(two.head().await.unwrap(), 1);
    // A wait for a position already reached returns at once.
    two.wait(None, 0, Duration::from_secs(10)).await;
    // Both processes write to the same log.
    let appended = two.append(vec![append("a.happened", "k2")]).await.unwrap();
    assert_eq!(appended[0].position, 2);
    one.close().await;
    two.close().await;
}

#[tokio::test]
async fn calls_after_close_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.close().await;
    let err = bus
        .append(vec![append("a.happened", "k")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(bus.head().await.unwrap_err().kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn repeated_ids_within_one_batch_and_a_late_conflict_leave_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    let a = append("a.happened", "k");
    let out = bus.append(vec![a.clone(), a.clone()]).await.unwrap();
    assert_eq!((out[0].position, out[0].duplicate), (1, false));
    assert_eq!((out[1].position, out[1].duplicate), (1, true));

    let mut clash = a.clone();
    clash.envelope.source = "someone-else".into();
    let fresh: Vec<_> = (0..3)
        .map(|i| append("a.happened", &format!("n{i}")))
        .collect();
    let mut batch = fresh.clone();
    batch.push(clash);
    let err = bus.append(batch).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    for f in &fresh {
        assert!(bus.get(&f.envelope.id).await.unwrap().is_none());
    }
    assert_eq!(bus.head().await.unwrap(), 1);
    let next = bus.append(vec![append("a.happened", "z")]).await.unwrap();
    assert_eq!(next[0].position, 2, "the undone batch left no gap");
    bus.close().await;
}

#[tokio::test]
async fn reads_by_key_span_the_segments_of_the_key_index_and_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    // An event a subscription has not settled: trim keeps it, and the segments after it.
    bus.register(&spec("hold", &["b.held"])).await.unwrap();
    bus.append(vec![append("b.held", "k7")]).await.unwrap();
    let conn = Connection::open(dir.path().join("edubus.db")).unwrap();
    let bound = format!("keys_indexed_upto:{}", partition_of("k7", bus.partitions()));
    let indexed = || -> u64 {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [&bound], |r| {
            r.get::<_, String>(0)
        })
        .map_or(0, |v| v.parse().unwrap())
    };
    // Two rounds of the writer, each after 32,768 events: two segments.
    for round in 1..=2u64 {
        for n in 0..34 {
            let batch: Vec<_> = (0..1000)
                .map(|i| append("a.happened", &format!("k{}", (n * 1000 + i) % 100)))
                .collect();
            bus.append(batch).await.unwrap();
        }
        // The writer indexes the partitions one by one after the appends.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while indexed() < round * 32_768 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    bus.append(vec![append("a.happened", "k7"), append("a.happened", "k7")])
        .await
        .unwrap();
    let upto = indexed();
    assert!(
        (65_536..=68_000).contains(&upto),
        "k7's partition was indexed twice, the last two events were not: {upto}"
    );
    let segments: i64 = conn
        .query_row(
            "SELECT count(DISTINCT segment) FROM event_keys WHERE partition = ?1",
            [partition_of("k7", bus.partitions())],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(segments, 2);

    let query = |after, limit| ReadQuery {
        key: Some("k7".into()),
        after,
        limit,
        ..Default::default()
    };
    let all = bus.read(query(0, 10_000)).await.unwrap();
    assert_eq!(all.len(), 683, "the held one, 680 from the batches, 2 more");
    assert!(all.iter().all(|r| r.key == "k7"));
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    // Pages that cross from the first segment to the second, and from the index to the tail.
    for (from, len) in [(300, 60), (650, 32)] {
        let page = bus.read(query(all[from].position, len)).await.unwrap();
        let expected: Vec<_> = all[from + 1..=from + len]
            .iter()
            .map(|r| r.position)
            .collect();
        assert_eq!(
            page.iter().map(|r| r.position).collect::<Vec<_>>(),
            expected
        );
    }

    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    assert_eq!(
        bus.trim(later).await.unwrap(),
        68_002,
        "no subscription receives them: all settled"
    );
    let rows = || -> i64 {
        conn.query_row("SELECT count(*) FROM event_keys", [], |r| r.get(0))
            .unwrap()
    };
    assert!(rows() > 0, "the segments after the held event stay");
    let held = bus.read(query(0, 10)).await.unwrap();
    assert_eq!(
        held.iter().map(|r| r.position).collect::<Vec<_>>(),
        [1],
        "entries of trimmed events are skipped"
    );
    // Once no event is older than a segment, trim drops it.
    conn.execute("DELETE FROM events WHERE position = 1", [])
        .unwrap();
    assert_eq!(bus.trim(later).await.unwrap(), 0);
    assert_eq!(rows(), 0, "trim removes the by-key entries too");
    assert!(bus.read(query(0, 10)).await.unwrap().is_empty());
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_while_appends_keep_the_writer_busy() {
    let dir = tempfile::tempdir().unwrap();
    let frames = 64;
    let bus = SqliteBackend::open(config(dir.path()).with_wal_restart_frames(frames))
        .await
        .unwrap();
    // Several publishers keep the writer busy, so no passive checkpoint of the checkpoint
    // thread ever finds the whole log copied: without a restart the WAL only grows.
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..4 {
        let bus = bus.clone();
        publishers.spawn(async move {
            for b in 0..300 {
                let batch = (0..50)
                    .map(|i| append("a.happened", &format!("k-{p}-{b}-{i}")))
                    .collect();
                bus.append(batch).await.unwrap();
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.unwrap();
    }
    assert_eq!(bus.head().await.unwrap(), 60_000);
    let conn = Connection::open(dir.path().join("edubus.db")).unwrap();
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let events_bytes: i64 = conn
        .query_row("SELECT sum(length(envelope)) FROM events", [], |r| r.get(0))
        .unwrap();
    // A log that never started over would hold every page written since the file was opened:
    // here some 18 times the envelopes' bytes (each group rewrites the pages it touched).
    let wal = std::fs::metadata(dir.path().join("edubus.db-wal"))
        .unwrap()
        .len();
    let wal = i64::try_from(wal).unwrap();
    let wal_frames = wal / (page + 24);
    assert!(
        wal < 4 * events_bytes,
        "the WAL holds {wal_frames} frames ({wal} bytes) for {events_bytes} bytes of envelopes"
    );
}
