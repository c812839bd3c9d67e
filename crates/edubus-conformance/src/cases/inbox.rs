//! The inbox: a redelivery of an event already handled skips the handler.
//!
//! Both cases settle the later of two same-partition events while the earlier one is still
//! unsettled, so the later one is handled *above* the cursor (only the inbox knows it), then
//! move the lease to a new worker, which is delivered both again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use edubus_core::{
    ConsumerId, Lease, LeaseOptions, Outcome, Settlement, StartFrom, SubscriptionSpec, Transport,
};
use edubus_events::{AttendanceMarked, Event as _};
use edubus_runtime::WorkerStats;

use super::WAIT;
use crate::check::{counts, eventually};
use crate::events::{Published, key, keys_in_partition};
use crate::fixture::{Fixture, Running, WorkerSetup};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// Publishes one event on each of two keys of partition 0: `(k1, seq 0)`, `(k2, seq 1)`.
async fn same_partition_pair<H: Harness>(fx: &Fixture<H>) -> anyhow::Result<Vec<Published>> {
    let keys = keys_in_partition(0, fx.backend().partitions(), 0, 2);
    fx.publish(&[(keys[0], 0), (keys[1], 1)]).await
}

/// Waits until the new worker has recorded the first event and dealt with the second one
/// (skipped it as a duplicate, or ran its handler again, or, on a transport that never
/// redelivers an acknowledged entry, nothing of the subscription is left unsettled); then
/// checks it was not handled again.
async fn check_skipped<H: Harness>(
    fx: &Fixture<H>,
    subscription: &str,
    heir: &Script,
    running: Running,
    published: &[Published],
) -> anyhow::Result<()> {
    let stats: Arc<WorkerStats> = Arc::clone(&running.stats);
    eventually("the redelivered pair to be dealt with", WAIT, || async {
        let seen = counts(&fx.observations(subscription).await?);
        let first_done = seen.contains_key(&published[0].id);
        let second_seen =
            stats.duplicates.load(Ordering::Relaxed) > 0 || heir.log().iter().any(|c| c.seq == 1);
        let settled = fx
            .backend()
            .stats()
            .await?
            .iter()
            .any(|s| s.subscription == subscription && s.lag == 0 && s.pending == 0);
        Ok((first_done && (second_seen || settled)).then_some(()))
    })
    .await?;
    running.stop().await?;
    let reran: Vec<_> = heir.log().into_iter().filter(|c| c.seq == 1).collect();
    let recorded = counts(&fx.observations(subscription).await?);
    ensure!(
        reran.is_empty() && recorded.get(&published[1].id) == Some(&1),
        "an event handled above the cursor was handled again after the lease moved: handler \
         re-run {reran:?}, effect recorded {:?} times",
        recorded.get(&published[1].id)
    );
    Ok(())
}

/// Takes a lease by hand, as consumer `consumer`, for partition 0 of `subscription`.
async fn manual_lease<H: Harness>(
    fx: &Fixture<H>,
    subscription: &str,
    consumer: &ConsumerId,
) -> anyhow::Result<Lease> {
    let spec = SubscriptionSpec {
        name: subscription.to_owned(),
        types: vec![AttendanceMarked::NAME.to_owned()],
        ordered: true,
        start: StartFrom::Beginning,
    };
    fx.backend().register(&spec).await?;
    let options = LeaseOptions {
        ttl: Duration::from_millis(900),
        claim_after: Duration::from_secs(600),
    };
    let leases = fx
        .backend()
        .rebalance(subscription, consumer, options, &[])
        .await?;
    leases
        .into_iter()
        .find(|l| l.partition == 0)
        .context("a lone consumer leases partition 0")
}

/// DESIGN 5, effectively once: an event settled above the cursor by a consumer whose lease
/// then expired is skipped (handler not run) when redelivered to the next owner.
pub async fn inbox_skips_redelivery_after_lease_expiry<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let published = same_partition_pair(&fx).await?;
    let lease = manual_lease(&fx, "inbox", &ConsumerId("gone".into())).await?;
    let fetched = super::fetch_at_least(&fx, &lease, 2).await?;
    ensure!(fetched.len() == 2, "fetched {} deliveries", fetched.len());
    let second = &published[1];
    let work = h.record("inbox", &key(second.key), second.seq, &second.id);
    let settlement = Settlement {
        position: second.position,
        seq: fetched[1].seq,
        event_id: second.id.clone(),
        requeue_id: None,
        outcome: Outcome::Handled {
            work: Some(work),
            caused: Vec::new(),
        },
    };
    let results = fx
        .backend()
        .settle(&lease, vec![settlement], fetched[0].seq - 1)
        .await?;
    ensure!(
        results.iter().all(Result::is_ok),
        "out-of-order settle: {results:?}"
    );
    // The manual consumer never renews: its lease expires and moves to the worker.
    let heir = Arc::new(Script::recording("heir"));
    let running = fx.start(WorkerSetup::new("inbox", "heir"), &heir)?;
    check_skipped(&fx, "inbox", &heir, running, &published).await
}

/// DESIGN 5, effectively once and shutdown: a worker drains (the later event settled above
/// the cursor, the earlier one abandoned past the grace period) and releases its lease; the
/// next worker skips the later event.
pub async fn inbox_skips_redelivery_after_graceful_handover<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let stuck = Arc::new(Script::new("stuck", |call| match call.seq {
        0 => Action::Hang,
        _ => Action::Record,
    }));
    let setup = WorkerSetup::new("handover", "stuck").with_grace(Duration::from_millis(200));
    let running = fx.start(setup, &stuck)?;
    let published = same_partition_pair(&fx).await?;
    fx.await_observations("handover", 1, WAIT).await?;
    eventually("the first event's handler to hang", WAIT, || async {
        Ok(stuck.log().iter().any(|c| c.seq == 0).then_some(()))
    })
    .await?;
    running.stop().await?;
    let heir = Arc::new(Script::recording("heir"));
    let running = fx.start(WorkerSetup::new("handover", "heir"), &heir)?;
    check_skipped(&fx, "handover", &heir, running, &published).await
}
