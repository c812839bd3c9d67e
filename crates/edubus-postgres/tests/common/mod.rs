//! Helpers shared by the integration tests: a store in a fresh schema of the real test
//! cluster, envelopes, and a recorder that observes what a relay published.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edubus_core::{Append, Envelope, Error, Recorded, Result};
use edubus_postgres::{PgConfig, PgStore, Sink};
use edubus_testsupport::{PgSchema, postgres};
use serde_json::json;

/// Partitions the tests use: few, so partitions hold many events each.
pub const PARTITIONS: u32 = 4;

/// A fresh schema for `test` and a store migrated into it.
pub async fn store(test: &str) -> (PgSchema, PgStore) {
    let schema = postgres().schema(test).await;
    let store = PgStore::connect(config(schema.url()))
        .await
        .expect("connect");
    (schema, store)
}

/// The configuration the tests use.
pub fn config(url: &str) -> PgConfig {
    PgConfig::new(url)
        .with_partitions(PARTITIONS)
        .with_pool_size(8)
}

/// An envelope of `attendance.marked` keyed by `key`, numbered `n` in its payload.
pub fn envelope(key: &str, n: usize) -> Envelope {
    Envelope::new("attendance.marked", 1, json!({ "student_id": key, "n": n }))
        .with_source("tests")
        .with_key(key)
}

/// An append of [`envelope`] on the `attendance` stream.
pub fn append(key: &str, n: usize) -> Append {
    Append {
        envelope: envelope(key, n),
        stream: "attendance".into(),
    }
}

/// `count` appends spread over `keys` keys.
pub fn appends(count: usize, keys: usize) -> Vec<Append> {
    (0..count)
        .map(|n| append(&format!("student-{}", n % keys), n))
        .collect()
}

/// What a relay published, in publish order; optionally fails (after recording) or hangs.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    published: Mutex<Vec<Recorded>>,
    /// Publishes to fail after recording them.
    failures: Mutex<usize>,
    /// Publishes to leave hanging forever after recording them.
    hangs: Mutex<usize>,
    recorded: tokio::sync::Notify,
}

impl Recorder {
    /// Fails the next `n` publishes after recording their events.
    pub fn fail_next(&self, n: usize) {
        *self.inner.failures.lock().unwrap() = n;
    }

    /// Leaves the next `n` publishes pending forever after recording their events.
    pub fn hang_next(&self, n: usize) {
        *self.inner.hangs.lock().unwrap() = n;
    }

    /// Completes after the next publish recorded its events.
    pub async fn recorded(&self) {
        self.inner.recorded.notified().await;
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<Recorded> {
        self.inner.published.lock().unwrap().clone()
    }

    /// The distinct event ids published so far.
    pub fn ids(&self) -> HashSet<String> {
        self.published()
            .into_iter()
            .map(|r| r.envelope.id)
            .collect()
    }

    /// Waits until every id in `ids` was published; panics after a generous bound.
    pub async fn wait_for(&self, ids: &HashSet<String>) {
        for _ in 0..1200 {
            if self.ids().is_superset(ids) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let missing = ids.difference(&self.ids()).count();
        panic!("{missing} of {} events were never relayed", ids.len());
    }
}

fn take_one(counter: &Mutex<usize>) -> bool {
    let mut n = counter.lock().unwrap();
    let take = *n > 0;
    *n = n.saturating_sub(1);
    take
}

impl Sink for Recorder {
    async fn publish(&self, events: Vec<Recorded>) -> Result<()> {
        self.inner.published.lock().unwrap().extend(events);
        self.inner.recorded.notify_one();
        if take_one(&self.inner.hangs) {
            std::future::pending::<()>().await;
        }
        if take_one(&self.inner.failures) {
            return Err(Error::unavailable(
                "the recorder refuses this batch",
                "test",
            ));
        }
        Ok(())
    }
}

/// Positions published per partition, in publish order.
pub fn by_partition(published: &[Recorded]) -> BTreeMap<u32, Vec<u64>> {
    let mut map: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for r in published {
        map.entry(r.partition).or_default().push(r.position);
    }
    map
}

/// Asserts each partition's first publications come in ascending position order.
pub fn assert_first_publications_in_order(published: &[Recorded]) {
    for (partition, positions) in by_partition(published) {
        let mut seen = HashSet::new();
        let first: Vec<u64> = positions.into_iter().filter(|p| seen.insert(*p)).collect();
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} was published out of order: {first:?}"
        );
    }
}
