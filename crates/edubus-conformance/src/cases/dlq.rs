//! Dead letters: exhausted attempts, invalid and undecodable events, replay and purge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, ensure};
use edubus_core::{
    DeadLetterEntry, DeadLetterQueue, DeadReason, EventStore, Transport, partition_of,
};

use super::{WAIT, round_robin};
use crate::check::{check_in_order, eventually};
use crate::events::{Published, invalid_append, key};
use crate::fixture::{Fixture, WorkerSetup, fast_options};
use crate::harness::Harness;
use crate::script::{Action, Script};

/// Waits until `subscription`'s dead-letter queue holds `count` entries; returns them.
async fn await_dead<H: Harness>(
    fx: &Fixture<H>,
    subscription: &str,
    count: usize,
) -> anyhow::Result<Vec<DeadLetterEntry>> {
    let what = format!("{count} dead letters in `{subscription}`");
    eventually(&what, WAIT, || async {
        let entries = DeadLetterQueue::list(fx.backend(), Some(subscription), 0, 100).await?;
        Ok((entries.len() >= count).then_some(entries))
    })
    .await
}

/// Checks that a dead letter names its event's origin: stream, partition, position, handler.
fn check_origin<H: Harness>(
    fx: &Fixture<H>,
    entry: &DeadLetterEntry,
    event: &Published,
) -> anyhow::Result<()> {
    let letter = &entry.letter;
    let partition = partition_of(&key(event.key), fx.backend().partitions());
    let origin = (letter.stream.as_str(), letter.partition, letter.position);
    ensure!(
        origin == ("attendance.marked", partition, event.position),
        "dead letter origin {origin:?}, expected the event's stream, partition {partition} \
         and position {}",
        event.position
    );
    ensure!(letter.event_id == event.id && letter.event_type == "attendance.marked");
    ensure!(
        letter.handler.contains(&letter.subscription) && letter.handler.contains("attendance"),
        "dead letter handler `{}` does not name the subscription's handler",
        letter.handler
    );
    Ok(())
}

/// DESIGN 5, dead letters: a poison event goes to the DLQ after exactly N attempts with its
/// error, attempt history, handler and origin, while other keys keep flowing.
pub async fn poison_event_is_dead_lettered_after_its_attempts<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let published = fx.publish(&round_robin(8, 0, 40)).await?;
    let script = Arc::new(Script::new("w", |call| match call.seq {
        0 => Action::Fail,
        _ => Action::Record,
    }));
    let setup = WorkerSetup::new("poison", "w").with_options(fast_options(3));
    let running = fx.start(setup, &script)?;
    let dead = await_dead(&fx, "poison", 1).await?;
    let rest = &published[1..];
    let seen = fx.await_observations("poison", rest.len(), WAIT).await?;
    running.stop().await?;
    check_in_order(&seen, rest)?;
    let letter = &dead[0].letter;
    check_origin(&fx, &dead[0], &published[0])?;
    let numbers: Vec<u32> = letter.attempts.iter().map(|a| a.number).collect();
    ensure!(
        letter.reason == DeadReason::Exhausted,
        "reason {:?}",
        letter.reason
    );
    ensure!(
        numbers == [1, 2, 3],
        "attempt history {numbers:?}, expected [1, 2, 3]"
    );
    ensure!(
        letter.error.contains("scripted transient failure"),
        "{}",
        letter.error
    );
    let calls = script.log().iter().filter(|c| c.seq == 0).count();
    ensure!(
        calls == 3,
        "the poison handler ran {calls} times, expected 3"
    );
    Ok(())
}

/// DESIGN 5, dead letters: an event appended past the bus's validation goes to the DLQ at
/// once: `SchemaInvalid` where the subscription validates, `Undecodable` where it does not.
pub async fn invalid_and_undecodable_events_are_dead_lettered_at_once<H: Harness>(
    h: Arc<H>,
) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let mut published = fx.publish(&round_robin(4, 0, 8)).await?;
    let bad = fx.backend().append(vec![invalid_append(0, 8)?]).await?;
    published.extend(fx.publish(&round_robin(4, 9, 8)).await?);
    let raw = fast_options(5);
    let raw = edubus_runtime::SubscriptionOptions {
        validate: false,
        ..raw
    };
    let checked = Arc::new(Script::recording("checked"));
    let unchecked = Arc::new(Script::recording("raw"));
    let a = fx.start(WorkerSetup::new("checked", "a"), &checked)?;
    let b = fx.start(WorkerSetup::new("raw", "b").with_options(raw), &unchecked)?;
    for (sub, reason) in [
        ("checked", DeadReason::SchemaInvalid),
        ("raw", DeadReason::Undecodable),
    ] {
        let seen = fx.await_observations(sub, published.len(), WAIT).await?;
        check_in_order(&seen, &published)?;
        let dead = await_dead(&fx, sub, 1).await?;
        let letter = &dead[0].letter;
        ensure!(dead.len() == 1 && letter.event_id == bad[0].id, "{dead:?}");
        ensure!(letter.reason == reason, "{sub}: reason {:?}", letter.reason);
        ensure!(letter.attempts.len() <= 1, "{sub}: {:?}", letter.attempts);
    }
    a.stop().await?;
    b.stop().await?;
    let ran = [checked.log(), unchecked.log()].concat();
    ensure!(
        ran.iter().all(|c| c.seq != 8),
        "a handler ran on the invalid event"
    );
    Ok(())
}

/// DESIGN 5, dead letters: replaying one subscription's entry redelivers to that subscription
/// only, marked `replay`; replay and purge are recorded in the audit trail.
pub async fn dlq_replay_reaches_only_its_subscription<H: Harness>(h: Arc<H>) -> anyhow::Result<()> {
    let fx = Fixture::new(&h).await?;
    let cured = Arc::new(AtomicBool::new(false));
    let script = |name: &str| {
        let cured = Arc::clone(&cured);
        Arc::new(Script::new(name, move |call| {
            match call.seq == 0 && !cured.load(Ordering::SeqCst) {
                true => Action::Reject,
                false => Action::Record,
            }
        }))
    };
    let (left, right) = (script("left"), script("right"));
    let workers = [
        fx.start(WorkerSetup::new("left", "l"), &left)?,
        fx.start(WorkerSetup::new("right", "r"), &right)?,
    ];
    let published = fx.publish(&[(0, 0), (1, 1)]).await?;
    let left_dead = await_dead(&fx, "left", 1).await?;
    let right_dead = await_dead(&fx, "right", 1).await?;
    ensure!(left_dead[0].letter.reason == DeadReason::Rejected);
    cured.store(true, Ordering::SeqCst);
    let id = left_dead[0].id;
    ensure!(DeadLetterQueue::replay(fx.backend(), &[id], "conformance").await? == 1);
    let seen = fx.await_observations("left", 2, WAIT).await?;
    ensure!(
        seen.iter()
            .filter(|o| o.event_id == published[0].id)
            .count()
            == 1
    );
    // A later event of the key reaches `right` after anything queued for it before.
    fx.publish(&[(0, 2)]).await?;
    let right_seen = fx.await_observations("right", 2, WAIT).await?;
    ensure!(
        right_seen.iter().all(|o| o.seq != 0),
        "right: {right_seen:?}"
    );
    check_replayed_delivery(&left, &right)?;
    for worker in workers {
        worker.stop().await?;
    }
    check_entries_after_replay(&fx, id, right_dead[0].id).await?;
    check_purge(&fx, id).await
}

/// `left` ran the event again with `replay` set; `right` never ran it twice.
fn check_replayed_delivery(left: &Script, right: &Script) -> anyhow::Result<()> {
    let runs: Vec<_> = left.log().into_iter().filter(|c| c.seq == 0).collect();
    ensure!(
        runs.len() == 2,
        "left ran the poison event {} times",
        runs.len()
    );
    let again = &runs[1];
    ensure!(
        again.replay && again.envelope_replay == Some(true),
        "the replayed delivery is not marked replay: {again:?}"
    );
    let right_runs = right.log().iter().filter(|c| c.seq == 0).count();
    ensure!(
        right_runs == 1,
        "right ran the poison event {right_runs} times"
    );
    Ok(())
}

/// The replayed entry shows when it was replayed; the other subscription's does not.
async fn check_entries_after_replay<H: Harness>(
    fx: &Fixture<H>,
    replayed: u64,
    untouched: u64,
) -> anyhow::Result<()> {
    let get = |id| DeadLetterQueue::get(fx.backend(), id);
    let replayed = get(replayed).await?.context("the replayed entry")?;
    let untouched = get(untouched).await?.context("the other entry")?;
    ensure!(replayed.replayed_at.is_some(), "replayed_at not set");
    ensure!(
        untouched.replayed_at.is_none(),
        "the other entry was replayed"
    );
    Ok(())
}

/// Purging deletes the entry; replay and purge are both in the audit trail.
async fn check_purge<H: Harness>(fx: &Fixture<H>, id: u64) -> anyhow::Result<()> {
    ensure!(DeadLetterQueue::purge(fx.backend(), &[id], "conformance").await? == 1);
    ensure!(DeadLetterQueue::get(fx.backend(), id).await?.is_none());
    let audit = fx.harness.audit(&fx.storage).await?;
    let ours: Vec<&str> = audit
        .iter()
        .filter(|r| r.actor == "conformance")
        .map(|r| r.action.as_str())
        .collect();
    ensure!(
        ours.len() == 2 && ours[0].contains("replay") && ours[1].contains("purge"),
        "audit trail of the actions: {audit:?}"
    );
    Ok(())
}
