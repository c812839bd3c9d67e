//! The production deployment (PostgreSQL store, relay, Redis transport) on real servers.

use std::collections::BTreeMap;
use std::time::Duration;

use edubus_core::{
    Append, ConsumerId, Envelope, EventStore, Lease, LeaseOptions, StartFrom, SubscriptionSpec,
    Transport,
};
use edubus_postgres::{PgConfig, RelayOptions};
use edubus_redis::{Production, RedisConfig};
use serde_json::json;

async fn production(test: &str) -> Production {
    open(test, true).await
}

async fn open(test: &str, relay: bool) -> Production {
    let schema = edubus_testsupport::postgres().schema(test).await;
    let routes: BTreeMap<String, String> = ["attendance.marked", "grading.updated"]
        .map(|t| (t.to_owned(), t.to_owned()))
        .into();
    let redis = RedisConfig::new(edubus_testsupport::redis().url())
        .with_prefix(edubus_testsupport::unique_prefix(test))
        .with_partitions(4)
        .with_block(Duration::from_millis(20))
        .with_routes(routes);
    let relay_options = RelayOptions {
        poll_interval: Duration::from_millis(50),
        ..RelayOptions::default()
    };
    Production::open(
        PgConfig::new(schema.url()).with_partitions(4),
        redis,
        relay.then_some(relay_options),
    )
    .await
    .expect("open the production deployment")
}

fn append(key: &str, n: u64) -> Append {
    let mut envelope = Envelope::new("attendance.marked", 1, json!({ "n": n })).with_source("t");
    envelope.partitionkey = Some(key.to_owned());
    Append {
        envelope,
        stream: "attendance.marked".into(),
    }
}

/// Registers the ordered subscription `s` of `attendance.marked`; returns the lease a lone
/// consumer `c` then holds on the partition of `key`.
async fn lease_for(prod: &Production, key: &str) -> Lease {
    prod.register(&SubscriptionSpec {
        name: "s".into(),
        types: vec!["attendance.marked".into()],
        ordered: true,
        start: StartFrom::Beginning,
    })
    .await
    .unwrap();
    let options = LeaseOptions {
        ttl: Duration::from_secs(5),
        claim_after: Duration::from_secs(600),
    };
    let leases = prod
        .rebalance("s", &ConsumerId("c".into()), options, &[])
        .await
        .unwrap();
    let p = edubus_core::partition_of(key, 4);
    leases.into_iter().find(|l| l.partition == p).unwrap()
}

#[tokio::test]
async fn appended_events_reach_a_subscription_through_the_relay() {
    let prod = production("relay_to_fetch").await;
    let lease = &lease_for(&prod, "k").await;
    let appended = prod
        .append((1..=5).map(|n| append("k", n)).collect())
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 5 && tokio::time::Instant::now() < deadline {
        let after = got.last().map_or(0, |d: &edubus_core::Delivery| d.seq);
        got.extend(prod.fetch(lease, after, 0, 10).await.unwrap().deliveries);
    }
    let positions: Vec<u64> = got.iter().map(|d| d.event.position).collect();
    let expected: Vec<u64> = appended.iter().map(|a| a.position).collect();
    assert_eq!(positions, expected);
}

/// Lag counts what a subscription still has to receive: committed events the relay has not
/// moved to Redis yet (here no relay runs), and queued replays.
#[tokio::test]
async fn lag_counts_unrelayed_events_and_queued_replays() {
    let prod = open("lag_outbox", false).await;
    for name in ["marks", "others"] {
        prod.register(&SubscriptionSpec {
            name: name.into(),
            types: vec![
                if name == "marks" {
                    "attendance.marked"
                } else {
                    "grading.updated"
                }
                .into(),
            ],
            ordered: true,
            start: StartFrom::Beginning,
        })
        .await
        .unwrap();
    }
    prod.append((1..=3).map(|n| append("k", n)).collect())
        .await
        .unwrap();
    let lag = |stats: &[edubus_core::SubscriptionStats], name: &str| {
        stats.iter().find(|s| s.subscription == name).map(|s| s.lag)
    };
    let stats = prod.stats().await.unwrap();
    assert_eq!(lag(&stats, "marks"), Some(3), "{stats:?}");
    assert_eq!(lag(&stats, "others"), Some(0), "{stats:?}");

    let queued = edubus_core::Replay::replay(&prod, "marks", 0, None, "test")
        .await
        .unwrap();
    assert_eq!(queued, 3);
    let stats = prod.stats().await.unwrap();
    assert_eq!(
        lag(&stats, "marks"),
        Some(6),
        "3 unrelayed + 3 queued replays: {stats:?}"
    );
}

/// A plain settlement (no work, no caused events) is recorded in the Redis inbox only: the
/// same event published again is fetched as handled, `states` reports it handled, and
/// PostgreSQL's inbox never heard of it.
#[tokio::test]
async fn a_relayed_event_published_again_after_a_plain_settlement_is_seen_as_handled() {
    let prod = open("republished", false).await;
    let lease = &lease_for(&prod, "k").await;
    prod.append(vec![append("k", 1)]).await.unwrap();
    let events = prod.read(edubus_core::ReadQuery::default()).await.unwrap();
    // What a relay that crashed before moving its cursor does: publish the same event twice.
    prod.redis().publish(&events).await.unwrap();
    let first = prod.fetch(lease, 0, 0, 10).await.unwrap();
    assert_eq!(first.deliveries.len(), 1);
    let d = &first.deliveries[0];
    assert!(!d.handled);
    let settlement = edubus_core::Settlement {
        position: d.event.position,
        seq: d.seq,
        event_id: d.event.envelope.id.clone(),
        requeue_id: None,
        outcome: edubus_core::Outcome::Handled {
            work: None,
            caused: Vec::new(),
        },
    };
    let results = prod.settle(lease, vec![settlement], d.seq).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    prod.redis().publish(&events).await.unwrap();
    let again = prod.fetch(lease, first.scanned_to, 0, 10).await.unwrap();
    let handled: Vec<bool> = again.deliveries.iter().map(|d| d.handled).collect();
    assert_eq!(handled, [true], "the second copy is skipped");
    let states = prod.states(&events).await.unwrap();
    assert_eq!(
        states[0],
        [("s".to_owned(), edubus_core::DeliveryState::Handled)]
    );
    let id = d.event.envelope.id.clone();
    let in_postgres = prod.store().seen("s", &[id]).await.unwrap();
    assert!(in_postgres.is_empty());
}
