//! Leases: stalled deliveries claimed by another worker, fencing of stale leases, and
//! partitions shared by several workers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use edubus_core::{
    ConsumerId, DeadLetterQueue, Error, Lease, LeaseOptions, Outcome, Settlement, StartFrom,
    SubscriptionSpec, Transport, partition_of,
};
use edubus_events::{AttendanceMarked, Event as _};

use super::{WAIT, round_robin};
use crate::check::{check_in_order, eventually};
use crate::events::{Published, key};
use crate::fixture::{Fixture, WorkerSetup, fast_options, test_lease};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// DESIGN 5, stalled recovery: a handler hanging in worker A (which keeps heartbeating) past
/// `claim_after` is claimed by worker B with delivery count 2; A's late result has no effect.
pub async fn stalled_delivery_is_claimed_with_its_delivery_count<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let a_script = Arc::new(Script::new("a", |call| match call.seq {
        0 => Action::Hang,
        _ => Action::Record,
    }));
    let b_script = Arc::new(Script::recording("b"));
    let setup = |consumer: &str| {
        let options = fast_options(5).with_claim_after(Duration::from_millis(300));
        WorkerSetup::new("stall", consumer).with_options(options)
    };
    let a = fx.start(setup("a"), &a_script)?;
    let published = fx.publish(&[(0, 0)]).await?;
    eventually("A's handler to hang", WAIT, || async {
        Ok((!a_script.log().is_empty()).then_some(()))
    })
    .await?;
    let b = fx.start_on(&fx.reopen().await?, setup("b"), &b_script)?;
    fx.await_observations("stall", 1, WAIT).await?;
    let claimed = b_script.log();
    ensure!(
        claimed.len() == 1 && claimed[0].attempt == 2,
        "B's delivery of the stalled event: {claimed:?}, expected one with attempt 2"
    );
    // A's handler returns now; whatever A does with it must not repeat the effect.
    a_script.release();
    a.stop().await?;
    let more = fx.publish(&[(0, 1)]).await?;
    let seen = fx.await_observations("stall", 2, WAIT).await?;
    b.stop().await?;
    check_in_order(&seen, &[published, more].concat())
}

/// DESIGN 5, stalled recovery: the stalled attempt counts toward the attempts: with 2
/// attempts allowed, B's one failure dead-letters the event with both attempts in its history,
/// and A's late result leaves no effect.
pub async fn stalled_attempt_counts_toward_the_limit<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let a_script = Arc::new(Script::new("a", |_| Action::Hang));
    let b_script = Arc::new(Script::new("b", |_| Action::Fail));
    let setup = |consumer: &str| {
        let options = fast_options(2).with_claim_after(Duration::from_millis(300));
        WorkerSetup::new("stall-limit", consumer).with_options(options)
    };
    let a = fx.start(setup("a"), &a_script)?;
    fx.publish(&[(0, 0)]).await?;
    let b = fx.start_on(&fx.reopen().await?, setup("b"), &b_script)?;
    let dead = eventually("the stalled event's dead letter", WAIT, || async {
        let dead = DeadLetterQueue::list(fx.backend(), Some("stall-limit"), 0, 10).await?;
        Ok(dead.into_iter().next())
    })
    .await?;
    a_script.release();
    a.stop().await?;
    b.stop().await?;
    let history: Vec<_> = dead
        .letter
        .attempts
        .iter()
        .map(|t| (t.number, t.consumer.as_str()))
        .collect();
    ensure!(
        history == [(1, "a"), (2, "b")],
        "attempt history {history:?}"
    );
    ensure!(
        b_script.log().len() == 1,
        "B ran the event {} times",
        b_script.log().len()
    );
    ensure!(
        fx.observations("stall-limit").await?.is_empty(),
        "A's late result took effect"
    );
    Ok(())
}

fn spec(name: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        name: name.to_owned(),
        types: vec![AttendanceMarked::NAME.to_owned()],
        ordered: true,
        start: StartFrom::Beginning,
    }
}

/// `consumer`'s lease on `partition`, once it holds one.
async fn await_lease<H: Harness>(
    fx: &Fixture<H>,
    consumer: &str,
    partition: u32,
    options: LeaseOptions,
) -> anyhow::Result<Lease> {
    let consumer = ConsumerId(consumer.to_owned());
    eventually("the lease to move", WAIT, || async {
        let leases = fx
            .backend()
            .rebalance("fenced", &consumer, options, &[])
            .await?;
        Ok(leases.into_iter().find(|l| l.partition == partition))
    })
    .await
}

fn handled<H: Harness>(h: &H, event: &Published, seq: u64) -> Settlement<crate::Work<H>> {
    Settlement {
        position: event.position,
        seq,
        event_id: event.id.clone(),
        requeue_id: None,
        outcome: Outcome::Handled {
            work: Some(h.record("fenced", &key(event.key), event.seq, &event.id)),
            caused: Vec::new(),
        },
    }
}

/// DESIGN 5, leases: once a lease moved, a settlement with the old epoch fails with
/// `Conflict` and commits nothing; the new owner's delivery count includes the lost attempt.
pub async fn settlement_with_a_stale_lease_is_rejected<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    fx.backend().register(&spec("fenced")).await?;
    let published = fx.publish(&[(0, 0)]).await?;
    let partition = partition_of(&key(0), fx.backend().partitions());
    let short = LeaseOptions {
        ttl: Duration::from_millis(600),
        ..test_lease()
    };
    let old = await_lease(&fx, "old", partition, short).await?;
    let fetched = super::fetch_at_least(&fx, &old, 1).await?;
    ensure!(
        fetched.len() == 1 && fetched[0].delivery_count == 1,
        "{fetched:?}"
    );
    let new = await_lease(&fx, "new", partition, test_lease()).await?;
    ensure!(
        new.epoch > old.epoch,
        "epochs: old {}, new {}",
        old.epoch,
        new.epoch
    );
    let stale = fx.backend().settle(
        &old,
        vec![handled(&*h, &published[0], fetched[0].seq)],
        fetched[0].seq,
    );
    ensure!(
        matches!(stale.await, Err(Error::Conflict { .. })),
        "a stale lease settled"
    );
    ensure!(
        fx.observations("fenced").await?.is_empty(),
        "the stale settlement left an effect"
    );
    let again = super::fetch_at_least(&fx, &new, 1).await?;
    let redelivered = again.first().context("redelivery to the new owner")?;
    let count = redelivered.delivery_count;
    ensure!(
        count == 2,
        "delivery count after the lease moved: {count}, expected 2"
    );
    let results = fx.backend().settle(
        &new,
        vec![handled(&*h, &published[0], redelivered.seq)],
        redelivered.seq,
    );
    ensure!(results.await?.iter().all(Result::is_ok));
    check_in_order(&fx.observations("fenced").await?, &published)
}

/// DESIGN 5, ordering: several workers on the same storage share a subscription's
/// partitions: after a few waves of events, each worker serves its own set of partitions; the
/// keys stay in order throughout.
pub async fn workers_share_partitions<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let scripts: Vec<_> = (0..3)
        .map(|i| Arc::new(Script::recording(format!("w{i}"))))
        .collect();
    let mut running = Vec::new();
    for (i, script) in scripts.iter().enumerate() {
        let setup = WorkerSetup::new("shared", &format!("w{i}"));
        running.push(fx.start_on(&fx.reopen().await?, setup, script)?);
    }
    let partitions = fx.backend().partitions();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut published = Vec::new();
    loop {
        let first = published.len() as u64;
        published.extend(fx.publish(&round_robin(64, first, 64)).await?);
        fx.await_observations("shared", published.len(), WAIT)
            .await?;
        if shared_disjointly(&scripts, first, partitions) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the workers never shared the partitions"
        );
    }
    for r in running {
        r.stop().await?;
    }
    check_in_order(&fx.observations("shared").await?, &published)
}

/// Whether every worker handled events from `from` on, and no partition was served by two.
fn shared_disjointly(scripts: &[Arc<Script>], from: u64, partitions: u32) -> bool {
    let served: Vec<BTreeSet<u32>> = scripts
        .iter()
        .map(|script| {
            let log = script.log();
            let wave = log.iter().filter(|c| c.seq >= from);
            wave.map(|c| partition_of(&c.key, partitions)).collect()
        })
        .collect();
    let total: usize = served.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = served.iter().flatten().copied().collect();
    served.iter().all(|s| !s.is_empty()) && union.len() == total
}
