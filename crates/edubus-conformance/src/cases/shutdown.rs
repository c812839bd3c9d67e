//! Graceful shutdown: drain in-flight work within the grace period, leave the rest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;

use super::WAIT;
use crate::check::{check_in_order, eventually};
use crate::fixture::{Fixture, WorkerSetup};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// A script whose handler hangs on seq 0 and records everything else.
fn hanging_on_first(worker: &str) -> Arc<Script> {
    Arc::new(Script::new(worker, |call| match call.seq {
        0 => Action::Hang,
        _ => Action::Record,
    }))
}

/// Waits until `script` is stuck in seq 0 and `count` effects of `subscription` committed.
async fn await_stuck<H: Harness>(
    fx: &Fixture<H>,
    script: &Script,
    subscription: &str,
    count: usize,
) -> anyhow::Result<()> {
    fx.await_observations(subscription, count, WAIT).await?;
    eventually("the handler of seq 0 to be running", WAIT, || async {
        Ok(script.log().iter().any(|c| c.seq == 0).then_some(()))
    })
    .await
}

/// DESIGN 5, shutdown: a handler still running when shutdown is requested finishes within the
/// grace period, is settled (never redelivered), and `run` returns `Ok`.
pub async fn shutdown_settles_in_flight_work<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let first = hanging_on_first("first");
    let mut running = fx.start(WorkerSetup::new("drain", "first"), &first)?;
    let mut published = fx.publish(&[(0, 0), (1, 1)]).await?;
    await_stuck(&fx, &first, "drain", 1).await?;
    running.request_stop();
    ensure!(
        !running.is_finished(),
        "run returned while a handler was running"
    );
    first.release();
    running.stop().await?;
    ensure!(
        fx.observations("drain").await?.len() == 2,
        "the drained event was not settled"
    );
    let next = Arc::new(Script::recording("next"));
    let running = fx.start(WorkerSetup::new("drain", "next"), &next)?;
    published.extend(fx.publish(&[(0, 2)]).await?);
    let seen = fx.await_observations("drain", 3, WAIT).await?;
    running.stop().await?;
    ensure!(
        next.log().iter().all(|c| c.seq == 2),
        "redelivered: {:?}",
        next.log()
    );
    check_in_order(&seen, &published)
}

/// DESIGN 5, shutdown: a handler still running when the grace period ends is abandoned
/// unsettled, `run` returns `Ok`, and the next worker handles the event.
pub async fn shutdown_leaves_work_past_grace_to_the_next_worker<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let stuck = hanging_on_first("stuck");
    let setup = WorkerSetup::new("grace", "stuck").with_grace(Duration::from_millis(200));
    let running = fx.start(setup, &stuck)?;
    let published = fx.publish(&[(0, 0), (1, 1)]).await?;
    await_stuck(&fx, &stuck, "grace", 1).await?;
    tokio::time::timeout(WAIT, running.stop()).await??;
    ensure!(
        fx.observations("grace").await?.len() == 1,
        "the abandoned event was settled"
    );
    let next = Arc::new(Script::recording("next"));
    let running = fx.start(WorkerSetup::new("grace", "next"), &next)?;
    let seen = fx.await_observations("grace", 2, WAIT).await?;
    running.stop().await?;
    check_in_order(&seen, &published)
}
