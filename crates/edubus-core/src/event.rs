//! The trait every generated event struct implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One version of one catalog event, as a Rust type generated from the catalog.
///
/// Implemented only by `edubus-events`; the constants mirror the catalog entry so code can
/// publish and route without looking anything up at run time.
pub trait Event: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Canonical catalog name (`attendance.marked`).
    const NAME: &'static str;
    /// Catalog version of this payload shape.
    const VERSION: u32;
    /// The stream (topic) the event is published on.
    const TOPIC: &'static str;
    /// Name of the payload field that is the partition key.
    const KEY_FIELD: &'static str;
    /// Aggregate type carried in `aggregatetype`, if the catalog names one.
    const AGGREGATE: Option<&'static str>;

    /// The partition key: the value of [`Event::KEY_FIELD`] as a string.
    fn key(&self) -> String;

    /// The stream (topic) name, as seed 004's `topic_name()` gives it.
    fn topic_name() -> &'static str {
        Self::TOPIC
    }
}
