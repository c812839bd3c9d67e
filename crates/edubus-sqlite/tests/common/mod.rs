//! Helpers shared by the integration tests: real SQLite files in temporary directories.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use edubus_core::{
    Append, ConsumerId, Envelope, Lease, LeaseOptions, Outcome, Settlement, StartFrom,
    SubscriptionSpec, Transport,
};
use edubus_sqlite::{SqliteBackend, SqliteConfig, SqliteWork};
use serde_json::json;

/// The configuration tests open with: quick polls.
pub fn config(dir: &Path) -> SqliteConfig {
    SqliteConfig::in_dir(dir).with_poll_interval(Duration::from_millis(2))
}

/// Opens a backend in `dir`.
pub async fn open(dir: &Path) -> SqliteBackend {
    SqliteBackend::open(config(dir)).await.expect("open")
}

/// An envelope of `ty` keyed by `key`.
pub fn envelope(ty: &str, key: &str) -> Envelope {
    Envelope::new(ty, 1, json!({ "key": key }))
        .with_source("tests")
        .with_key(key)
}

/// An append of `ty` keyed by `key` on the stream named after the type.
pub fn append(ty: &str, key: &str) -> Append {
    Append {
        envelope: envelope(ty, key),
        stream: ty.to_owned(),
    }
}

/// A subscription from the beginning.
pub fn spec(name: &str, types: &[&str]) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.to_owned(),
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        ordered: true,
        start: StartFrom::Beginning,
    }
}

/// Lease timings for tests.
pub fn lease_options(ttl_ms: u64, claim_after_ms: u64) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_millis(ttl_ms),
        claim_after: Duration::from_millis(claim_after_ms),
    }
}

/// A consumer id.
pub fn consumer(name: &str) -> ConsumerId {
    ConsumerId(name.to_owned())
}

/// Leases of `name` after one rebalance with default timings.
pub async fn leases(bus: &SqliteBackend, sub: &str, name: &str) -> Vec<Lease> {
    bus.rebalance(sub, &consumer(name), lease_options(15_000, 600_000), &[])
        .await
        .expect("rebalance")
}

/// A successful settlement without work or caused events.
pub fn handled(position: u64, event_id: &str) -> Settlement<SqliteWork> {
    Settlement {
        position,
        seq: position,
        event_id: event_id.to_owned(),
        requeue_id: None,
        outcome: Outcome::Handled {
            work: None,
            caused: Vec::new(),
        },
    }
}

/// Reports `partition` of consumer `a` busy for seconds, so that `b` claims it as stalled;
/// returns `b`'s leases.
pub async fn claim_stalled(
    bus: &SqliteBackend,
    sub: &str,
    partition: u32,
    options: LeaseOptions,
) -> Vec<Lease> {
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5);
    bus.rebalance(sub, &consumer("a"), options, &[(partition, long_ago)])
        .await
        .unwrap();
    bus.rebalance(sub, &consumer("b"), options, &[])
        .await
        .unwrap()
}
