//! Relay mode: the events are appended to the PostgreSQL outbox first (not timed), then one
//! outbox relay moves them all to Redis against the clock.

use anyhow::bail;
use edubus_postgres::{Relay, RelayOptions};
use edubus_redis::Production;
use edubus_runtime::Bus;
use tokio::time::Instant;

use super::workload::{self, Target, Workload};
use super::{BenchArgs, Summary, progress};

/// Appends the workload (the outbox fills up, no relay runs), then times a relay with batches
/// of `--batch` events draining it into Redis.
pub async fn measure(
    bus: &Bus<Production>,
    workload: Workload,
    args: &BenchArgs,
) -> anyhow::Result<Summary> {
    let bar = progress::bar(args.events, "appended");
    let appended = workload::publish(
        bus,
        &Target::Store,
        workload.batches,
        args.publishers,
        0.0,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let backend = bus.backend();
    let options = RelayOptions {
        batch: args.batch,
        lanes: args.lanes,
        ..RelayOptions::default()
    };
    let relay = Relay::new(backend.store().clone(), backend.redis().clone(), options);
    let start = Instant::now();
    let relayed = relay.step().await?;
    let seconds = start.elapsed().as_secs_f64();
    if relayed as u64 != args.events {
        bail!(
            "the relay moved {relayed} events, {} were appended",
            args.events
        );
    }
    Ok(Summary {
        publish_seconds: appended.elapsed.as_secs_f64(),
        deliveries: relayed as u64,
        ..super::summary(args, "relay", "", workload.payload_bytes, seconds)
    })
}
