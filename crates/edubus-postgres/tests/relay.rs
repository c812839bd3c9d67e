//! The outbox and its relay on a real PostgreSQL: only committed events are relayed, each
//! partition in position order, once per crash-free run, again after a crash, and promptly.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Recorder, append, appends, assert_first_publications_in_order, by_partition, store};
use edubus_core::{EventStore, ReadQuery};
use edubus_postgres::{PgStore, Relay, RelayOptions};
use tokio::sync::oneshot;

/// One lane: each step's passes are predictable (one pass takes every partition).
fn options(batch: usize, poll: Duration) -> RelayOptions {
    RelayOptions {
        batch,
        poll_interval: poll,
        max_backoff: Duration::from_millis(200),
        lanes: 1,
    }
}

fn ids(appends: &[edubus_core::Append]) -> HashSet<String> {
    appends.iter().map(|a| a.envelope.id.clone()).collect()
}

/// Appends `count` events in batches of `batch` from `writers` concurrent tasks.
async fn append_concurrently(
    store: &PgStore,
    writers: usize,
    count: usize,
    batch: usize,
) -> HashSet<String> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = HashSet::new();
            for chunk in appends(count, 24).chunks(batch) {
                let chunk: Vec<_> = chunk
                    .iter()
                    .cloned()
                    .map(|mut a| {
                        a.envelope.data["writer"] = w.into();
                        a
                    })
                    .collect();
                ids.extend(chunk.iter().map(|a| a.envelope.id.clone()));
                store.append(chunk).await.expect("append");
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test]
async fn step_relays_every_committed_event_once_in_per_partition_order() {
    for lanes in [1, 4] {
        relays_in_order(lanes).await;
    }
}

/// With `lanes` passes side by side, each over its own partitions.
async fn relays_in_order(lanes: usize) {
    let (_schema, store) = store(&format!("relay_order_{lanes}")).await;
    let batch = appends(250, 10);
    store.append(batch.clone()).await.unwrap();
    let recorder = Recorder::default();
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        RelayOptions {
            lanes,
            ..options(64, Duration::from_secs(1))
        },
    );

    assert_eq!(relay.step().await.unwrap(), 250);
    assert_eq!(relay.step().await.unwrap(), 0, "the outbox is empty now");
    let published = recorder.published();
    assert_eq!(published.len(), 250);
    assert_eq!(recorder.ids(), ids(&batch));
    for (partition, positions) in by_partition(&published) {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: {positions:?}"
        );
    }
    // What the relay published is what the store reads back.
    let stored = store.read(ReadQuery::default()).await.unwrap();
    for r in &published {
        let s = stored.iter().find(|s| s.position == r.position).unwrap();
        assert_eq!(s, r);
    }
}

#[tokio::test]
async fn a_rolled_back_outbox_append_stores_and_relays_nothing() {
    let (schema, store) = store("outbox_rollback").await;
    schema
        .connect()
        .await
        .batch_execute("CREATE TABLE marks (student text PRIMARY KEY)")
        .await
        .unwrap();
    let mut client = store.pool().get().await.unwrap();
    let kept = append("student-1", 0);
    let dropped = append("student-2", 1);

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO marks VALUES ('student-2')", &[])
        .await
        .unwrap();
    store.append_in(&tx, vec![dropped.clone()]).await.unwrap();
    tx.rollback().await.unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO marks VALUES ('student-1')", &[])
        .await
        .unwrap();
    store.append_in(&tx, vec![kept.clone()]).await.unwrap();
    tx.commit().await.unwrap();

    assert!(store.get(&dropped.envelope.id).await.unwrap().is_none());
    assert!(store.get(&kept.envelope.id).await.unwrap().is_some());
    let recorder = Recorder::default();
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_secs(1)),
    );
    assert_eq!(relay.step().await.unwrap(), 1);
    assert_eq!(recorder.ids(), ids(&[kept]));
    let marks: Vec<String> = client
        .query("SELECT student FROM marks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(marks, vec!["student-1".to_owned()]);
}

#[tokio::test]
async fn an_uncommitted_append_is_not_relayed_until_it_commits() {
    let (_schema, store) = store("outbox_uncommitted").await;
    let mut client = store.pool().get().await.unwrap();
    let pending = append("student-1", 0);
    let tx = client.transaction().await.unwrap();
    store.append_in(&tx, vec![pending.clone()]).await.unwrap();

    let recorder = Recorder::default();
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_secs(1)),
    );
    assert_eq!(relay.step().await.unwrap(), 0);
    assert!(recorder.published().is_empty());

    tx.commit().await.unwrap();
    assert_eq!(relay.step().await.unwrap(), 1);
    assert_eq!(recorder.ids(), ids(&[pending]));
}

#[tokio::test]
async fn a_failed_publish_is_retried_and_nothing_is_lost() {
    let (_schema, store) = store("relay_publish_fails").await;
    let batch = appends(40, 5);
    store.append(batch.clone()).await.unwrap();
    let recorder = Recorder::default();
    recorder.fail_next(1);
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_secs(1)),
    );

    assert!(relay.step().await.is_err(), "the sink refused the batch");
    assert_eq!(recorder.published().len(), 40, "recorded before failing");
    assert_eq!(
        relay.step().await.unwrap(),
        40,
        "nothing was deleted: all again"
    );
    assert_eq!(relay.step().await.unwrap(), 0);
    let published = recorder.published();
    assert_eq!(published.len(), 80);
    assert_eq!(recorder.ids(), ids(&batch));
    assert_first_publications_in_order(&published);
}

#[tokio::test]
async fn a_relay_dropped_between_publish_and_commit_republishes_on_the_next_step() {
    let (_schema, store) = store("relay_killed").await;
    let batch = appends(30, 5);
    store.append(batch.clone()).await.unwrap();
    let recorder = Recorder::default();
    recorder.hang_next(1);
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_secs(1)),
    );

    // The pass is dropped as a killed process would stop: after publishing, before commit.
    tokio::select! {
        _ = relay.step() => panic!("the hanging publish cannot complete"),
        () = recorder.recorded() => {}
    }
    assert_eq!(recorder.ids(), ids(&batch));
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_secs(1)),
    );
    // The dropped transaction's locks go once its rollback reaches the server.
    let mut relayed = 0;
    for _ in 0..200 {
        relayed += relay.step().await.unwrap();
        if relayed == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relayed, 30, "everything was published again");
    assert_eq!(recorder.published().len(), 60);
    assert_first_publications_in_order(&recorder.published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_event_once_in_per_partition_order() {
    let (_schema, store) = store("relay_two").await;
    let recorder = Recorder::default();
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = Relay::new(
            store.clone(),
            recorder.clone(),
            options(50, Duration::from_millis(20)),
        );
        runs.push(tokio::spawn(async move {
            relay.run(async { stopped.await.unwrap_or(()) }).await
        }));
        stops.push(stop);
    }
    let expected = append_concurrently(&store, 3, 400, 20).await;
    recorder.wait_for(&expected).await;
    for stop in stops {
        stop.send(()).unwrap();
    }
    let mut relayed = 0;
    for run in runs {
        relayed += run.await.unwrap().unwrap().relayed;
    }
    let published = recorder.published();
    assert_eq!(
        published.len(),
        expected.len(),
        "no event was published twice"
    );
    assert_eq!(relayed, 1200);
    for (partition, positions) in by_partition(&published) {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_the_relay_without_waiting_for_the_poll() {
    let (_schema, store) = store("relay_notify").await;
    let recorder = Recorder::default();
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_secs(3600)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(async move { relay.run(async { stopped.await.unwrap_or(()) }).await });

    // The first event may be found by the relay's first pass; after it the relay sleeps for
    // an hour unless a notification wakes it.
    let first = append("student-1", 0);
    store.append(vec![first.clone()]).await.unwrap();
    recorder.wait_for(&ids(&[first])).await;
    let second = append("student-2", 1);
    store.append(vec![second.clone()]).await.unwrap();
    recorder.wait_for(&ids(&[second])).await;

    stop.send(()).unwrap();
    assert_eq!(run.await.unwrap().unwrap().relayed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_notification_was_lost_is_relayed_by_polling() {
    let (schema, store) = store("relay_poll").await;
    let recorder = Recorder::default();
    let relay = Relay::new(
        store.clone(),
        recorder.clone(),
        options(100, Duration::from_millis(50)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(async move { relay.run(async { stopped.await.unwrap_or(()) }).await });

    // Written the way an append writes, minus the NOTIFY: as if the notification was lost.
    let event = append("student-1", 0);
    let body = serde_json::to_string(&event.envelope).unwrap();
    let partition = edubus_core::partition_of("student-1", common::PARTITIONS) as i32;
    schema
        .connect()
        .await
        .execute(
            "INSERT INTO events (id, type, version, stream, partition, key, correlation_id,
                 envelope, body)
             VALUES ($1, 'attendance.marked', 1, 'attendance', $2, 'student-1', $1,
                 $3::text::jsonb, $3)",
            &[&event.envelope.id, &partition, &body],
        )
        .await
        .unwrap();
    recorder.wait_for(&ids(&[event])).await;
    stop.send(()).unwrap();
    assert_eq!(run.await.unwrap().unwrap().relayed, 1);
}
