//! Ordering: a retrying key blocks only itself, unordered subscriptions deliver everything,
//! and random interleavings with random failures keep every key in order (property test).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, ensure};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{WAIT, round_robin};
use crate::check::{check_exactly_once, check_in_order, eventually};
use crate::events::key;
use crate::fixture::{Fixture, WorkerSetup, fast_options};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// DESIGN 5, retries: while key 0's first event keeps failing and backing off, every other
/// key's events are handled; key 0's later events wait for it, then follow in order.
pub async fn retrying_key_blocks_only_that_key<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let hold = Arc::new(AtomicBool::new(true));
    let held = Arc::clone(&hold);
    let script = Arc::new(Script::new("w", move |call| {
        match call.seq == 0 && held.load(Ordering::SeqCst) {
            true => Action::Fail,
            false => Action::Record,
        }
    }));
    let published = fx.publish(&round_robin(6, 0, 30)).await?;
    let setup = WorkerSetup::new("blocking", "w").with_options(fast_options(100_000));
    let running = fx.start(setup, &script)?;
    let others: Vec<_> = published.iter().filter(|p| p.key != 0).cloned().collect();
    let seen = fx
        .await_observations("blocking", others.len(), WAIT)
        .await?;
    check_in_order(&seen, &others)?;
    eventually("key 0's first event to retry", WAIT, || async {
        Ok((script.log().iter().filter(|c| c.seq == 0).count() >= 3).then_some(()))
    })
    .await?;
    let key0: Vec<_> = script
        .log()
        .into_iter()
        .filter(|c| c.key == key(0))
        .collect();
    ensure!(
        key0.iter().all(|c| c.seq == 0),
        "while its first event retried, key 0 ran {key0:?}"
    );
    hold.store(false, Ordering::SeqCst);
    let seen = fx
        .await_observations("blocking", published.len(), WAIT)
        .await?;
    running.stop().await?;
    check_in_order(&seen, &published)
}

/// DESIGN 5, ordering opt-out: an unordered subscription with random failures still delivers
/// every event, each effect exactly once.
pub async fn unordered_subscription_delivers_everything<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let rng = std::sync::Mutex::new(fastrand::Rng::with_seed(11));
    let script = Arc::new(Script::new("w", move |_| {
        let roll = rng.lock().map(|mut r| r.f64()).unwrap_or(1.0);
        if roll < 0.1 {
            Action::Fail
        } else {
            Action::Record
        }
    }));
    let published = fx.publish(&round_robin(3, 0, 300)).await?;
    let options = fast_options(50).unordered();
    let running = fx.start(
        WorkerSetup::new("loose", "w").with_options(options),
        &script,
    )?;
    let seen = fx
        .await_observations("loose", published.len(), WAIT)
        .await?;
    running.stop().await?;
    check_exactly_once(&seen, &published)
}

/// One generated scenario: events as (key, failures before success), published in up to
/// three batches, the worker starting after the first.
#[derive(Debug, Clone)]
struct Scenario {
    events: Vec<(u64, u32)>,
    cuts: (usize, usize),
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    prop::collection::vec((0u64..4, 0u32..3), 1..30).prop_flat_map(|events| {
        let n = events.len();
        ((0..=n), (0..=n)).prop_map(move |(a, b)| Scenario {
            events: events.clone(),
            cuts: (a.min(b), a.max(b)),
        })
    })
}

async fn play<H: Harness>(h: &Arc<H>, scenario: Scenario) -> anyhow::Result<()> {
    let fx = Fixture::new(h).await?;
    let failures: Vec<u32> = scenario.events.iter().map(|e| e.1).collect();
    let script = Arc::new(Script::new("w", move |call| {
        let fail_first = failures[usize::try_from(call.seq).unwrap_or(usize::MAX)];
        match call.attempt <= fail_first {
            true => Action::Fail,
            false => Action::Record,
        }
    }));
    let all: Vec<(u64, u64)> = scenario
        .events
        .iter()
        .zip(0..)
        .map(|(e, s)| (e.0, s))
        .collect();
    let (a, b) = scenario.cuts;
    let mut published = fx.publish(&all[..a]).await?;
    let running = fx.start(WorkerSetup::new("prop", "w"), &script)?;
    for part in [&all[a..b], &all[b..]] {
        if !part.is_empty() {
            published.extend(fx.publish(part).await?);
        }
    }
    let seen = fx.await_observations("prop", published.len(), WAIT).await?;
    running.stop().await?;
    check_in_order(&seen, &published)
}

/// DESIGN 9, property tests: for random interleavings of keys and failure patterns, each
/// key's effects are recorded in publish order, each exactly once (fresh storage per case).
pub async fn property_key_order_and_exactly_once<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        let config = Config {
            cases: 8,
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config).run(&scenarios(), |scenario| {
            let outcome = runtime.block_on(play(&h, scenario));
            outcome.map_err(|e| TestCaseError::fail(format!("{e:#}")))
        })
    })
    .await?;
    outcome.map_err(|e| anyhow!("{e}"))
}
