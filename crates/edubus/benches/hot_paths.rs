//! Micro-benchmarks of the hot paths: envelope JSON encode (ours and `serde_json`'s) and
//! decode, schema validation, and appending a batch of 1,000 events to the embedded SQLite
//! store.
//!
//! Run by hand: `cargo bench -p edubus --bench hot_paths`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use edubus_catalog::validate::Validator;
use edubus_core::{Append, Envelope, Event, EventStore};
use edubus_events::{AttendanceMarked, AttendanceMarkedV1Status};
use edubus_sqlite::{SqliteBackend, SqliteConfig};
use jiff::Timestamp;
use uuid::Uuid;

fn marked() -> AttendanceMarked {
    AttendanceMarked {
        class_session_id: Uuid::now_v7(),
        student_id: Uuid::now_v7(),
        status: AttendanceMarkedV1Status::Absent,
        marked_by: Uuid::now_v7(),
        marked_at: Timestamp::now(),
    }
}

fn envelope() -> Envelope {
    Envelope::from_event(&marked(), "bench").expect("a generated event serializes")
}

fn envelope_json(c: &mut Criterion) {
    let env = envelope();
    let bytes = serde_json::to_vec(&env).expect("encode");
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| b.iter(|| black_box(&env).to_json()));
    group.bench_function("encode with serde_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&env)))
    });
    group.bench_function("decode", |b| {
        b.iter(|| serde_json::from_slice::<Envelope>(black_box(&bytes)))
    });
    group.finish();
}

fn validation(c: &mut Criterion) {
    let validator = Validator::new(edubus_events::catalog()).expect("the catalog compiles");
    let env = envelope();
    c.bench_function("validate attendance.marked", |b| {
        b.iter(|| validator.validate(black_box(&env)).is_ok())
    });
}

/// 1,000 fresh events (new ids, so none is an idempotent duplicate).
fn batch() -> Vec<Append> {
    (0..1000)
        .map(|_| Append {
            envelope: envelope(),
            stream: AttendanceMarked::TOPIC.to_owned(),
        })
        .collect()
}

fn sqlite_append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend: SqliteBackend = rt
        .block_on(SqliteBackend::open(SqliteConfig::in_dir(dir.path())))
        .expect("open SQLite");
    let mut group = c.benchmark_group("sqlite");
    group.throughput(Throughput::Elements(1000));
    group.sample_size(20);
    group.bench_function("append batch of 1000", |b| {
        b.iter_batched(
            batch,
            |batch| rt.block_on(backend.append(batch)).expect("append"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    rt.block_on(backend.close());
}

criterion_group!(benches, envelope_json, validation, sqlite_append);
criterion_main!(benches);
