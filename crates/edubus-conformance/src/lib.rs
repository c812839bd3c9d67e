#![doc = include_str!("../README.md")]

pub mod cases;
pub mod check;
pub mod events;
pub mod fixture;
pub mod harness;
pub mod process;
pub mod production;
pub mod script;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use harness::{AuditRecord, Backend, Harness, Observation, Work};

/// No case may run longer than this.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(150);

/// Runs one case on a fresh multi-thread runtime; panics with the case's error.
pub fn run<H, F, Fut>(harness: H, case: F)
where
    H: Harness,
    F: FnOnce(Arc<H>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the case");
    let outcome = runtime
        .block_on(async { tokio::time::timeout(CASE_TIMEOUT, case(Arc::new(harness))).await });
    // Hung handlers of a case are abandoned, not awaited.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("{error:#}"),
        Err(_) => panic!("the case did not finish within {CASE_TIMEOUT:?}"),
    }
}

/// Expands to one `#[test]` per conformance case, each on a new harness from `$harness`.
///
/// ```text
/// edubus_conformance::suite!(SqliteHarness::new(env!("CARGO_BIN_EXE_edubus-conformance-worker")));
/// ```
#[macro_export]
macro_rules! suite {
    ($harness:expr) => {
        $crate::__cases!($harness;
            sigkill_mid_batch_loses_and_repeats_nothing,
            three_processes_keep_key_order_under_failures,
            poison_event_is_dead_lettered_after_its_attempts,
            invalid_and_undecodable_events_are_dead_lettered_at_once,
            stalled_delivery_is_claimed_with_its_delivery_count,
            stalled_attempt_counts_toward_the_limit,
            settlement_with_a_stale_lease_is_rejected,
            dlq_replay_reaches_only_its_subscription,
            shutdown_settles_in_flight_work,
            shutdown_leaves_work_past_grace_to_the_next_worker,
            retrying_key_blocks_only_that_key,
            transient_failure_is_settled_once_after_success,
            crash_before_settlement_redelivers,
            inbox_skips_redelivery_after_lease_expiry,
            inbox_skips_redelivery_after_graceful_handover,
            dead_process_leases_expire_and_move,
            workers_share_partitions,
            unordered_subscription_delivers_everything,
            caused_events_exist_only_if_handled,
            work_and_caused_events_commit_atomically,
            trim_keeps_what_a_subscription_has_not_settled,
            property_key_order_and_exactly_once,
        );
    };
}

/// One `#[test]` per named case of [`cases`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run($harness, $crate::cases::$case);
            }
        )*
    };
}
