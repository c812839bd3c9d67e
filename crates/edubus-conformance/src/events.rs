//! The events the cases publish: real `attendance.marked` events whose key (`student_id`) and
//! sequence number (`class_session_id`) are chosen deliberately.

use edubus_core::{Append, Appended, Envelope, Event as _, partition_of};
use edubus_events::{AttendanceMarked, AttendanceMarkedV1Status, AttendanceThresholdBreached};
use edubus_runtime::Bus;
use jiff::Timestamp;
use uuid::Uuid;

use crate::harness::Backend;

/// Keys are UUIDs with this prefix in their high bits and the key index in the low bits.
const KEY_PREFIX: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0000;

/// The `student_id` (partition key) of key number `index`.
pub fn key_uuid(index: u64) -> Uuid {
    Uuid::from_u128(KEY_PREFIX | u128::from(index))
}

/// The key string of key number `index`, as stored in the log.
pub fn key(index: u64) -> String {
    key_uuid(index).to_string()
}

/// The first `count` key indices (from `from`) whose keys fall in `partition`.
pub fn keys_in_partition(partition: u32, partitions: u32, from: u64, count: usize) -> Vec<u64> {
    (from..)
        .filter(|i| partition_of(&key(*i), partitions) == partition)
        .take(count)
        .collect()
}

/// Attendance of key `key` with sequence number `seq` (kept in `class_session_id`).
pub fn mark(key: u64, seq: u64) -> AttendanceMarked {
    AttendanceMarked {
        class_session_id: Uuid::from_u128(u128::from(seq)),
        student_id: key_uuid(key),
        status: AttendanceMarkedV1Status::Absent,
        marked_by: Uuid::from_u128(7),
        marked_at: Timestamp::now(),
    }
}

/// The sequence number carried by an event built with [`mark`].
pub fn seq_of(event: &AttendanceMarked) -> u64 {
    u64::try_from(event.class_session_id.as_u128()).unwrap_or(u64::MAX)
}

/// The threshold event a handler publishes as caused by `event`.
pub fn breach_of(event: &AttendanceMarked) -> AttendanceThresholdBreached {
    AttendanceThresholdBreached {
        student_id: event.student_id,
        days_absent: 3,
        threshold: 3,
        first_absent_at: event.marked_at,
        last_absent_at: event.marked_at,
    }
}

/// One published event: its key index, sequence number and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Key index.
    pub key: u64,
    /// Sequence number.
    pub seq: u64,
    /// Event id.
    pub id: String,
    /// Position in the log.
    pub position: u64,
}

/// Publishes `(key, seq)` events in one atomic batch, in that order.
pub async fn publish<B: Backend>(
    bus: &Bus<B>,
    events: &[(u64, u64)],
) -> anyhow::Result<Vec<Published>> {
    let envelopes = events
        .iter()
        .map(|(k, s)| bus.envelope(&mark(*k, *s)))
        .collect::<Result<Vec<_>, _>>()?;
    let appended: Vec<Appended> = bus.publish_batch(envelopes).await?;
    Ok(events
        .iter()
        .zip(appended)
        .map(|((key, seq), a)| Published {
            key: *key,
            seq: *seq,
            id: a.id,
            position: a.position,
        })
        .collect())
}

/// An append of key `key`, seq `seq` whose payload fails its schema and cannot be decoded
/// (`status` is not one of the enum values); it bypasses the bus's validation.
pub fn invalid_append(key: u64, seq: u64) -> anyhow::Result<Append> {
    let mut envelope = Envelope::from_event(&mark(key, seq), "conformance")?;
    envelope.data["status"] = "asleep".into();
    Ok(Append {
        envelope,
        stream: AttendanceMarked::TOPIC.to_owned(),
    })
}
