//! At-least-once settlement, caused events and the atomicity of transactional work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, ensure};
use edubus_core::{DeliveryState, EventStore, ReadQuery, Recorded, Transport};
use edubus_events::{AttendanceThresholdBreached, Event as _};

use super::WAIT;
use crate::check::{check_in_order, eventually};
use crate::events::{key, mark};
use crate::fixture::{Fixture, SOURCE, WorkerSetup, fast_options};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// What `subscription` did with the event `id`; `None` while the subscription is not registered.
async fn state_of<H: Harness>(
    fx: &Fixture<H>,
    subscription: &str,
    id: &str,
) -> anyhow::Result<Option<DeliveryState>> {
    let event = EventStore::get(fx.backend(), id)
        .await?
        .context("the event")?;
    let states = fx.backend().states(&[event]).await?;
    let state = states
        .into_iter()
        .flatten()
        .find(|(s, _)| s == subscription);
    Ok(state.map(|(_, state)| state))
}

/// DESIGN 5, at least once: while its handler fails the event stays unsettled with its failed
/// attempts counted; once the handler succeeds it is settled and recorded exactly once.
pub async fn transient_failure_is_settled_once_after_success<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let failing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&failing);
    let script = Arc::new(Script::new("w", move |call| {
        match call.seq == 0 && flag.load(Ordering::SeqCst) {
            true => Action::Fail,
            false => Action::Record,
        }
    }));
    let setup = WorkerSetup::new("transient", "w").with_options(fast_options(1000));
    let running = fx.start(setup, &script)?;
    let published = fx.publish(&[(0, 0), (0, 1), (1, 2)]).await?;
    eventually("two failed attempts recorded", WAIT, || async {
        // None until the worker has registered the subscription.
        let state = state_of(&fx, "transient", &published[0].id).await?;
        Ok(
            matches!(state, Some(DeliveryState::Pending { attempts }) if attempts >= 2)
                .then_some(()),
        )
    })
    .await?;
    let early = fx.observations("transient").await?;
    ensure!(
        early.iter().all(|o| o.seq == 2),
        "recorded while failing: {early:?}"
    );
    ensure!(
        script.log().iter().all(|c| c.seq != 1),
        "key 0's next event ran early"
    );
    failing.store(false, Ordering::SeqCst);
    let seen = fx.await_observations("transient", 3, WAIT).await?;
    running.stop().await?;
    check_in_order(&seen, &published)?;
    let state = state_of(&fx, "transient", &published[0].id).await?;
    ensure!(
        state == Some(DeliveryState::Handled),
        "state after success: {state:?}"
    );
    let attempts = fx
        .backend()
        .failures("transient", published[0].position)
        .await?;
    ensure!(
        attempts.is_empty(),
        "failures kept after settlement: {attempts:?}"
    );
    Ok(())
}

/// The caused events in the log, oldest first.
async fn caused<H: Harness>(fx: &Fixture<H>) -> anyhow::Result<Vec<Recorded>> {
    let query = ReadQuery {
        types: vec![AttendanceThresholdBreached::NAME.to_owned()],
        ..ReadQuery::default()
    };
    Ok(fx.backend().read(query).await?)
}

/// Causation id, correlation id and key of a caused event.
fn link(caused: &Recorded) -> (String, String, String) {
    let env = &caused.envelope;
    let causation = env.causationid.clone().unwrap_or_default();
    (
        causation,
        env.correlation_id().to_owned(),
        caused.key.clone(),
    )
}

/// DESIGN 3 and 6: `publish_caused` events carry the cause's correlation id and its id as
/// causation id, and exist only for handlings that succeeded.
pub async fn caused_events_exist_only_if_handled<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let script = Arc::new(
        Script::new("w", |call| match (call.seq, call.attempt) {
            (0, 1) => Action::Fail,
            (1, _) => Action::Reject,
            _ => Action::Record,
        })
        .with_caused_events(),
    );
    let root = fx
        .bus
        .envelope(&mark(0, 0))?
        .with_correlation_id("course-42");
    let first = fx.bus.publish_envelope(root).await?;
    let rest = fx.publish(&[(1, 1), (2, 2)]).await?;
    let running = fx.start(WorkerSetup::new("causes", "w"), &script)?;
    fx.await_observations("causes", 2, WAIT).await?;
    eventually("the rejected event's dead letter", WAIT, || async {
        let dead = edubus_core::DeadLetterQueue::list(fx.backend(), None, 0, 10).await?;
        Ok((!dead.is_empty()).then_some(()))
    })
    .await?;
    running.stop().await?;
    let caused = caused(&fx).await?;
    let mut links: Vec<_> = caused.iter().map(link).collect();
    links.sort_by(|a, b| a.2.cmp(&b.2));
    let expected = [
        (first.id.clone(), "course-42".to_owned(), key(0)),
        (rest[1].id.clone(), rest[1].id.clone(), key(2)),
    ];
    ensure!(
        links == expected,
        "caused events (causation, correlation, key): {links:?}"
    );
    ensure!(caused.iter().all(|r| r.envelope.source == SOURCE));
    Ok(())
}

/// DESIGN 5, effectively once: work that fails inside the settlement's transaction rolls back
/// with the caused events staged beside it; the retry commits both exactly once.
pub async fn work_and_caused_events_commit_atomically<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let script = Arc::new(
        Script::new("w", |call| match call.attempt {
            1 => Action::FailWork,
            _ => Action::Record,
        })
        .with_caused_events(),
    );
    let published = fx.publish(&[(0, 0)]).await?;
    let running = fx.start(WorkerSetup::new("atomic", "w"), &script)?;
    let seen = fx.await_observations("atomic", 1, WAIT).await?;
    running.stop().await?;
    check_in_order(&seen, &published)?;
    let attempts: Vec<u32> = script.log().iter().map(|c| c.attempt).collect();
    ensure!(
        attempts == [1, 2],
        "handler attempts {attempts:?}, expected [1, 2]"
    );
    let caused = caused(&fx).await?;
    ensure!(
        caused.len() == 1 && caused[0].envelope.causationid.as_deref() == Some(&published[0].id),
        "{} caused events for one successful handling",
        caused.len()
    );
    Ok(())
}
