//! Partition leases: fair share, expiry, stalled claims, epoch fencing, release.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{append, claim_stalled, consumer, handled, lease_options, leases, open, spec};
use edubus_core::{Append, ErrorKind, EventStore, Lease, Outcome, Settlement, Transport};
use edubus_sqlite::SqliteBackend;

fn partitions(leases: &[Lease]) -> BTreeSet<u32> {
    leases.iter().map(|l| l.partition).collect()
}

/// Appends one event and returns it with the lease of its partition among `leases`.
async fn append_in(bus: &SqliteBackend, key: &str, leases: &[Lease]) -> (Append, Lease) {
    let a = append("attendance.marked", key);
    bus.append(vec![a.clone()]).await.unwrap();
    let p = edubus_core::partition_of(key, bus.partitions());
    let lease = leases.iter().find(|l| l.partition == p).unwrap().clone();
    (a, lease)
}

#[tokio::test]
async fn two_consumers_split_sixteen_partitions_eight_and_eight() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &[])).await.unwrap();
    assert_eq!(
        leases(&bus, "s", "a").await.len(),
        16,
        "alone, a takes everything"
    );
    assert!(
        leases(&bus, "s", "b").await.is_empty(),
        "nothing is free yet"
    );
    let a = leases(&bus, "s", "a").await;
    assert_eq!(a.len(), 8, "a gives up what exceeds its fair share");
    let b = leases(&bus, "s", "b").await;
    assert_eq!(b.len(), 8);
    assert!(partitions(&a).is_disjoint(&partitions(&b)));
    assert_eq!(partitions(&a).len() + partitions(&b).len(), 16);
    assert!(b.iter().all(|l| l.epoch == 2), "taken twice: epoch 2");

    let stats = bus.stats().await.unwrap();
    assert_eq!((stats[0].consumers, stats[0].leased_partitions), (2, 16));
    bus.close().await;
}

#[tokio::test]
async fn an_expired_consumer_loses_its_partitions_and_its_stale_settle_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &[])).await.unwrap();
    let short = lease_options(200, 600_000);
    let a = bus
        .rebalance("s", &consumer("a"), short, &[])
        .await
        .unwrap();
    assert_eq!(a.len(), 16);
    let (event, lease) = append_in(&bus, "student-1", &a).await;
    let fetched = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(fetched.len(), 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = bus
        .rebalance("s", &consumer("b"), short, &[])
        .await
        .unwrap();
    assert_eq!(b.len(), 16, "a stopped heartbeating: b takes everything");
    let taken = b.iter().find(|l| l.partition == lease.partition).unwrap();
    assert!(taken.epoch > lease.epoch);

    let position = fetched[0].event.position;
    let caused = append("attendance.threshold_reached", "student-1");
    let settlement = Settlement {
        outcome: Outcome::Handled {
            work: None,
            caused: vec![caused.clone()],
        },
        ..handled(position, &event.envelope.id)
    };
    let err = bus
        .settle(&lease, vec![settlement], position)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        bus.get(&caused.envelope.id).await.unwrap().is_none(),
        "nothing committed"
    );
    let err = bus.fetch(&lease, lease.cursor, 0, 10).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "a stale lease cannot fetch either"
    );

    let redelivered = bus
        .fetch(taken, taken.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(
        redelivered[0].delivery_count, 2,
        "the interrupted delivery counts"
    );
    let attempts = bus.failures("s", position).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].number, attempts[0].consumer.as_str()),
        (1, "a")
    );
    assert!(
        attempts[0].error.contains("interrupted"),
        "{}",
        attempts[0].error
    );
    bus.close().await;
}

#[tokio::test]
async fn a_stalled_partition_is_claimed_and_the_attempt_carries_over() {
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
    let (event, lease) = append_in(&bus, "student-7", &a).await;
    let first = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(first[0].delivery_count, 1);

    let b = claim_stalled(&bus, "s", lease.partition, options).await;
    let claimed = b
        .iter()
        .find(|l| l.partition == lease.partition)
        .expect("claimed");
    assert!(claimed.epoch > lease.epoch);

    let again = bus
        .fetch(claimed, claimed.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event.envelope.id, event.envelope.id);
    assert_eq!(again[0].delivery_count, 2, "the stalled attempt counts");
    let attempts = bus.failures("s", again[0].event.position).await.unwrap();
    assert!(
        attempts[0].error.contains("stalled"),
        "{}",
        attempts[0].error
    );
    bus.close().await;
}

#[tokio::test]
async fn released_partitions_go_to_the_others_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("s", &[])).await.unwrap();
    leases(&bus, "s", "a").await;
    leases(&bus, "s", "b").await;
    let a = leases(&bus, "s", "a").await;
    assert_eq!(leases(&bus, "s", "b").await.len(), 8);
    bus.release(&consumer("a"), &a).await.unwrap();
    assert_eq!(
        leases(&bus, "s", "b").await.len(),
        16,
        "a left the membership"
    );
    let err = bus
        .rebalance("missing", &consumer("a"), lease_options(1000, 1000), &[])
        .await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::NotFound);
    bus.close().await;
}
