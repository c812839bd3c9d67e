//! The transport role: subscriptions read the log through per-partition cursors; leases,
//! fetch, settlement and health live in their own modules, this one wires them to the trait.

use std::time::Duration;

use edubus_core::error::BoxError;
use edubus_core::{
    Append, Attempt, ConsumerId, DeliveryState, Fetched, Lease, LeaseOptions, Position, Recorded,
    Result, Settlement, SubscriptionSpec, SubscriptionStats, Transport,
};
use jiff::Timestamp;

use crate::{SqliteBackend, deliver, inspect, lease, settle, subs, trim};

/// A handler's transactional work: runs on the writer thread inside the settlement's
/// savepoint; the events it returns are appended in the same savepoint.
pub type SqliteWork =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<Vec<Append>, BoxError> + Send>;

impl Transport for SqliteBackend {
    type Work = SqliteWork;

    fn partitions(&self) -> u32 {
        self.partitions_stored()
    }

    async fn register(&self, spec: &SubscriptionSpec) -> Result<()> {
        let spec = spec.clone();
        self.writer()
            .call(move |tx, state| subs::register(tx, &spec, state.partitions))
            .await
    }

    async fn rebalance(
        &self,
        subscription: &str,
        consumer: &ConsumerId,
        options: LeaseOptions,
        busy_since: &[(u32, Timestamp)],
    ) -> Result<Vec<Lease>> {
        lease::rebalance(self, subscription, consumer, options, busy_since).await
    }

    async fn release(&self, consumer: &ConsumerId, leases: &[Lease]) -> Result<()> {
        lease::release(self, consumer, leases).await
    }

    async fn fetch(
        &self,
        lease: &Lease,
        after: Position,
        after_requeue: u64,
        max: usize,
    ) -> Result<Fetched> {
        deliver::fetch(self, lease, after, after_requeue, max).await
    }

    async fn seen(&self, lease: &Lease, deliveries: &[(Position, String)]) -> Result<Vec<String>> {
        deliver::seen(self, lease, deliveries).await
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlements: Vec<Settlement<SqliteWork>>,
        cursor: Position,
    ) -> Result<Vec<Result<()>>> {
        settle::settle(self, lease, settlements, cursor).await
    }

    async fn record_failure(
        &self,
        lease: &Lease,
        position: Position,
        attempt: Attempt,
    ) -> Result<()> {
        deliver::record_failure(self, lease, position, attempt).await
    }

    async fn failures(&self, subscription: &str, position: Position) -> Result<Vec<Attempt>> {
        deliver::failures(self, subscription, position).await
    }

    async fn wait(&self, partition: Option<u32>, after: Position, timeout: Duration) {
        self.notifier().wait(partition, after, timeout).await;
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionSpec>> {
        self.readers()
            .run(|conn| Ok(subs::load_all(conn)?.iter().map(subs::Sub::spec).collect()))
            .await
    }

    async fn states(&self, events: &[Recorded]) -> Result<Vec<Vec<(String, DeliveryState)>>> {
        inspect::states(self, events).await
    }

    async fn stats(&self) -> Result<Vec<SubscriptionStats>> {
        inspect::stats(self).await
    }

    async fn trim(&self, before: Timestamp) -> Result<u64> {
        trim::trim(self, before).await
    }
}
