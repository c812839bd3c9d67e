//! The event store role: an append-only log of envelopes, read by position, key, type or
//! correlation id (DESIGN section 4).

use std::future::Future;

use jiff::Timestamp;

use crate::envelope::Envelope;
use crate::error::Result;

/// Position of an event in the global log: assigned at append, strictly increasing, from 1.
pub type Position = u64;

/// An event to append: the envelope and the stream (topic) it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The validated envelope; its `partitionkey` (or `subject`) is the partition key.
    pub envelope: Envelope,
    /// The stream (catalog topic) it is published on.
    pub stream: String,
}

/// What an append did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event id.
    pub id: String,
    /// Its position in the log.
    pub position: Position,
    /// True when an identical event with this id was already stored (an idempotent retry).
    pub duplicate: bool,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Position in the global log.
    pub position: Position,
    /// Stream (topic).
    pub stream: String,
    /// Partition of the stream, from the key ([`crate::partition_of`]).
    pub partition: u32,
    /// The partition key.
    pub key: String,
    /// When the store recorded it.
    pub recorded_at: Timestamp,
    /// The envelope exactly as appended.
    pub envelope: Envelope,
}

/// A read of the log: events after `after`, oldest first, filtered, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadQuery {
    /// Only positions greater than this.
    pub after: Position,
    /// At most this many events (0 means the backend's default page size).
    pub limit: usize,
    /// Only these event types (canonical names); empty means all.
    pub types: Vec<String>,
    /// Only this partition key.
    pub key: Option<String>,
    /// Only this correlation id.
    pub correlation_id: Option<String>,
    /// Only this stream.
    pub stream: Option<String>,
    /// Only events recorded at or after this time.
    pub since: Option<Timestamp>,
}

/// An append-only, immutable event log.
///
/// `append` is atomic for the whole batch and idempotent per event id: appending an event whose
/// id is stored with the same content returns its position with `duplicate = true`; the same id
/// with different content is an [`crate::Error::Conflict`] and nothing of the batch is stored.
pub trait EventStore: Send + Sync + 'static {
    /// Appends a batch atomically and returns one [`Appended`] per event, in order.
    fn append(&self, batch: Vec<Append>) -> impl Future<Output = Result<Vec<Appended>>> + Send;

    /// Reads events matching `query`, by ascending position.
    fn read(&self, query: ReadQuery) -> impl Future<Output = Result<Vec<Recorded>>> + Send;

    /// The event with this id, if stored.
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Recorded>>> + Send;

    /// The highest position stored (0 for an empty log).
    fn head(&self) -> impl Future<Output = Result<Position>> + Send;
}

/// One action of the audit trail (DLQ replay and purge, replays of stored events, ...): an
/// append-only record every backend keeps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Entry id, increasing.
    pub id: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Who did it (a user, a token name or `edubus`).
    pub actor: String,
    /// What was done: `dlq.list`, `dlq.get`, `dlq.replay`, `dlq.purge`, `replay`, ...
    pub action: String,
    /// What it was done to (a subscription, DLQ entry ids).
    pub subject: String,
    /// Parameters and results of the action.
    pub detail: serde_json::Value,
}

/// The partition of `key` among `partitions`: FNV-1a 64, stable across processes and backends.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::partition_of;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("student-1", 16), partition_of("student-1", 16));
        assert!((0..1000).all(|i| partition_of(&format!("k{i}"), 7) < 7));
        let used: std::collections::BTreeSet<_> = (0..1000)
            .map(|i| partition_of(&format!("k{i}"), 16))
            .collect();
        assert_eq!(used.len(), 16, "keys spread over every partition");
        assert_eq!(partition_of("anything", 0), 0);
    }
}
