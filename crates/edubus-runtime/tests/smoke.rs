//! The runtime end to end on the embedded backend: every published event is handled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edubus_events::{AttendanceMarked, AttendanceMarkedV1Status};
use edubus_runtime::{Bus, SubscriptionOptions, Worker};
use edubus_sqlite::{SqliteBackend, SqliteConfig};
use uuid::Uuid;

fn marked(student: Uuid, n: u32) -> AttendanceMarked {
    AttendanceMarked {
        class_session_id: Uuid::from_u128(u128::from(n)),
        student_id: student,
        status: AttendanceMarkedV1Status::Absent,
        marked_by: Uuid::nil(),
        marked_at: jiff::Timestamp::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_handled_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(SqliteConfig::in_dir(dir.path()))
        .await
        .unwrap();
    let bus = Bus::new(backend, edubus_events::catalog(), "smoke").unwrap();
    let students: Vec<Uuid> = (0..20).map(|i| Uuid::from_u128(1000 + i)).collect();
    for n in 0..50u32 {
        let batch: Vec<_> = students
            .iter()
            .map(|s| bus.envelope(&marked(*s, n)).unwrap())
            .collect();
        bus.publish_batch(batch).await.unwrap();
    }
    let seen: Arc<Mutex<HashMap<Uuid, Vec<u128>>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let worker = Worker::builder(bus.clone())
        .subscription("smoke", SubscriptionOptions::default())
        .on::<AttendanceMarked, _, _>(move |e, _ctx| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock()
                    .unwrap()
                    .entry(e.student_id)
                    .or_default()
                    .push(e.class_session_id.as_u128());
                Ok(())
            }
        })
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().values().map(Vec::len).sum::<usize>() < 1000 {
        assert!(Instant::now() < deadline, "not every event was handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    for (student, order) in seen.lock().unwrap().iter() {
        assert_eq!(*order, (0..50).collect::<Vec<u128>>(), "order of {student}");
    }
}

/// A handler that panics fails that attempt only: the retry sees the whole envelope again
/// with the next attempt number, and after the last attempt the dead letter records each
/// attempt with the panic's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_the_attempt_and_is_retried() {
    use edubus_core::DeadLetterQueue as _;
    use edubus_runtime::RetryPolicy;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::open(SqliteConfig::in_dir(dir.path()))
        .await
        .unwrap();
    let bus = Bus::new(backend.clone(), edubus_events::catalog(), "smoke").unwrap();
    let published = bus.envelope(&marked(Uuid::from_u128(7), 1)).unwrap();
    bus.publish_batch(vec![published.clone()]).await.unwrap();
    // Per attempt: the envelope's attempt number, payload and id as the handler saw them.
    type Seen = Vec<(Option<u32>, serde_json::Value, String)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = Arc::clone(&seen);
    let retry =
        RetryPolicy::attempts(2).with_backoff(Duration::from_millis(10), Duration::from_millis(10));
    let worker = Worker::builder(bus.clone())
        .subscription("panics", SubscriptionOptions::default().with_retry(retry))
        .on::<AttendanceMarked, _, _>(move |_e, ctx| {
            let env = ctx.envelope();
            sink.lock()
                .unwrap()
                .push((env.attempt, env.data.clone(), env.id.clone()));
            let attempt = ctx.attempt();
            async move { panic!("attempt {attempt} panics") }
        })
        .build()
        .unwrap();
    let stats = worker.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.dead_lettered.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the event was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 2, "two attempts");
    for (n, (attempt, data, id)) in seen.iter().enumerate() {
        assert_eq!(*attempt, Some(n as u32 + 1));
        assert_eq!(*data, published.data, "attempt {} sees the payload", n + 1);
        assert_eq!(*id, published.id);
    }
    let letters = backend.list(Some("panics"), 0, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let errors: Vec<&str> = letters[0]
        .letter
        .attempts
        .iter()
        .map(|a| a.error.as_str())
        .collect();
    assert_eq!(
        errors,
        [
            "handler panicked: attempt 1 panics",
            "handler panicked: attempt 2 panics"
        ],
        "{letters:?}"
    );
}
