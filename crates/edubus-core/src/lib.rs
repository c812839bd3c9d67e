#![doc = include_str!("../README.md")]

pub mod envelope;
pub mod error;
pub mod event;
mod json;
pub mod store;
pub mod transport;

pub use envelope::{Envelope, EnvelopeError};
pub use error::{Error, ErrorKind, Issue, Result};
pub use event::Event;
pub use store::{
    Append, Appended, AuditEntry, EventStore, Position, ReadQuery, Recorded, partition_of,
};
pub use transport::{
    Attempt, Backend, ConsumerId, DeadLetter, DeadLetterEntry, DeadLetterQueue, DeadReason,
    Delivery, DeliveryState, Fetched, Lease, LeaseOptions, Outcome, Replay, Settlement, StartFrom,
    SubscriptionSpec, SubscriptionStats, Transport,
};
