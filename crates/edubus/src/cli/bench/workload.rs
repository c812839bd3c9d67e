//! The events `edubus bench` publishes, built before the clock starts, and the publishers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edubus_core::{Envelope, EventStore, Recorded, Transport, partition_of};
use edubus_events::{
    AttendanceUpdated, AttendanceUpdatedV1PreviousStatus, AttendanceUpdatedV1Status,
};
use edubus_redis::RedisStreams;
use edubus_runtime::Bus;
use indicatif::ProgressBar;
use jiff::{SignedDuration, Timestamp};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// Bytes `"reason":""` adds to a payload (with its comma).
const REASON_OVERHEAD: usize = 12;

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Events in all.
    pub events: u64,
    /// Events per publish call.
    pub batch: usize,
    /// Distinct partition keys (students).
    pub keys: usize,
    /// Approximate size of each payload as JSON; 0 leaves the optional `reason` out.
    pub payload_bytes: usize,
}

/// The envelopes, in publish batches, and the size of one payload.
pub struct Workload {
    /// Batches in publish order.
    pub batches: Vec<Vec<Envelope>>,
    /// Size of one event's `data` as JSON.
    pub payload_bytes: usize,
}

/// Builds every envelope up front (`attendance.updated`, the `reason` padded to the size
/// asked), so the run measures the engine rather than event generation.
pub fn build<B: EventStore + Transport>(bus: &Bus<B>, shape: Shape) -> anyhow::Result<Workload> {
    let students: Vec<Uuid> = (0..shape.keys.max(1)).map(|_| Uuid::now_v7()).collect();
    let (session, staff) = (Uuid::now_v7(), Uuid::now_v7());
    let template = event(session, students[0], staff, 0, None);
    let base = serde_json::to_vec(&template)?.len();
    let reason = (shape.payload_bytes > base + REASON_OVERHEAD)
        .then(|| "x".repeat(shape.payload_bytes - base - REASON_OVERHEAD));
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(shape.batch);
    for i in 0..shape.events {
        let student = students[usize::try_from(i)? % students.len()];
        let env = bus.envelope(&event(session, student, staff, i, reason.clone()))?;
        batch.push(env);
        if batch.len() == shape.batch {
            batches.push(std::mem::replace(
                &mut batch,
                Vec::with_capacity(shape.batch),
            ));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let payload_bytes = base + reason.map_or(0, |r| r.len() + REASON_OVERHEAD);
    Ok(Workload {
        batches,
        payload_bytes,
    })
}

fn event(
    session: Uuid,
    student: Uuid,
    staff: Uuid,
    i: u64,
    reason: Option<String>,
) -> AttendanceUpdated {
    let (previous_status, status) = match i % 3 {
        0 => (
            AttendanceUpdatedV1PreviousStatus::Absent,
            AttendanceUpdatedV1Status::Present,
        ),
        1 => (
            AttendanceUpdatedV1PreviousStatus::Present,
            AttendanceUpdatedV1Status::Late,
        ),
        _ => (
            AttendanceUpdatedV1PreviousStatus::Late,
            AttendanceUpdatedV1Status::Absent,
        ),
    };
    AttendanceUpdated {
        class_session_id: session,
        student_id: student,
        previous_status,
        status,
        reason,
        updated_by: staff,
        updated_at: Timestamp::now(),
    }
}

/// Where the publishers send their batches.
#[derive(Clone)]
pub enum Target {
    /// `Bus::publish_batch`: validated and appended to the event store.
    Store,
    /// Validated like a publish, then `RedisStreams::publish` straight to the transport, with
    /// log positions from a counter (no event store involved).
    Redis(RedisStreams, Arc<AtomicU64>),
}

impl Target {
    /// Publishing straight to `redis`, positions counting from 1.
    pub fn redis(redis: RedisStreams) -> Self {
        Self::Redis(redis, Arc::new(AtomicU64::new(1)))
    }

    /// Publishes `batch`; returns the events sent to Redis, for the caller to drop after
    /// the clock stops (freeing what the workload built before it started is not publishing).
    async fn send<B: EventStore + Transport>(
        &self,
        bus: &Bus<B>,
        batch: Vec<Envelope>,
    ) -> anyhow::Result<Vec<Recorded>> {
        match self {
            Self::Store => {
                bus.publish_batch(batch).await?;
                Ok(Vec::new())
            }
            Self::Redis(redis, next) => {
                let first = next.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let recorded_at = Timestamp::now();
                let events = batch
                    .into_iter()
                    .zip(first..)
                    .map(|(env, position)| {
                        let append = bus.prepare(env)?;
                        let key = append.envelope.key().unwrap_or_default().to_owned();
                        Ok(Recorded {
                            position,
                            partition: partition_of(&key, redis.partitions()),
                            stream: append.stream,
                            key,
                            recorded_at,
                            envelope: append.envelope,
                        })
                    })
                    .collect::<edubus_core::Result<Vec<_>>>()?;
                redis.publish(&events).await?;
                Ok(events)
            }
        }
    }
}

/// How publishing went.
pub struct Published {
    /// Per batch: latency from its intended start to the publish call returning, in
    /// microseconds, and its size.
    pub batches: Vec<(u64, usize)>,
    /// Wall time from the first batch's start to the last one's return.
    pub elapsed: Duration,
    /// The events published straight to Redis: freed by the caller once its clock stopped.
    pub spent: Vec<Vec<Recorded>>,
}

/// Publishes the batches to `target` with `publishers` concurrent tasks (batch `i` to task
/// `i % publishers`). With `rate` > 0 each batch is due at `i * batch / rate` seconds
/// (open loop: a late batch is not rescheduled, its lateness counts in its latency).
/// Each envelope's `time` is set when its batch is handed over (or to when it was due).
pub async fn publish<B: EventStore + Transport>(
    bus: &Bus<B>,
    target: &Target,
    batches: Vec<Vec<Envelope>>,
    publishers: usize,
    rate: f64,
    bar: &ProgressBar,
) -> anyhow::Result<Published> {
    let clock = Arc::new(Clock::new(rate));
    let mut lanes: Vec<Vec<(u64, Vec<Envelope>)>> =
        (0..publishers.max(1)).map(|_| Vec::new()).collect();
    let mut due = 0;
    for (i, batch) in batches.into_iter().enumerate() {
        let size = batch.len() as u64;
        let n = lanes.len();
        lanes[i % n].push((due, batch));
        due += size;
    }
    let mut tasks = JoinSet::new();
    for lane in lanes {
        tasks.spawn(publish_lane(
            bus.clone(),
            target.clone(),
            lane,
            Arc::clone(&clock),
            bar.clone(),
        ));
    }
    let (mut out, mut spent) = (Vec::new(), Vec::new());
    while let Some(res) = tasks.join_next().await {
        let (batches, events) = res??;
        out.extend(batches);
        spent.extend(events);
    }
    Ok(Published {
        batches: out,
        elapsed: clock.start.elapsed(),
        spent,
    })
}

async fn publish_lane<B: EventStore + Transport>(
    bus: Bus<B>,
    target: Target,
    lane: Vec<(u64, Vec<Envelope>)>,
    clock: Arc<Clock>,
    bar: ProgressBar,
) -> anyhow::Result<(Vec<(u64, usize)>, Vec<Vec<Recorded>>)> {
    let mut out = Vec::with_capacity(lane.len());
    let mut spent = Vec::with_capacity(lane.len());
    for (events_before, mut batch) in lane {
        let (due, time) = clock.due(events_before).await;
        for env in &mut batch {
            env.time = Some(time);
        }
        let size = batch.len();
        spent.push(target.send(&bus, batch).await?);
        let latency = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        out.push((latency, size));
        bar.inc(size as u64);
    }
    Ok((out, spent))
}

/// The publishing schedule: when each batch is due, on the monotonic and the wall clock.
struct Clock {
    start: Instant,
    wall: Timestamp,
    rate: f64,
}

impl Clock {
    fn new(rate: f64) -> Self {
        Self {
            start: Instant::now(),
            wall: Timestamp::now(),
            rate,
        }
    }

    /// Waits until the batch after `events_before` events is due; returns when it was due
    /// (now, when publishing as fast as possible) and that time on the wall clock.
    async fn due(&self, events_before: u64) -> (Instant, Timestamp) {
        if self.rate <= 0.0 {
            return (Instant::now(), Timestamp::now());
        }
        let offset = Duration::from_secs_f64(events_before as f64 / self.rate);
        let due = self.start + offset;
        pace_until(due).await;
        let wall = SignedDuration::try_from(offset)
            .ok()
            .and_then(|d| self.wall.checked_add(d).ok())
            .unwrap_or_else(Timestamp::now);
        (due, wall)
    }
}

/// Sleeps until `due` with sub-millisecond precision. Tokio's timer ticks in milliseconds and
/// wakes up to about 2 ms late, which would be counted as latency of the system under test;
/// the last stretch sleeps on a blocking thread instead.
async fn pace_until(due: Instant) {
    const COARSE_MARGIN: Duration = Duration::from_millis(3);
    if let Some(early) = due.checked_sub(COARSE_MARGIN) {
        tokio::time::sleep_until(early).await;
    }
    let left = due.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}
