//! The conformance cases, one `async fn` each, generic over the [`Harness`]; `suite!`
//! turns each into a `#[test]`. Every point of DESIGN section 5 is covered.

mod dlq;
mod effects;
mod inbox;
mod leases;
mod ordering;
mod process;
mod retention;
mod shutdown;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub use dlq::{
    dlq_replay_reaches_only_its_subscription,
    invalid_and_undecodable_events_are_dead_lettered_at_once,
    poison_event_is_dead_lettered_after_its_attempts,
};
pub use effects::{
    caused_events_exist_only_if_handled, transient_failure_is_settled_once_after_success,
    work_and_caused_events_commit_atomically,
};
pub use inbox::{
    inbox_skips_redelivery_after_graceful_handover, inbox_skips_redelivery_after_lease_expiry,
};
pub use leases::{
    settlement_with_a_stale_lease_is_rejected, stalled_attempt_counts_toward_the_limit,
    stalled_delivery_is_claimed_with_its_delivery_count, workers_share_partitions,
};
pub use ordering::{
    property_key_order_and_exactly_once, retrying_key_blocks_only_that_key,
    unordered_subscription_delivers_everything,
};
pub use process::{
    crash_before_settlement_redelivers, dead_process_leases_expire_and_move,
    sigkill_mid_batch_loses_and_repeats_nothing, three_processes_keep_key_order_under_failures,
};
pub use retention::trim_keeps_what_a_subscription_has_not_settled;
pub use shutdown::{
    shutdown_leaves_work_past_grace_to_the_next_worker, shutdown_settles_in_flight_work,
};

use crate::harness::Harness;

/// How long a case waits for something that should happen within a second or two.
const WAIT: Duration = Duration::from_secs(30);

/// The worker binary, which multi-process cases need.
fn worker_binary<H: Harness>(harness: &H) -> anyhow::Result<PathBuf> {
    harness
        .worker_binary()
        .context("this case starts worker processes: the harness must name the worker binary")
}

/// `(key, seq)` pairs: `count` events with seq from `first`, keys taken round-robin.
fn round_robin(keys: u64, first: u64, count: u64) -> Vec<(u64, u64)> {
    (first..first + count)
        .map(|seq| (seq % keys, seq))
        .collect()
}

/// Fetches from `lease` until at least `n` deliveries came (a transport fed by a relay sees
/// published events a moment later), within [`WAIT`].
async fn fetch_at_least<H: crate::harness::Harness>(
    fx: &crate::fixture::Fixture<H>,
    lease: &edubus_core::Lease,
    n: usize,
) -> anyhow::Result<Vec<edubus_core::Delivery>> {
    use edubus_core::Transport as _;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got: Vec<edubus_core::Delivery> = Vec::new();
    while got.len() < n {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "fetched {} deliveries, expected {n}",
            got.len()
        );
        let after = got.last().map_or(lease.cursor, |d| d.seq);
        got.extend(fx.backend().fetch(lease, after, 0, 10).await?.deliveries);
    }
    Ok(got)
}
