//! Dead letters, replays and retention on real files, with their audit rows.

mod common;

use common::{append, handled, leases, open, spec};
use edubus_core::{
    Attempt, DeadLetter, DeadLetterQueue, DeadReason, Delivery, EventStore, Lease, Outcome,
    ReadQuery, Replay, Settlement, Transport,
};
use edubus_sqlite::SqliteBackend;

async fn lease_of(bus: &SqliteBackend, sub: &str, key: &str) -> Lease {
    let p = edubus_core::partition_of(key, bus.partitions());
    let all = leases(bus, sub, "w").await;
    all.into_iter().find(|l| l.partition == p).unwrap()
}

fn letter(sub: &str, d: &Delivery) -> DeadLetter {
    DeadLetter {
        subscription: sub.into(),
        handler: "notify-parents".into(),
        reason: DeadReason::Exhausted,
        error: "smtp down".into(),
        attempts: vec![Attempt {
            number: 1,
            at: jiff::Timestamp::now(),
            consumer: "w".into(),
            error: "smtp down".into(),
        }],
        stream: d.event.stream.clone(),
        partition: d.event.partition,
        position: d.event.position,
        event_id: d.event.envelope.id.clone(),
        event_type: d.event.envelope.event_type.clone(),
    }
}

/// Appends one event for `key`, delivers it to `sub` and dead-letters it.
async fn dead_letter(bus: &SqliteBackend, sub: &str, key: &str) -> DeadLetter {
    let lease = lease_of(bus, sub, key).await;
    bus.append(vec![append("attendance.marked", key)])
        .await
        .unwrap();
    let got = bus
        .fetch(&lease, lease.cursor, 0, 1)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    let parked = letter(sub, &got);
    let dead = Settlement {
        outcome: Outcome::Dead(parked.clone()),
        ..handled(got.event.position, &got.event.envelope.id)
    };
    bus.settle(&lease, vec![dead], got.event.position)
        .await
        .unwrap();
    parked
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged_with_audit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    for name in ["a", "b"] {
        bus.register(&spec(name, &[])).await.unwrap();
    }
    let parked = dead_letter(&bus, "a", "k").await;
    let entries = bus.list(Some("a"), 0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.letter, parked);
    assert!(entry.replayed_at.is_none());
    assert!(bus.list(Some("b"), 0, 10).await.unwrap().is_empty());
    assert_eq!(
        DeadLetterQueue::get(&bus, entry.id).await.unwrap().as_ref(),
        Some(entry)
    );

    assert_eq!(bus.replay_dead(&[entry.id, 999], "ops@school").await, 1);
    let replayed = DeadLetterQueue::get(&bus, entry.id).await.unwrap().unwrap();
    assert!(replayed.replayed_at.is_some());
    let lease = lease_of(&bus, "a", "k").await;
    let again = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again.len(), 1);
    assert!(again[0].replay && again[0].event.envelope.replay == Some(true));
    let other = lease_of(&bus, "b", "k").await;
    let b_got = bus
        .fetch(&other, other.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert!(
        b_got.iter().all(|d| !d.replay),
        "a DLQ replay goes to its subscription only"
    );

    assert_eq!(
        DeadLetterQueue::purge(&bus, &[entry.id], "ops@school")
            .await
            .unwrap(),
        1
    );
    assert!(bus.list(None, 0, 10).await.unwrap().is_empty());

    let audit = bus.audit(100).await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .rev()
        .map(|e| (e.action.as_str(), e.subject.as_str()))
        .collect();
    let id = entry.id.to_string();
    assert!(actions.contains(&("dlq.list", "a")));
    assert!(actions.contains(&("dlq.get", id.as_str())));
    assert!(actions.contains(&("dlq.replay", id.as_str())));
    assert!(actions.contains(&("dlq.replay", "999")));
    assert!(actions.contains(&("dlq.purge", id.as_str())));
    let purge = audit.iter().find(|e| e.action == "dlq.purge").unwrap();
    assert_eq!(purge.actor, "ops@school");
    bus.close().await;
}

/// `DeadLetterQueue::replay`, named apart from `Replay::replay`.
trait ReplayDead {
    async fn replay_dead(&self, ids: &[u64], actor: &str) -> u64;
}

impl ReplayDead for SqliteBackend {
    async fn replay_dead(&self, ids: &[u64], actor: &str) -> u64 {
        DeadLetterQueue::replay(self, ids, actor).await.unwrap()
    }
}

#[tokio::test]
async fn replay_requeues_settled_events_for_one_subscription_marked_replay() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    for name in ["a", "b"] {
        bus.register(&spec(name, &["attendance.marked"]))
            .await
            .unwrap();
    }
    let lease = lease_of(&bus, "a", "k").await;
    let batch: Vec<_> = (0..5).map(|_| append("attendance.marked", "k")).collect();
    bus.append(batch).await.unwrap();
    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    let settle: Vec<_> = got[..3]
        .iter()
        .map(|d| handled(d.event.position, &d.event.envelope.id))
        .collect();
    bus.settle(&lease, settle, got[2].event.position)
        .await
        .unwrap();

    let queued = Replay::replay(&bus, "a", 2, None, "ops").await.unwrap();
    assert_eq!(
        queued, 2,
        "positions 2 and 3: settled; 4 and 5 are delivered anyway"
    );
    let lease = lease_of(&bus, "a", "k").await;
    let again = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    let replays: Vec<_> = again
        .iter()
        .filter(|d| d.replay)
        .map(|d| d.event.position)
        .collect();
    assert_eq!(replays, [2, 3]);
    assert!(again[0].replay, "replayed entries come first");
    let after = again[1].requeue_id.unwrap();
    let rest = bus
        .fetch(&lease, lease.cursor, after, 10)
        .await
        .unwrap()
        .deliveries;
    assert!(
        rest.iter().all(|d| !d.replay),
        "entries up to after_requeue are not repeated"
    );

    let requeued = again[0].clone();
    let settle = Settlement {
        requeue_id: requeued.requeue_id,
        ..handled(requeued.event.position, &requeued.event.envelope.id)
    };
    bus.settle(&lease, vec![settle], lease.cursor)
        .await
        .unwrap();
    let left = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(
        left.iter().filter(|d| d.replay).count(),
        1,
        "the settled replay is gone"
    );

    let b = lease_of(&bus, "b", "k").await;
    let b_got = bus.fetch(&b, b.cursor, 0, 10).await.unwrap().deliveries;
    assert!(b_got.iter().all(|d| !d.replay));
    assert!(
        bus.audit(10)
            .await
            .unwrap()
            .iter()
            .any(|e| e.action == "replay" && e.subject == "a")
    );
    bus.close().await;
}

#[tokio::test]
async fn trim_never_removes_what_a_subscription_has_not_settled() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path()).await;
    bus.register(&spec("grades", &["grade.posted"]))
        .await
        .unwrap();
    bus.register(&spec("all", &[])).await.unwrap();
    let batch = vec![
        append("attendance.marked", "k"),
        append("grade.posted", "k"),
        append("attendance.marked", "k"),
    ];
    bus.append(batch).await.unwrap();
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    assert_eq!(bus.trim(later).await.unwrap(), 0, "nobody settled anything");

    let lease = lease_of(&bus, "all", "k").await;
    let got = bus
        .fetch(&lease, lease.cursor, 0, 10)
        .await
        .unwrap()
        .deliveries;
    let settle: Vec<_> = got
        .iter()
        .map(|d| handled(d.event.position, &d.event.envelope.id))
        .collect();
    bus.settle(&lease, settle, 3).await.unwrap();
    assert_eq!(
        bus.trim(later).await.unwrap(),
        2,
        "grades never receives attendance events"
    );
    let left = bus.read(ReadQuery::default()).await.unwrap();
    assert_eq!(left.iter().map(|r| r.position).collect::<Vec<_>>(), [2]);

    let earlier = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600);
    let g = lease_of(&bus, "grades", "k").await;
    let got = bus.fetch(&g, g.cursor, 0, 10).await.unwrap().deliveries;
    bus.settle(&g, vec![handled(2, &got[0].event.envelope.id)], 2)
        .await
        .unwrap();
    assert_eq!(
        bus.trim(earlier).await.unwrap(),
        0,
        "younger than the retention"
    );
    assert_eq!(bus.trim(later).await.unwrap(), 1);
    assert_eq!(bus.head().await.unwrap(), 3, "the head survives trimming");
    bus.close().await;
}
