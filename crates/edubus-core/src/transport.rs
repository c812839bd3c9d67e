//! The transport role: subscriptions (consumer groups) over partitioned streams, with leases,
//! settlement, dead letters, stalled-delivery recovery and retention (DESIGN sections 4 and 5).
//!
//! The protocol a worker follows, identical on every backend:
//! 1. [`Transport::register`] its subscriptions;
//! 2. [`Transport::rebalance`] every few seconds: it renews the consumer's membership and
//!    leases, takes free, expired or stalled partitions and gives up partitions beyond its fair
//!    share. A lease carries a fencing `epoch`; a lease taken over gets a new one.
//! 3. for each leased partition, [`Transport::fetch`] deliveries after the last sequence number
//!    it has seen (initially the lease's `cursor`), runs handlers, and [`Transport::settle`]s
//!    finished deliveries in batches with the new cursor: the highest sequence number up to
//!    which every fetched delivery is settled. Settling with a stale epoch fails with `Conflict` and commits nothing.
//! 4. a failed attempt is recorded with [`Transport::record_failure`] so the delivery count
//!    survives a crash; after the last attempt the delivery is settled as dead.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{Append, EventStore, Position, Recorded};

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StartFrom {
    /// From the first stored event (the default: a new subscription misses nothing).
    #[default]
    Beginning,
    /// From events appended after the subscription was registered.
    End,
}

/// A subscription (consumer group) as registered with the transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    /// Unique name (`attendance-threshold`).
    pub name: String,
    /// Canonical event types it receives; empty means every type.
    pub types: Vec<String>,
    /// Per-key order (default) or none.
    pub ordered: bool,
    /// Where it starts when first registered.
    pub start: StartFrom,
}

/// The identity of one worker process within a subscription; stable across restarts when the
/// operator names it, unique per process otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConsumerId(pub String);

/// Timing of leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// A lease not renewed for this long expires and can be taken by another consumer.
    pub ttl: Duration,
    /// A partition whose oldest in-flight delivery is older than this is stalled and can be
    /// claimed by another consumer even while its lease is renewed.
    pub claim_after: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            claim_after: Duration::from_secs(600),
        }
    }
}

/// The right to deliver one partition of one subscription, fenced by `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// Subscription name.
    pub subscription: String,
    /// Partition number.
    pub partition: u32,
    /// Fencing token: increases every time the partition changes owner.
    pub epoch: u64,
    /// Every delivery at or below this sequence number ([`Delivery::seq`]) is settled.
    pub cursor: u64,
}

/// One event handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The stored event.
    pub event: Recorded,
    /// The transport's order of this delivery within its lease, strictly increasing across the
    /// fetches of one lease: what `after`, `scanned_to` and cursors count in. The embedded
    /// backend uses the log position; a broker whose streams interleave (Redis) numbers its
    /// deliveries itself.
    pub seq: u64,
    /// How many times it has been delivered to this subscription, this one included.
    pub delivery_count: u32,
    /// Redelivered by a replay or a DLQ replay (the envelope's `replay` extension is set too).
    pub replay: bool,
    /// Set for replayed deliveries: the queue entry settling removes.
    pub requeue_id: Option<u64>,
    /// When this process received it.
    pub received_at: Timestamp,
    /// The subscription's inbox already has it: settle it without running the handler.
    pub handled: bool,
}

/// The result of a fetch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fetched {
    /// The deliveries, replayed ones first.
    pub deliveries: Vec<Delivery>,
    /// Every delivery of the partition up to this sequence number is in `deliveries` or was
    /// at or below `after`: the next fetch may start here.
    pub scanned_to: u64,
}

/// One failed attempt, kept in the dead-letter entry's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based attempt number (the delivery count at the time).
    pub number: u32,
    /// When it failed.
    pub at: Timestamp,
    /// The consumer that ran it.
    pub consumer: String,
    /// The error, as displayed.
    pub error: String,
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// Every attempt failed.
    Exhausted,
    /// The handler declared the failure permanent.
    Rejected,
    /// The envelope or its payload could not be decoded.
    Undecodable,
    /// The payload failed its JSON Schema.
    SchemaInvalid,
}

/// What becomes of a settled delivery.
#[derive(Debug)]
pub enum Outcome<W> {
    /// The handler succeeded: commit its transactional `work` (if any), append the `caused`
    /// events and record the event in the inbox, atomically.
    Handled {
        /// Backend-specific transactional work of the handler.
        work: Option<W>,
        /// Events caused by this one.
        caused: Vec<Append>,
    },
    /// The inbox says it was handled before: only settle it.
    Duplicate,
    /// Park it in the subscription's dead-letter queue.
    Dead(DeadLetter),
}

/// A finished delivery handed back to the transport.
#[derive(Debug)]
pub struct Settlement<W> {
    /// Its position in the log.
    pub position: Position,
    /// Its [`Delivery::seq`].
    pub seq: u64,
    /// Its event id.
    pub event_id: String,
    /// The replay queue entry to remove, for replayed deliveries.
    pub requeue_id: Option<u64>,
    /// What to commit.
    pub outcome: Outcome<W>,
}

/// A dead-letter entry as written: the event, why, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Subscription whose DLQ it goes to.
    pub subscription: String,
    /// Handler that failed (its registered name).
    pub handler: String,
    /// Why it is here.
    pub reason: DeadReason,
    /// The last error.
    pub error: String,
    /// Every failed attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Stream, partition and position it was delivered from.
    pub stream: String,
    /// Partition it was delivered from.
    pub partition: u32,
    /// Position in the log.
    pub position: Position,
    /// The event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
}

/// A stored dead-letter entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    /// DLQ entry id.
    pub id: u64,
    /// The entry.
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// When it was parked.
    pub dead_at: Timestamp,
    /// When it was last replayed, if ever.
    pub replayed_at: Option<Timestamp>,
}

/// Health of one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    /// Subscription name.
    pub subscription: String,
    /// Matching events not yet settled (consumer lag).
    pub lag: u64,
    /// Deliveries fetched but not settled.
    pub pending: u64,
    /// Entries in its dead-letter queue.
    pub dlq_depth: u64,
    /// Live consumers.
    pub consumers: u32,
    /// Partitions currently leased.
    pub leased_partitions: u32,
    /// When the newest matching event was recorded.
    pub last_event_at: Option<Timestamp>,
}

/// What a subscription did with one event, for `edubus trace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    /// The subscription does not receive this event type.
    NotSubscribed,
    /// Handled and settled.
    Handled,
    /// Not settled yet; `attempts` failed attempts so far.
    Pending {
        /// Failed attempts recorded.
        attempts: u32,
    },
    /// Parked in the subscription's dead-letter queue.
    DeadLettered {
        /// The DLQ entry id.
        dlq_id: u64,
    },
}

/// Partitioned delivery to subscriptions. See the module documentation for the protocol.
pub trait Transport: Send + Sync + 'static {
    /// A handler's transactional work, committed together with its settlement.
    type Work: Send + 'static;

    /// Number of partitions every stream is split into.
    fn partitions(&self) -> u32;

    /// Creates the subscription, or updates its types and ordering if it exists.
    fn register(&self, spec: &SubscriptionSpec) -> impl Future<Output = Result<()>> + Send;

    /// Renews `consumer`'s membership and leases and rebalances partitions; returns the leases
    /// it holds now. `busy_since` gives, per held partition, when its oldest in-flight delivery
    /// started, so other consumers can claim stalled partitions.
    fn rebalance(
        &self,
        subscription: &str,
        consumer: &ConsumerId,
        options: LeaseOptions,
        busy_since: &[(u32, Timestamp)],
    ) -> impl Future<Output = Result<Vec<Lease>>> + Send;

    /// Gives leases back (on shutdown or when over the fair share).
    fn release(
        &self,
        consumer: &ConsumerId,
        leases: &[Lease],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Up to `max` deliveries of the lease's partition: replay-queue entries with an id above
    /// `after_requeue` first (by id), then deliveries after sequence number `after` (by
    /// [`Delivery::seq`]).
    fn fetch(
        &self,
        lease: &Lease,
        after: u64,
        after_requeue: u64,
        max: usize,
    ) -> impl Future<Output = Result<Fetched>> + Send;

    /// Of these `(position, event id)` deliveries, the ids the subscription already handled.
    fn seen(
        &self,
        lease: &Lease,
        deliveries: &[(Position, String)],
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Commits finished deliveries and advances the lease's cursor to `cursor`. Each settlement
    /// commits atomically on its own; the result says, per settlement, whether it committed.
    /// A stale lease epoch fails the whole call with `Conflict`.
    fn settle(
        &self,
        lease: &Lease,
        settlements: Vec<Settlement<Self::Work>>,
        cursor: u64,
    ) -> impl Future<Output = Result<Vec<Result<()>>>> + Send;

    /// Records a failed attempt so the delivery count and history survive a crash.
    fn record_failure(
        &self,
        lease: &Lease,
        position: Position,
        attempt: Attempt,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The failed attempts recorded for a delivery, oldest first.
    fn failures(
        &self,
        subscription: &str,
        position: Position,
    ) -> impl Future<Output = Result<Vec<Attempt>>> + Send;

    /// Returns when deliveries after sequence number `after` (a fetch's `scanned_to`) may exist
    /// in `partition` (any partition when `None`), or after `timeout`. Spurious returns are
    /// allowed.
    fn wait(
        &self,
        partition: Option<u32>,
        after: u64,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// Every registered subscription.
    fn subscriptions(&self) -> impl Future<Output = Result<Vec<SubscriptionSpec>>> + Send;

    /// For each event, what each registered subscription did with it (subscriptions by name).
    fn states(
        &self,
        events: &[Recorded],
    ) -> impl Future<Output = Result<Vec<Vec<(String, DeliveryState)>>>> + Send;

    /// Health of every subscription.
    fn stats(&self) -> impl Future<Output = Result<Vec<SubscriptionStats>>> + Send;

    /// Deletes transport entries recorded before `before` that every subscription has settled;
    /// returns how many were removed. Never removes an entry some subscription still needs.
    fn trim(&self, before: Timestamp) -> impl Future<Output = Result<u64>> + Send;
}

/// Dead-letter queue management; every action is recorded in the audit store.
pub trait DeadLetterQueue: Send + Sync + 'static {
    /// Entries, oldest first, of one subscription or all, after entry id `after`.
    fn list(
        &self,
        subscription: Option<&str>,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetterEntry>>> + Send;

    /// One entry.
    fn get(&self, id: u64) -> impl Future<Output = Result<Option<DeadLetterEntry>>> + Send;

    /// Queues the entries for redelivery to their own subscription only, marked `replay`.
    fn replay(&self, ids: &[u64], actor: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes the entries.
    fn purge(&self, ids: &[u64], actor: &str) -> impl Future<Output = Result<u64>> + Send;
}

/// Redelivery of stored events to one subscription.
pub trait Replay: Send + Sync + 'static {
    /// Queues every matching event of `subscription` from `from` (a position) or recorded at or
    /// after `since`, for redelivery marked `replay`; returns how many were queued.
    fn replay(
        &self,
        subscription: &str,
        from: Position,
        since: Option<Timestamp>,
        actor: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// Every role a complete deployment plays: store, transport, dead letters and replay. The
/// HTTP gateway, the command line and the conformance suite run on any such backend.
pub trait Backend: EventStore + Transport + DeadLetterQueue + Replay + Clone {}

impl<T: EventStore + Transport + DeadLetterQueue + Replay + Clone> Backend for T {}
