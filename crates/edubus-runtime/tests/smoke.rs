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
