//! Cases with real worker processes: SIGKILL mid-batch, a crash before settlement, leases of
//! a dead process, and three processes under random failures.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;

use super::{WAIT, round_robin, worker_binary};
use crate::check::{check_in_order, eventually_every};
use crate::events::Published;
use crate::fixture::{Fixture, WorkerSetup};
use crate::harness::Harness;
use crate::process::{WorkerArgs, WorkerProcess};
use crate::script::{CRASH_EXIT_CODE, Script};

/// Waits until at least `count` distinct events have observations, polling cheaply.
async fn await_count<H: Harness>(
    fx: &Fixture<H>,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let what = format!("observations of {count} events");
    let every = Duration::from_millis(100);
    eventually_every(&what, timeout, every, || async {
        let seen = fx.harness.observed_events(&fx.storage).await?;
        Ok((seen >= count).then_some(seen))
    })
    .await
}

/// Checks the whole storage: every published event recorded once, per key in publish order.
async fn check_all<H: Harness>(fx: &Fixture<H>, published: &[Published]) -> anyhow::Result<()> {
    check_in_order(&fx.harness.observations(&fx.storage).await?, published)
}

/// Stops a worker process with SIGTERM and checks it exited 0.
async fn terminate(process: WorkerProcess) -> anyhow::Result<()> {
    let status = process.terminate(WAIT).await?;
    ensure!(
        status.success(),
        "a worker stopped by SIGTERM exited with {status}"
    );
    Ok(())
}

/// DESIGN 5, at least once + effectively once: a worker killed with SIGKILL while handlers
/// run loses nothing, and the process that finishes the stream repeats no effect.
pub async fn sigkill_mid_batch_loses_and_repeats_nothing<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let binary = worker_binary(&*h)?;
    let published = fx.publish(&round_robin(12, 0, 1200)).await?;
    let mut args = WorkerArgs::new(h.spec(&fx.storage), "sigkill");
    (args.keys, args.delay_ms, args.hang_on_key) = (12, 5, Some(11));
    let first = WorkerProcess::spawn(&binary, &args)?;
    await_count(&fx, 300, WAIT).await?;
    // Key 11's handler never returns, so handlers are running when the kill lands.
    first.kill()?;
    let at_kill = h.observed_events(&fx.storage).await?;
    ensure!(at_kill < 1200, "the stream was finished before the kill");
    (args.delay_ms, args.hang_on_key) = (0, None);
    let second = WorkerProcess::spawn(&binary, &args)?;
    await_count(&fx, 1200, WAIT).await?;
    terminate(second).await?;
    check_all(&fx, &published).await
}

/// DESIGN 5, at least once: a process that dies inside a handler (before settlement) gets
/// that event redelivered to the next process, which records it once.
pub async fn crash_before_settlement_redelivers<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let binary = worker_binary(&*h)?;
    let published = fx.publish(&round_robin(2, 0, 20)).await?;
    let mut args = WorkerArgs::new(h.spec(&fx.storage), "crash");
    (args.keys, args.exit_after) = (2, Some(5));
    let mut first = WorkerProcess::spawn(&binary, &args)?;
    let status = first.wait(WAIT).await?;
    ensure!(
        status.code() == Some(CRASH_EXIT_CODE),
        "the crashing worker exited with {status}"
    );
    let at_crash = h.observed_events(&fx.storage).await?;
    ensure!(
        at_crash <= 5,
        "{at_crash} effects recorded by 5 handler calls"
    );
    args.exit_after = None;
    let second = WorkerProcess::spawn(&binary, &args)?;
    await_count(&fx, 20, WAIT).await?;
    terminate(second).await?;
    check_all(&fx, &published).await
}

/// DESIGN 5, leases: the leases of a process killed with SIGKILL expire and move to a live
/// worker, which delivers what was published after the death.
pub async fn dead_process_leases_expire_and_move<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let binary = worker_binary(&*h)?;
    let mut published = fx.publish(&round_robin(64, 0, 64)).await?;
    let mut args = WorkerArgs::new(h.spec(&fx.storage), "expiry");
    (args.keys, args.consumer) = (64, Some("doomed".into()));
    let doomed = WorkerProcess::spawn(&binary, &args)?;
    // Keys 0..64 cover every partition, so the process held every lease it needed.
    await_count(&fx, 64, WAIT).await?;
    doomed.kill()?;
    published.extend(fx.publish(&round_robin(64, 64, 64)).await?);
    let heir = Arc::new(Script::recording("heir"));
    let running = fx.start(WorkerSetup::new("expiry", "heir"), &heir)?;
    await_count(&fx, 128, WAIT).await?;
    running.stop().await?;
    ensure!(
        heir.log().iter().all(|call| call.seq >= 64),
        "the heir re-ran an event the dead process had settled"
    );
    check_all(&fx, &published).await
}

/// The load case: 3 worker processes, 1,000 keys, [`Harness::load_events`] events
/// (100,000 by default) published before and while they run, 5% random transient failures: every key's effects in publish order,
/// each exactly once, none missing.
pub async fn three_processes_keep_key_order_under_failures<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    const KEYS: u64 = 1000;
    const BATCH: u64 = 1000;
    let events = h.load_events();
    let fx = Fixture::new(&h).await?;
    let binary = worker_binary(&*h)?;
    let mut rng = fastrand::Rng::with_seed(2024);
    let mut batch = |first: u64| -> Vec<(u64, u64)> {
        (first..first + BATCH)
            .map(|seq| (rng.u64(0..KEYS), seq))
            .collect()
    };
    let mut published = Vec::new();
    for first in (0..events / 5).step_by(BATCH as usize) {
        published.extend(fx.publish(&batch(first)).await?);
    }
    let mut workers = Vec::new();
    for seed in 1..=3 {
        let mut args = WorkerArgs::new(h.spec(&fx.storage), "load");
        (args.keys, args.fail_rate, args.seed, args.attempts) = (KEYS, 0.05, seed, 40);
        workers.push(WorkerProcess::spawn(&binary, &args)?);
    }
    for first in (events / 5..events).step_by(BATCH as usize) {
        published.extend(fx.publish(&batch(first)).await?);
    }
    await_count(&fx, events, Duration::from_secs(300)).await?;
    for worker in workers {
        terminate(worker).await?;
    }
    check_all(&fx, &published).await
}
