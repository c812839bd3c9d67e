//! The Redis Streams transport against a real `redis-server`.

use std::collections::BTreeMap;
use std::time::Duration;

use edubus_core::{
    ConsumerId, DeadLetter, DeadReason, Envelope, Lease, LeaseOptions, Recorded, StartFrom,
    SubscriptionSpec, partition_of,
};
use edubus_redis::{RedisConfig, RedisStreams};
use jiff::Timestamp;
use serde_json::json;

const PARTITIONS: u32 = 4;
/// A lease that expires within a test, yet outlives a first fetch on a loaded machine.
const SHORT_TTL: Duration = Duration::from_millis(500);

async fn transport(test: &str) -> RedisStreams {
    let routes: BTreeMap<String, String> = [
        (
            "attendance.marked".to_owned(),
            "attendance.marked".to_owned(),
        ),
        ("grading.updated".to_owned(), "grading.updated".to_owned()),
    ]
    .into();
    let config = RedisConfig::new(edubus_testsupport::redis().url())
        .with_prefix(edubus_testsupport::unique_prefix(test))
        .with_partitions(PARTITIONS)
        .with_block(Duration::from_millis(20))
        .with_routes(routes);
    RedisStreams::connect(config).await.expect("connect")
}

fn event(position: u64, ty: &str, key: &str) -> Recorded {
    let mut envelope = Envelope::new(ty, 1, json!({ "n": position })).with_source("test");
    envelope.partitionkey = Some(key.to_owned());
    Recorded {
        position,
        stream: ty.to_owned(),
        partition: partition_of(key, PARTITIONS),
        key: key.to_owned(),
        recorded_at: Timestamp::now(),
        envelope,
    }
}

fn spec(name: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.to_owned(),
        types: vec!["attendance.marked".into(), "grading.updated".into()],
        ordered: true,
        start: StartFrom::Beginning,
    }
}

/// Every partition of subscription `s`, leased by the lone consumer `c1`.
async fn lease_all(redis: &RedisStreams) -> Vec<Lease> {
    let me = ConsumerId("c1".into());
    redis
        .rebalance("s", &me, lease_options(), &[])
        .await
        .unwrap()
        .leases
}

fn lease_options() -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_secs(5),
        claim_after: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn published_events_are_fetched_in_order_across_streams_and_acked_once() {
    let redis = transport("fetch_order").await;
    redis.register(&spec("s")).await.unwrap();
    let key = "student-1";
    let events: Vec<Recorded> = (1..=6)
        .map(|i| {
            let ty = if i % 2 == 0 {
                "grading.updated"
            } else {
                "attendance.marked"
            };
            event(i, ty, key)
        })
        .collect();
    redis.publish(&events).await.unwrap();
    let leases = lease_all(&redis).await;
    assert_eq!(
        leases.len(),
        PARTITIONS as usize,
        "a lone consumer holds every partition"
    );
    let lease = leases
        .iter()
        .find(|l| l.partition == partition_of(key, PARTITIONS))
        .unwrap();
    let fetched = redis.fetch(lease, 0, 0, 100).await.unwrap();
    let positions: Vec<u64> = fetched
        .deliveries
        .iter()
        .map(|d| d.event.position)
        .collect();
    assert_eq!(positions, [1, 2, 3, 4, 5, 6]);
    let seqs: Vec<u64> = fetched.deliveries.iter().map(|d| d.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );
    assert!(fetched.deliveries.iter().all(|d| d.delivery_count == 1));
    assert_eq!(fetched.deliveries[0].event.envelope, events[0].envelope);
    redis.ack(lease, &seqs, &[], &[]).await.unwrap();
    let again = redis
        .fetch(lease, fetched.scanned_to, 0, 100)
        .await
        .unwrap();
    assert!(
        again.deliveries.is_empty(),
        "acked entries are not delivered again"
    );
    let stats = redis.stats().await.unwrap();
    assert_eq!((stats[0].lag, stats[0].pending), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_publish_larger_than_one_pipeline_keeps_every_key_in_order() {
    let redis = transport("large_publish").await;
    redis.register(&spec("s")).await.unwrap();
    let types = ["attendance.marked", "grading.updated"];
    let events: Vec<Recorded> = (1..=2000u64)
        .map(|i| event(i, types[(i % 2) as usize], &format!("student-{}", i % 37)))
        .collect();
    redis.publish(&events).await.unwrap();
    let leases = lease_all(&redis).await;
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for lease in &leases {
        let mut after = 0;
        loop {
            let fetched = redis.fetch(lease, after, 0, 300).await.unwrap();
            if fetched.deliveries.is_empty() {
                break;
            }
            for d in &fetched.deliveries {
                by_key
                    .entry(d.event.key.clone())
                    .or_default()
                    .push(d.event.position);
            }
            let seqs: Vec<u64> = fetched.deliveries.iter().map(|d| d.seq).collect();
            redis.ack(lease, &seqs, &[], &[]).await.unwrap();
            after = fetched.scanned_to;
        }
    }
    assert_eq!(by_key.len(), 37);
    assert_eq!(by_key.values().map(Vec::len).sum::<usize>(), events.len());
    for (key, positions) in &by_key {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{key} was delivered out of publish order: {positions:?}"
        );
    }
}

#[tokio::test]
async fn a_partition_taken_over_redelivers_pending_entries_with_their_count() {
    let redis = transport("takeover").await;
    redis.register(&spec("s")).await.unwrap();
    redis
        .publish(&[event(1, "attendance.marked", "k")])
        .await
        .unwrap();
    let p = partition_of("k", PARTITIONS);
    let short = LeaseOptions {
        ttl: SHORT_TTL,
        ..lease_options()
    };
    let a = ConsumerId("a".into());
    let old = redis.rebalance("s", &a, short, &[]).await.unwrap().leases;
    let old = old.into_iter().find(|l| l.partition == p).unwrap();
    assert_eq!(
        redis.fetch(&old, 0, 0, 10).await.unwrap().deliveries.len(),
        1
    );
    tokio::time::sleep(SHORT_TTL * 3).await;
    let other = transport_like(&redis).await;
    let b = ConsumerId("b".into());
    let new = other
        .rebalance("s", &b, lease_options(), &[])
        .await
        .unwrap();
    let lease = new.leases.into_iter().find(|l| l.partition == p).unwrap();
    assert!(lease.epoch > old.epoch);
    let stale = redis.ack(&old, &[1], &[], &[]).await.unwrap_err();
    assert!(
        matches!(stale, edubus_core::Error::Conflict { .. }),
        "{stale}"
    );
    let again = other.fetch(&lease, 0, 0, 10).await.unwrap().deliveries;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 2, "the interrupted attempt counts");
    let history = other.failures("s", 1).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].consumer, "a");
}

/// A consumer whose lease moved cannot read new entries of the partition: they would land in
/// its own pending list, after the new owner's takeover, where no one reads them.
#[tokio::test]
async fn a_consumer_that_lost_its_lease_reads_nothing_new() {
    let redis = transport("fenced_read").await;
    redis.register(&spec("s")).await.unwrap();
    let p = partition_of("k", PARTITIONS);
    let short = LeaseOptions {
        ttl: SHORT_TTL,
        ..lease_options()
    };
    let a = ConsumerId("a".into());
    let old = redis.rebalance("s", &a, short, &[]).await.unwrap().leases;
    let old = old.into_iter().find(|l| l.partition == p).unwrap();
    assert!(
        redis
            .fetch(&old, 0, 0, 10)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    tokio::time::sleep(SHORT_TTL * 3).await;
    let other = transport_like(&redis).await;
    let b = ConsumerId("b".into());
    let new = other
        .rebalance("s", &b, lease_options(), &[])
        .await
        .unwrap();
    let lease = new.leases.into_iter().find(|l| l.partition == p).unwrap();
    assert!(
        other
            .fetch(&lease, 0, 0, 10)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    redis
        .publish(&[event(1, "attendance.marked", "k")])
        .await
        .unwrap();

    let stale = redis.fetch(&old, 0, 0, 10).await.unwrap_err();
    assert!(
        matches!(stale, edubus_core::Error::Conflict { .. }),
        "{stale}"
    );
    let got = other.fetch(&lease, 0, 0, 10).await.unwrap().deliveries;
    assert_eq!(got.len(), 1, "the new owner gets the entry");
    assert_eq!(got[0].delivery_count, 1);
}

/// A consumer group Redis lost (a restart without persistence) is created again from the
/// last id the subscription acknowledged: nothing acknowledged comes back, nothing newer is
/// skipped.
#[tokio::test]
async fn a_lost_consumer_group_is_recreated_from_the_last_acknowledged_entry() {
    let redis = transport("nogroup").await;
    redis.register(&spec("s")).await.unwrap();
    let p = partition_of("k", PARTITIONS);
    let leases = lease_all(&redis).await;
    let lease = leases.into_iter().find(|l| l.partition == p).unwrap();
    redis
        .publish(&[event(1, "attendance.marked", "k")])
        .await
        .unwrap();
    let first = redis.fetch(&lease, 0, 0, 10).await.unwrap();
    assert_eq!(first.deliveries.len(), 1);
    let seqs: Vec<u64> = first.deliveries.iter().map(|d| d.seq).collect();
    redis.ack(&lease, &seqs, &[], &[]).await.unwrap();

    let client = redis::Client::open(redis.config().url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{}:{{p{p}}}:s:attendance.marked", redis.config().prefix);
    let destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg("s")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(destroyed, 1, "the group existed on {stream}");
    redis
        .publish(&[event(2, "attendance.marked", "k")])
        .await
        .unwrap();

    let mut after = first.scanned_to;
    let mut got = Vec::new();
    for _ in 0..3 {
        let fetched = redis.fetch(&lease, after, 0, 10).await.unwrap();
        after = after.max(fetched.scanned_to);
        got.extend(fetched.deliveries.iter().map(|d| d.event.position));
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(
        got,
        [2],
        "only the entry published after the last acknowledgement"
    );
}

/// A second process on the same prefix.
async fn transport_like(redis: &RedisStreams) -> RedisStreams {
    RedisStreams::connect(redis.config().clone()).await.unwrap()
}

#[tokio::test]
async fn three_consumers_share_partitions_and_keep_renewed_leases() {
    let first = transport("sharing").await;
    first.register(&spec("s")).await.unwrap();
    let mut all = vec![first.clone()];
    for _ in 0..2 {
        all.push(transport_like(&first).await);
    }
    let options = LeaseOptions {
        ttl: Duration::from_millis(900),
        claim_after: Duration::from_secs(600),
    };
    let mut last: Vec<Vec<(u32, u64)>> = vec![Vec::new(); 3];
    let mut changes_after_settling = 0;
    for round in 0..15 {
        for (i, t) in all.iter().enumerate() {
            let me = ConsumerId(format!("c{i}"));
            let leases = t.rebalance("s", &me, options, &[]).await.unwrap().leases;
            let now: Vec<(u32, u64)> = leases.iter().map(|l| (l.partition, l.epoch)).collect();
            if round >= 5 && now != last[i] {
                changes_after_settling += 1;
            }
            last[i] = now;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let held: usize = last.iter().map(Vec::len).sum();
    assert_eq!(
        held, PARTITIONS as usize,
        "every partition held once: {last:?}"
    );
    assert_eq!(
        changes_after_settling, 0,
        "leases moved while renewed: {last:?}"
    );
}

/// Parking takes an id from a counter shared by all subscriptions, then adds the letter under
/// it: from several connections at once, a higher id often reaches the stream first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_parked_at_once_in_one_subscription_all_land() {
    let redis = transport("dlq_at_once").await;
    redis.register(&spec("s")).await.unwrap();
    let mut processes = Vec::new();
    for _ in 0..8 {
        processes.push(transport_like(&redis).await);
    }
    let letters = (1..=40u64).map(|position| {
        let event = event(
            position,
            "attendance.marked",
            &format!("student-{position}"),
        );
        let letter = DeadLetter {
            subscription: "s".into(),
            handler: "s/test".into(),
            reason: DeadReason::Rejected,
            error: "refused".into(),
            attempts: Vec::new(),
            stream: event.stream.clone(),
            partition: event.partition,
            position,
            event_id: event.envelope.id.clone(),
            event_type: event.envelope.event_type.clone(),
        };
        let redis = processes[position as usize % processes.len()].clone();
        tokio::spawn(async move { redis.dead_letter(&letter, &event).await })
    });
    let mut ids = Vec::new();
    for parked in letters.collect::<Vec<_>>() {
        ids.push(parked.await.unwrap().expect("every letter is parked"));
    }
    let listed = redis.dlq_list(Some("s"), 0, 100).await.unwrap();
    let mut positions: Vec<u64> = listed.iter().map(|r| r.entry.letter.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=40).collect::<Vec<_>>());
    let mut listed_ids: Vec<u64> = listed.iter().map(|r| r.entry.id).collect();
    listed_ids.sort_unstable();
    ids.sort_unstable();
    assert_eq!(
        listed_ids, ids,
        "each letter is listed under the id it was given"
    );
}

#[tokio::test]
async fn an_event_acknowledged_as_handled_is_fetched_as_handled_when_published_again() {
    let redis = transport("inbox").await;
    redis.register(&spec("s")).await.unwrap();
    let key = "student-7";
    let (handled, dead) = (
        event(1, "attendance.marked", key),
        event(2, "attendance.marked", key),
    );
    redis
        .publish(&[handled.clone(), dead.clone()])
        .await
        .unwrap();
    let leases = lease_all(&redis).await;
    let partition = partition_of(key, PARTITIONS);
    let lease = leases.iter().find(|l| l.partition == partition).unwrap();
    let first = redis.fetch(lease, 0, 0, 100).await.unwrap();
    assert!(first.deliveries.iter().all(|d| !d.handled));
    let seqs: Vec<u64> = first.deliveries.iter().map(|d| d.seq).collect();
    // Only the first is recorded as handled (the second stands for a dead letter).
    let id = handled.envelope.id.as_str();
    redis.ack(lease, &seqs, &[], &[id]).await.unwrap();
    assert_eq!(
        redis
            .handled(
                "s",
                &[(partition, id), (partition, dead.envelope.id.as_str())]
            )
            .await
            .unwrap(),
        [id]
    );

    // A relay that crashed after publishing publishes both again, as new entries.
    redis
        .publish(&[handled.clone(), dead.clone()])
        .await
        .unwrap();
    let again = redis.fetch(lease, first.scanned_to, 0, 100).await.unwrap();
    let seen: Vec<(u64, bool)> = again
        .deliveries
        .iter()
        .map(|d| (d.event.position, d.handled))
        .collect();
    assert_eq!(seen, [(1, true), (2, false)]);
}

#[tokio::test]
async fn trim_forgets_inbox_members_settled_before_the_cutoff_only() {
    let redis = transport("inbox_trim").await;
    redis.register(&spec("s")).await.unwrap();
    let key = "student-8";
    let handled = event(1, "attendance.marked", key);
    redis.publish(std::slice::from_ref(&handled)).await.unwrap();
    let leases = lease_all(&redis).await;
    let partition = partition_of(key, PARTITIONS);
    let lease = leases.iter().find(|l| l.partition == partition).unwrap();
    let fetched = redis.fetch(lease, 0, 0, 100).await.unwrap();
    let seqs: Vec<u64> = fetched.deliveries.iter().map(|d| d.seq).collect();
    let id = handled.envelope.id.as_str();
    redis.ack(lease, &seqs, &[], &[id]).await.unwrap();
    let an_hour = jiff::SignedDuration::from_hours(1);
    redis.trim(Timestamp::now() - an_hour).await.unwrap();
    assert_eq!(
        redis.handled("s", &[(partition, id)]).await.unwrap(),
        [id],
        "settled after the cutoff: kept"
    );
    redis.trim(Timestamp::now() + an_hour).await.unwrap();
    assert!(
        redis
            .handled("s", &[(partition, id)])
            .await
            .unwrap()
            .is_empty(),
        "settled before the cutoff: forgotten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_queued_at_once_into_one_subscription_all_land_in_order() {
    let redis = transport("requeue_at_once").await;
    redis.register(&spec("s")).await.unwrap();
    let key = "student-9";
    let mut calls = Vec::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    for call in 0..16u64 {
        let redis = transport_like(&redis).await;
        let events: Vec<Recorded> = (1..=25)
            .map(|i| event(call * 100 + i, "attendance.marked", key))
            .collect();
        let start = std::sync::Arc::clone(&start);
        calls.push(tokio::spawn(async move {
            start.wait().await;
            redis.requeue("s", &events).await
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().expect("every replay is queued"), 25);
    }
    let leases = lease_all(&redis).await;
    let lease = leases
        .iter()
        .find(|l| l.partition == partition_of(key, PARTITIONS))
        .unwrap();
    let mut queued = Vec::new();
    let mut after = 0;
    loop {
        let fetched = redis.fetch(lease, 0, after, 1000).await.unwrap();
        let replays: Vec<_> = fetched
            .deliveries
            .into_iter()
            .filter(|d| d.replay)
            .collect();
        let Some(last) = replays.last() else { break };
        after = last.requeue_id.unwrap();
        queued.extend(replays.iter().map(|d| d.event.position));
    }
    assert_eq!(queued.len(), 400, "{queued:?}");
    for call in 0..16u64 {
        let own: Vec<u64> = queued.iter().copied().filter(|p| p / 100 == call).collect();
        assert_eq!(own, (call * 100 + 1..=call * 100 + 25).collect::<Vec<_>>());
    }
}
