//! A quick throughput measurement of the embedded backend (not a test, no assertions):
//! batched appends from concurrent publishers, then fetch + settle of every event by one
//! consumer holding all partitions.
//!
//! `cargo run --release -p edubus-sqlite --example throughput -- [EVENTS] [PUBLISHERS] [append-only]`

use std::time::Instant;

use edubus_core::{
    Append, ConsumerId, Envelope, EventStore, LeaseOptions, Outcome, Replay, Settlement, StartFrom,
    SubscriptionSpec, Transport,
};
use edubus_sqlite::{SqliteBackend, SqliteConfig, SqliteWork};
use serde_json::json;

const BATCH: usize = 1000;

/// CPU seconds used so far by each thread whose name starts with `prefix` (Linux only): a
/// measure that does not depend on what else the machine runs.
fn thread_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        ticks += fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        ticks += fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ticks as f64 / 100.0
}

fn batch(publisher: usize, n: usize) -> Vec<Append> {
    (0..BATCH)
        .map(|i| {
            let key = format!("student-{}", (publisher * 7919 + n * 31 + i) % 5000);
            let data = json!({
                "class_session_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "student_id": key,
                "status": "present",
                "marked_by": "0190a1b2-c3d4-7e5f-8a9b-000000000001",
                "marked_at": "2026-05-01T08:00:00Z"
            });
            let envelope = Envelope::new("attendance.marked", 1, data)
                .with_source("attendance-api")
                .with_key(key);
            Append {
                envelope,
                stream: "attendance.marked".into(),
            }
        })
        .collect()
}

async fn publish(bus: &SqliteBackend, events: usize, publishers: usize) -> f64 {
    let per = events / publishers / BATCH;
    let batches: Vec<Vec<Vec<Append>>> = (0..publishers)
        .map(|p| (0..per).map(|n| batch(p, n)).collect())
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|mine| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for b in mine {
                    bus.append(b).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
    (per * publishers * BATCH) as f64 / started.elapsed().as_secs_f64()
}

async fn consume(bus: &SqliteBackend, total: u64) -> f64 {
    let spec = SubscriptionSpec {
        name: "bench".into(),
        types: vec!["attendance.marked".into()],
        ordered: true,
        start: StartFrom::Beginning,
    };
    bus.register(&spec).await.expect("register");
    let me = ConsumerId("bench-1".into());
    let leases = bus
        .rebalance("bench", &me, LeaseOptions::default(), &[])
        .await
        .expect("lease");
    let started = Instant::now();
    let tasks: Vec<_> = leases
        .into_iter()
        .map(|lease| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut after = lease.cursor;
                loop {
                    let got = bus
                        .fetch(&lease, after, 0, 1000)
                        .await
                        .expect("fetch")
                        .deliveries;
                    let Some(last) = got.last().map(|d| d.event.position) else {
                        break;
                    };
                    let settlements: Vec<Settlement<SqliteWork>> = got
                        .iter()
                        .map(|d| Settlement {
                            position: d.event.position,
                            seq: d.seq,
                            event_id: d.event.envelope.id.clone(),
                            requeue_id: None,
                            outcome: Outcome::Handled {
                                work: None,
                                caused: Vec::new(),
                            },
                        })
                        .collect();
                    done += settlements.len() as u64;
                    bus.settle(&lease, settlements, last).await.expect("settle");
                    after = last;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("consumer");
    }
    assert_eq!(done, total, "every event consumed once");
    done as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let publishers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = SqliteBackend::open(SqliteConfig::in_dir(dir.path()))
        .await
        .expect("open");
    let cpu = thread_cpu("edubus-sqlite-w");
    let rate = publish(&bus, events, publishers).await;
    let stats = bus.writer_stats();
    let writer_us = (thread_cpu("edubus-sqlite-w") - cpu) * 1e6 / events as f64;
    println!(
        "append: {rate:.0} events/s ({publishers} publishers, batches of {BATCH}; {} commands in {} transactions; writer CPU {writer_us:.2} us/event)",
        stats.commands, stats.transactions
    );
    if args.next().as_deref() != Some("append-only") {
        let total = bus.head().await.expect("head");
        let cpu = thread_cpu("edubus-sqlite-w");
        let rate = consume(&bus, total).await;
        let writer_us = (thread_cpu("edubus-sqlite-w") - cpu) * 1e6 / total as f64;
        println!(
            "fetch+settle: {rate:.0} events/s (16 partitions, fetch 1000; writer CPU {writer_us:.2} us/event)"
        );
        let started = Instant::now();
        let stats = bus.stats().await.expect("stats");
        println!("stats: {:?} (lag {})", started.elapsed(), stats[0].lag);
        let started = Instant::now();
        let queued = Replay::replay(&bus, "bench", 0, None, "bench")
            .await
            .expect("replay");
        println!("replay: {queued} events queued in {:?}", started.elapsed());
    }
    bus.close().await;
}
