//! A private PostgreSQL cluster restarted (crash-stopped) while appenders and a relay run:
//! both resume, and every acknowledged event is relayed, in per-partition order.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Recorder, appends, assert_first_publications_in_order, config};
use edubus_core::{Append, EventStore};
use edubus_postgres::{PgStore, Relay, RelayOptions};
use edubus_testsupport::{PgOptions, PgServer};
use tokio::sync::oneshot;

/// Appends until acknowledged; an unavailable database is waited for, an idempotent retry of
/// a batch whose commit was lost comes back as duplicates.
async fn append_until_acknowledged(store: &PgStore, batch: Vec<Append>) {
    loop {
        match store.append(batch.clone()).await {
            Ok(_) => return,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("append failed with a non-retryable error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_and_appenders_resume_after_a_restart_and_nothing_is_lost() {
    let mut server =
        tokio::task::block_in_place(|| PgServer::start_with(PgOptions::default().with_fsync(true)));
    let schema = server.schema("restart").await;
    let store = PgStore::connect(config(schema.url())).await.unwrap();
    let recorder = Recorder::default();
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        RelayOptions {
            batch: 100,
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..RelayOptions::default()
        },
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(async move { relay.run(async { stopped.await.unwrap_or(()) }).await });

    let events = appends(600, 16);
    let expected: HashSet<String> = events.iter().map(|a| a.envelope.id.clone()).collect();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for batch in events.chunks(10) {
                append_until_acknowledged(&store, batch.to_vec()).await;
            }
        })
    };
    // Restart once the relay has published something, while the writer still appends.
    while recorder.published().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(|| server.restart());
    writer.await.unwrap();
    recorder.wait_for(&expected).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    let published = recorder.published();
    assert_eq!(recorder.ids(), expected);
    assert_first_publications_in_order(&published);
    assert!(store.head().await.unwrap() >= expected.len() as u64);
}
