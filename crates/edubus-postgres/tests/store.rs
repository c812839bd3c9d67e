//! The event store on a real PostgreSQL: append, read, get, head, idempotency, conflicts,
//! the append-only guard and migrations.

mod common;

use std::collections::HashSet;

use common::{PARTITIONS, append, appends, config, envelope, store};
use edubus_core::{Append, ErrorKind, EventStore, ReadQuery, partition_of};
use edubus_postgres::PgStore;
use edubus_testsupport::postgres;
use serde_json::json;

#[tokio::test]
async fn append_assigns_ascending_positions_and_get_returns_the_envelope_exactly() {
    let (_schema, store) = store("append_get").await;
    assert_eq!(store.head().await.unwrap(), 0);
    // Payload keys out of alphabetical order and a free extension must survive unchanged.
    let mut first = append("student-1", 0);
    first.envelope.data = json!({ "zeta": 1, "alpha": { "y": [1, 2], "b": null } });
    first.envelope = first.envelope.with_extension("campus", "north");
    let batch = vec![
        first.clone(),
        append("student-2", 1),
        append("student-1", 2),
    ];
    let appended = store.append(batch.clone()).await.unwrap();

    assert_eq!(appended.len(), 3);
    assert!(appended.iter().all(|a| !a.duplicate));
    assert!(appended.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(store.head().await.unwrap(), appended[2].position);
    for (a, b) in appended.iter().zip(&batch) {
        assert_eq!(a.id, b.envelope.id);
        let got = store.get(&a.id).await.unwrap().expect("stored");
        assert_eq!(got.position, a.position);
        assert_eq!(got.envelope, b.envelope);
        assert_eq!(
            serde_json::to_string(&got.envelope).unwrap(),
            serde_json::to_string(&b.envelope).unwrap(),
            "the JSON text round-trips, member order included"
        );
        assert_eq!(got.stream, "attendance");
        let key = b.envelope.key().unwrap();
        assert_eq!(got.key, key);
        assert_eq!(got.partition, partition_of(key, PARTITIONS));
    }
    assert!(store.get("no-such-id").await.unwrap().is_none());
}

#[tokio::test]
async fn appending_the_same_event_again_is_a_duplicate_with_the_stored_position() {
    let (_schema, store) = store("append_duplicate").await;
    let event = append("student-1", 0);
    let first = store.append(vec![event.clone()]).await.unwrap();
    let again = store
        .append(vec![append("student-2", 1), event.clone(), event.clone()])
        .await
        .unwrap();

    assert!(!again[0].duplicate);
    assert!(again[1].duplicate && again[2].duplicate);
    assert_eq!(again[1].position, first[0].position);
    assert_eq!(again[2].position, first[0].position);
    let all = store.read(ReadQuery::default()).await.unwrap();
    assert_eq!(all.len(), 2, "the duplicate was not stored twice");
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_a_conflict_and_stores_nothing_of_the_batch() {
    let (_schema, store) = store("append_conflict").await;
    let event = append("student-1", 0);
    store.append(vec![event.clone()]).await.unwrap();
    let mut changed = event.clone();
    changed.envelope.data = json!({ "student_id": "student-1", "n": 99 });
    let fresh = append("student-2", 1);

    let err = store
        .append(vec![fresh.clone(), changed])
        .await
        .expect_err("conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains(&event.envelope.id), "{err}");
    assert!(store.get(&fresh.envelope.id).await.unwrap().is_none());
    assert_eq!(store.read(ReadQuery::default()).await.unwrap().len(), 1);

    // Two events of one batch with one id and different content conflict as well.
    let mut twin = fresh.clone();
    twin.envelope.data = json!({ "other": true });
    let err = store.append(vec![fresh.clone(), twin]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(store.get(&fresh.envelope.id).await.unwrap().is_none());
}

#[tokio::test]
async fn read_filters_by_position_type_key_correlation_stream_and_time() {
    let (_schema, store) = store("read_filters").await;
    let root = envelope("student-1", 0);
    let caused = envelope("student-2", 1).caused_by(&root);
    let other_type = Append {
        envelope: edubus_core::Envelope::new("grading.updated", 1, json!({}))
            .with_source("tests")
            .with_key("student-1"),
        stream: "grading".into(),
    };
    let batch = vec![
        Append {
            envelope: root.clone(),
            stream: "attendance".into(),
        },
        Append {
            envelope: caused.clone(),
            stream: "attendance".into(),
        },
        other_type.clone(),
        append("student-3", 3),
    ];
    let positions: Vec<u64> = store
        .append(batch)
        .await
        .unwrap()
        .iter()
        .map(|a| a.position)
        .collect();
    let ids = |q: ReadQuery| {
        let store = store.clone();
        async move {
            let read = store.read(q).await.unwrap();
            assert!(read.windows(2).all(|w| w[0].position < w[1].position));
            read.into_iter().map(|r| r.envelope.id).collect::<Vec<_>>()
        }
    };

    assert_eq!(ids(ReadQuery::default()).await.len(), 4);
    let after = ReadQuery {
        after: positions[1],
        ..Default::default()
    };
    assert_eq!(ids(after).await.len(), 2);
    let limited = ReadQuery {
        limit: 3,
        ..Default::default()
    };
    assert_eq!(ids(limited).await.len(), 3);
    let by_type = ReadQuery {
        types: vec!["grading.updated".into()],
        ..Default::default()
    };
    assert_eq!(ids(by_type).await, vec![other_type.envelope.id.clone()]);
    let by_key = ReadQuery {
        key: Some("student-1".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(by_key).await,
        vec![root.id.clone(), other_type.envelope.id.clone()]
    );
    let by_correlation = ReadQuery {
        correlation_id: Some(root.id.clone()),
        ..Default::default()
    };
    assert_eq!(
        ids(by_correlation).await,
        vec![root.id.clone(), caused.id.clone()]
    );
    let by_stream = ReadQuery {
        stream: Some("grading".into()),
        ..Default::default()
    };
    assert_eq!(ids(by_stream).await, vec![other_type.envelope.id.clone()]);

    let recorded_at = store.get(&root.id).await.unwrap().unwrap().recorded_at;
    let since_then = ReadQuery {
        since: Some(recorded_at),
        ..Default::default()
    };
    assert_eq!(ids(since_then).await.len(), 4);
    let later = recorded_at + jiff::SignedDuration::from_secs(3600);
    let since_later = ReadQuery {
        since: Some(later),
        ..Default::default()
    };
    assert!(ids(since_later).await.is_empty());
}

#[tokio::test]
async fn the_events_table_refuses_update_delete_and_truncate() {
    let (schema, store) = store("append_only").await;
    store.append(appends(2, 2)).await.unwrap();
    let client = schema.connect().await;
    for sql in [
        "UPDATE events SET type = 'tampered'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let db = err.as_db_error().expect("a server error");
        assert!(
            db.message().contains("append-only"),
            "{sql}: {}",
            db.message()
        );
        let mapped = edubus_postgres::from_pg(err);
        assert_eq!(mapped.kind(), ErrorKind::Conflict, "{sql}");
    }
    let stored = store.read(ReadQuery::default()).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|r| r.envelope.event_type == "attendance.marked")
    );
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_when_processes_start_at_once() {
    let schema = postgres().schema("migrate_concurrent").await;
    let (a, b) = tokio::join!(
        PgStore::connect(config(schema.url())),
        PgStore::connect(config(schema.url())),
    );
    let (a, b) = (a.expect("first start"), b.expect("second start"));
    assert!(a.migrate().await.unwrap().is_empty());
    assert!(b.migrate().await.unwrap().is_empty());
    let client = schema.connect().await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM edubus_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
    let partitions: i64 = client
        .query_one("SELECT count(*) FROM relay_partitions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, i64::from(common::PARTITIONS));
}

#[tokio::test]
async fn migrate_reports_the_versions_it_applied_now() {
    let (schema, store) = store("migrate_versions").await;
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "connect applied them"
    );
    // An empty schema again, as a new database would be.
    let name = schema.name();
    let client = schema.connect().await;
    client
        .batch_execute(&format!("DROP SCHEMA {name} CASCADE; CREATE SCHEMA {name}"))
        .await
        .unwrap();
    assert_eq!(store.migrate().await.unwrap(), vec![1, 2]);
    assert!(store.migrate().await.unwrap().is_empty());
    store.append(appends(1, 1)).await.unwrap();
    assert_eq!(store.read(ReadQuery::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_different_partition_count_is_refused() {
    let (schema, _store) = store("partitions_mismatch").await;
    let err = PgStore::connect(config(schema.url()).with_partitions(PARTITIONS + 1))
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("partitions"), "{err}");
}

#[tokio::test]
async fn keys_fall_back_to_subject_then_id() {
    let (_schema, store) = store("key_fallback").await;
    let mut subject_only = append("x", 0);
    subject_only.envelope.partitionkey = None;
    subject_only.envelope.subject = Some("subject-key".into());
    let mut no_key = append("y", 1);
    no_key.envelope.partitionkey = None;
    no_key.envelope.subject = None;
    store
        .append(vec![subject_only.clone(), no_key.clone()])
        .await
        .unwrap();
    let keys: HashSet<String> = store
        .read(ReadQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(keys.contains("subject-key"));
    assert!(keys.contains(&no_key.envelope.id));
}
