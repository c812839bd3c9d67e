//! Retention: trimming never removes what a subscription still needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::ensure;
use edubus_core::{DeliveryState, EventStore, StartFrom, SubscriptionSpec, Transport};
use edubus_events::{AttendanceMarked, Event as _};
use jiff::{SignedDuration, Timestamp};

use super::{WAIT, round_robin};
use crate::check::{check_in_order, eventually};
use crate::fixture::{Fixture, WorkerSetup, fast_options};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// `Transport::trim` with a cut-off in the future: everything old enough goes if it may.
async fn trim_all<H: Harness>(fx: &Fixture<H>) -> anyhow::Result<u64> {
    let before = Timestamp::now().checked_add(SignedDuration::from_hours(1))?;
    Ok(fx.backend().trim(before).await?)
}

/// DESIGN 5, retention: `trim` removes nothing a registered subscription has not settled
/// (neither events it never fetched nor one it keeps failing), and trims what all settled.
pub async fn trim_keeps_what_a_subscription_has_not_settled<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let slow_spec = SubscriptionSpec {
        name: "slow".into(),
        types: vec![AttendanceMarked::NAME.to_owned()],
        ordered: true,
        start: StartFrom::Beginning,
    };
    fx.backend().register(&slow_spec).await?;
    let published = fx.publish(&round_robin(4, 0, 20)).await?;
    let fast = fx.start(
        WorkerSetup::new("fast", "f"),
        &Arc::new(Script::recording("f")),
    )?;
    fx.await_observations("fast", 20, WAIT).await?;
    let removed = trim_all(&fx).await?;
    ensure!(
        removed == 0,
        "trim removed {removed} entries `slow` never fetched"
    );
    let hold = Arc::new(AtomicBool::new(true));
    let held = Arc::clone(&hold);
    let slow_script = Arc::new(Script::new("s", move |call| {
        match call.seq == 19 && held.load(Ordering::SeqCst) {
            true => Action::Fail,
            false => Action::Record,
        }
    }));
    let setup = WorkerSetup::new("slow", "s").with_options(fast_options(100_000));
    let slow = fx.start(setup, &slow_script)?;
    fx.await_observations("slow", 19, WAIT).await?;
    let last = &published[19];
    eventually("the last event to be failing", WAIT, || async {
        let event = fx.backend().get(&last.id).await?;
        let states = fx
            .backend()
            .states(&event.into_iter().collect::<Vec<_>>())
            .await?;
        let failing = states.iter().flatten().any(|(sub, state)| {
            sub == "slow" && matches!(state, DeliveryState::Pending { attempts } if *attempts > 0)
        });
        Ok(failing.then_some(()))
    })
    .await?;
    let removed = trim_all(&fx).await?;
    ensure!(
        removed > 0,
        "trim removed nothing although both subscriptions settled 19 events"
    );
    ensure!(
        fx.backend().get(&last.id).await?.is_some(),
        "trim removed a failing delivery"
    );
    hold.store(false, Ordering::SeqCst);
    let seen = fx.await_observations("slow", 20, WAIT).await?;
    check_in_order(&seen, &published)?;
    let more = fx.publish(&round_robin(4, 20, 4)).await?;
    for sub in ["fast", "slow"] {
        check_in_order(
            &fx.await_observations(sub, 24, WAIT).await?,
            &[&published[..], &more].concat(),
        )?;
    }
    fast.stop().await?;
    slow.stop().await
}
