//! Faults of the production deployment's servers: Redis restarted mid-stream with AOF on, and
//! PostgreSQL restarted under a running relay. Every acknowledged event is handled, exactly
//! once, and the workers and relay resume by themselves.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use edubus_conformance::events::{mark, seq_of};
use edubus_conformance::fixture::{bus, fast_options, test_lease};
use edubus_conformance::harness::Harness;
use edubus_conformance::production::{ProductionHarness, ProductionStorage};
use edubus_events::AttendanceMarked;
use edubus_runtime::{HandlerError, Worker};
use edubus_testsupport::{PgOptions, PgServer, RedisOptions, RedisServer};

const EVENTS: u64 = 2_000;
const KEYS: u64 = 50;

/// Publishes `EVENTS` events in batches, calling `fault` once halfway, while a worker records
/// each event's effect transactionally; then checks every event took effect exactly once.
async fn survives(storage: ProductionStorage, fault: impl FnOnce()) -> anyhow::Result<()> {
    let harness = Arc::new(ProductionHarness::default());
    let backend = harness.open(&storage).await?;
    let bus = bus(backend)?;
    let h = Arc::clone(&harness);
    let worker = Worker::builder(bus.clone())
        .subscription("faults", fast_options(100))
        .on::<AttendanceMarked, _, _>(move |event, ctx| {
            let h = Arc::clone(&h);
            async move {
                let id = ctx.envelope().id.clone();
                let key = event.student_id.to_string();
                ctx.transaction(h.record("faults", &key, seq_of(&event), &id));
                Ok::<(), HandlerError>(())
            }
        })
        .lease_options(test_lease())
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let mut fault = Some(fault);
    let mut published = 0;
    for batch in 0..EVENTS / 100 {
        if batch == EVENTS / 200
            && let Some(fault) = fault.take()
        {
            tokio::task::block_in_place(fault);
        }
        let envelopes = (0..100)
            .map(|i| {
                let seq = batch * 100 + i;
                bus.envelope(&mark(seq % KEYS, seq))
            })
            .collect::<edubus_core::Result<Vec<_>>>()?;
        // A publish refused while a server is down was not acknowledged: try it again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match bus.publish_batch(envelopes.clone()).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("publish refused during the fault: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).context("publishing after the fault"),
            }
        }
        published += 100;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let seen = harness.observed_events(&storage).await?;
        if seen >= published {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {seen} of {published} acknowledged events were handled after the fault"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    running.await??;
    let observations = harness.observations(&storage).await?;
    ensure!(
        observations.len() as u64 == published,
        "{} effects for {published} events: some event took effect twice",
        observations.len()
    );
    let mut last = std::collections::HashMap::new();
    for o in &observations {
        let before = last.insert(o.key.clone(), o.seq);
        ensure!(
            before.is_none_or(|b| b < o.seq),
            "key {} handled out of order: {before:?} then {}",
            o.key,
            o.seq
        );
    }
    Ok(())
}

fn run(test: impl std::future::Future<Output = anyhow::Result<()>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = runtime.block_on(test) {
        panic!("{e:#}");
    }
}

#[test]
fn redis_restarted_mid_stream_loses_no_acknowledged_event() {
    let mut redis = RedisServer::start_with(RedisOptions::default().with_append_only(true));
    run(async {
        let schema = edubus_testsupport::postgres().schema("redis_restart").await;
        let storage = ProductionStorage {
            pg_url: schema.url().to_owned(),
            redis_url: redis.url(),
            prefix: edubus_testsupport::unique_prefix("redis_restart"),
        };
        survives(storage, || redis.restart()).await
    });
}

#[test]
fn postgres_restarted_under_the_relay_loses_no_acknowledged_event() {
    let mut pg = PgServer::start_with(PgOptions::default().with_fsync(true));
    run(async {
        let schema = pg.schema("pg_restart").await;
        let storage = ProductionStorage {
            pg_url: schema.url().to_owned(),
            redis_url: edubus_testsupport::redis().url(),
            prefix: edubus_testsupport::unique_prefix("pg_restart"),
        };
        survives(storage, || pg.restart()).await
    });
}
