//! The hand-off fast path: events appended while a lease waits after an empty fetch reach its
//! next fetch from the writer's commit, their fetch recorded in that same commit.

mod common;

use common::{append, claim_stalled, consumer, lease_options, leases, open, spec};
use edubus_core::{EventStore, Lease, Transport, partition_of};
use edubus_sqlite::SqliteBackend;

/// The lease of `key`'s partition among `leases`.
fn lease_of(bus: &SqliteBackend, key: &str, leases: &[Lease]) -> Lease {
    let p = partition_of(key, bus.partitions());
    leases.iter().find(|l| l.partition == p).unwrap().clone()
}

/// Fetches `lease` after its cursor, expecting nothing; returns the fetch's `scanned_to`.
async fn empty_fetch(bus: &SqliteBackend, lease: &Lease, max: usize) -> u64 {
    let fetched = bus.fetch(lease, lease.cursor, 0, max).await.unwrap();
    assert!(fetched.deliveries.is_empty());
    fetched.scanned_to
}

#[tokio::test]
async fn an_append_reaches_a_waiting_fetch_without_another_commit_and_its_fetch_counts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &["attendance.marked"]))
        .await
        .unwrap();
    let options = lease_options(60_000, 100);
    let a = bus
        .rebalance("s", &consumer("a"), options, &[])
        .await
        .unwrap();
    let lease = lease_of(&bus, "student-7", &a);
    let after = empty_fetch(&bus, &lease, 10).await;

    let mut event = append("attendance.marked", "student-7");
    event.envelope = event
        .envelope
        .with_extension("vendorext", "x")
        .with_correlation_id("correlation-1");
    event.envelope.data = serde_json::json!({ "key": "student-7", "score": 0.1, "n": -3 });
    let stored = bus.append(vec![event.clone()]).await.unwrap();
    let commands = bus.writer_stats().commands;
    let fetched = bus.fetch(&lease, after, 0, 10).await.unwrap();
    assert_eq!(
        bus.writer_stats().commands,
        commands,
        "the fetch was recorded in the append's commit, not by a command of its own"
    );
    assert_eq!(fetched.deliveries.len(), 1);
    let delivery = &fetched.deliveries[0];
    assert_eq!(delivery.event.envelope.id, event.envelope.id);
    assert_eq!(delivery.event.position, stored[0].position);
    let read = bus.get(&event.envelope.id).await.unwrap().unwrap();
    assert_eq!(
        delivery.event.envelope, read.envelope,
        "the envelope handed off is the one a read decodes"
    );
    assert_eq!(delivery.delivery_count, 1);
    assert!(!delivery.handled);
    assert_eq!(fetched.scanned_to, stored[0].position);

    // The consumer stalls: whoever claims the partition counts the handed-off delivery.
    let b = claim_stalled(&bus, "s", lease.partition, options).await;
    let claimed = lease_of(&bus, "student-7", &b);
    let again = bus.fetch(&claimed, claimed.cursor, 0, 10).await.unwrap();
    assert_eq!(again.deliveries[0].event.envelope.id, event.envelope.id);
    assert_eq!(again.deliveries[0].delivery_count, 2);
    bus.close().await;
}

#[tokio::test]
async fn a_handoff_takes_only_the_subscribed_types_up_to_the_fetch_size() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &["attendance.marked"]))
        .await
        .unwrap();
    let a = leases(&bus, "s", "a").await;
    let lease = lease_of(&bus, "student-7", &a);
    let after = empty_fetch(&bus, &lease, 2).await;

    let batch = vec![
        append("grade.recorded", "student-7"),
        append("attendance.marked", "student-7"),
        append("attendance.marked", "student-7"),
        append("attendance.marked", "student-7"),
    ];
    let stored = bus.append(batch.clone()).await.unwrap();
    let first = bus.fetch(&lease, after, 0, 2).await.unwrap();
    let ids: Vec<&str> = first
        .deliveries
        .iter()
        .map(|d| d.event.envelope.id.as_str())
        .collect();
    assert_eq!(ids, [&batch[1].envelope.id, &batch[2].envelope.id]);
    assert_eq!(first.scanned_to, stored[2].position);

    let rest = bus.fetch(&lease, first.scanned_to, 0, 2).await.unwrap();
    assert_eq!(rest.deliveries.len(), 1);
    assert_eq!(rest.deliveries[0].event.envelope.id, batch[3].envelope.id);
    bus.close().await;
}

#[tokio::test]
async fn a_released_lease_is_handed_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &[])).await.unwrap();
    let a = leases(&bus, "s", "a").await;
    let lease = lease_of(&bus, "student-7", &a);
    let after = empty_fetch(&bus, &lease, 10).await;
    bus.release(&consumer("a"), &a).await.unwrap();

    bus.append(vec![append("attendance.marked", "student-7")])
        .await
        .unwrap();
    let commands = bus.writer_stats().commands;
    let fetched = bus.fetch(&lease, after, 0, 10).await.unwrap();
    assert_eq!(fetched.deliveries.len(), 1, "read from the log");
    assert_eq!(
        bus.writer_stats().commands,
        commands + 1,
        "no hand-off: the fetch records itself"
    );
    bus.close().await;
}
