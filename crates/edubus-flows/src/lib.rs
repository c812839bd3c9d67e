//! Reference flows of an education platform running on edubus: enrollment provisioning,
//! chronic-absence escalation, weighted grade averages, course access and the essay
//! assessment pipeline, each a subscription with transactional handlers and a read model.
//!
//! Register them all on a worker with [`register`]; read their read models with
//! [`read::ReadModels`]. Every handler turns its event into a [`state::Step`] that runs in the
//! settlement's transaction, so read-model writes, caused events and the inbox row commit
//! together (or not at all) on every backend.

pub mod access;
pub mod attendance;
pub mod comms;
pub mod enrollment;
pub mod essays;
pub mod grading;
pub mod read;
pub mod state;

use std::fmt;
use std::sync::Arc;

use edubus_core::Envelope;
use edubus_runtime::{HandlerContext, HandlerError, SubscriptionOptions, WorkerBuilder};
use uuid::Uuid;

pub use state::{DocRef, Docs, Effects, FlowBackend, Step, Table};

/// Settings of the flows.
#[derive(Clone)]
pub struct FlowConfig {
    /// Days absent at which `attendance.threshold_breached` is published.
    pub absence_threshold: u32,
    /// Homerooms new students are assigned to, in turn.
    pub homerooms: Vec<Uuid>,
    /// Courses every new student is enrolled in.
    pub courses: Vec<Uuid>,
    /// Options of every flow subscription.
    pub options: SubscriptionOptions,
    /// Failures to inject, for demonstrations of retries and dead letters.
    pub faults: Faults,
    /// Called with each envelope as a flow handler starts on it (latency measurement).
    pub observer: Option<Observer>,
}

/// A callback seeing each envelope a flow handler starts on.
pub type Observer = Arc<dyn Fn(&Envelope) + Send + Sync>;

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            absence_threshold: 10,
            homerooms: (1..=4).map(|n| named_id("homeroom", n)).collect(),
            courses: (1..=5).map(|n| named_id("course", n)).collect(),
            options: SubscriptionOptions::default(),
            faults: Faults::default(),
            observer: None,
        }
    }
}

impl fmt::Debug for FlowConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowConfig")
            .field("absence_threshold", &self.absence_threshold)
            .field("homerooms", &self.homerooms)
            .field("courses", &self.courses)
            .field("options", &self.options)
            .field("faults", &self.faults)
            .field("observer", &self.observer.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// A stable id for the `n`th thing of a kind (default homerooms, courses, templates).
pub fn named_id(kind: &str, n: u32) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{kind}/{n}").as_bytes())
}

/// The namespace of the ids the flows derive (UUID v5).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6564_7562_7573_4f77_8e1a_5c3d_2b1f_0a01);

/// Injected handler failures, chosen from the event id so a run is reproducible.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Share (0 to 1) of events whose first attempt fails; the retry succeeds.
    pub transient: f64,
    /// Share (0 to 1) of events that fail on every attempt and end in the dead-letter queue.
    pub permanent: f64,
}

impl Faults {
    /// Whether `subscription` fails on every attempt at the event `id` (and so dead-letters
    /// it), for predicting and checking the injected dead letters.
    pub fn always_fails(&self, id: &str, subscription: &str) -> bool {
        unit_hash(id, subscription) < self.permanent
    }

    /// The failure to inject for this delivery, if any.
    fn inject(
        &self,
        envelope: &Envelope,
        subscription: &str,
        attempt: u32,
    ) -> Option<HandlerError> {
        if self.transient <= 0.0 && self.permanent <= 0.0 {
            return None;
        }
        if self.always_fails(&envelope.id, subscription) {
            return Some(HandlerError::transient(format!(
                "injected fault: {subscription} always fails on {}",
                envelope.id
            )));
        }
        let roll = unit_hash(&envelope.id, subscription);
        (roll < self.permanent + self.transient && attempt == 1).then(|| {
            HandlerError::transient(format!(
                "injected fault: first attempt of {subscription} on {}",
                envelope.id
            ))
        })
    }
}

/// A number in [0, 1) from the event id and subscription (FNV-1a), stable across runs.
fn unit_hash(id: &str, subscription: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain([0]).chain(subscription.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The top 53 bits make an exact f64 fraction.
    #[allow(clippy::cast_precision_loss)]
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    unit
}

/// Stages `step` as the transactional work of this delivery, after the observer and any
/// injected fault.
pub(crate) fn stage<B: FlowBackend>(
    ctx: &HandlerContext<B>,
    config: &FlowConfig,
    step: impl Step,
) -> Result<(), HandlerError> {
    if let Some(observe) = &config.observer {
        observe(ctx.envelope());
    }
    if let Some(fault) = config
        .faults
        .inject(ctx.envelope(), ctx.subscription(), ctx.attempt())
    {
        return Err(fault);
    }
    ctx.transaction(B::work(Box::new(step)));
    Ok(())
}

/// The subscriptions [`register`] adds, in order.
pub const SUBSCRIPTIONS: [&str; 8] = [
    enrollment::SUBSCRIPTION,
    comms::SUBSCRIPTION,
    attendance::SUBSCRIPTION,
    grading::SUBSCRIPTION,
    access::SUBSCRIPTION,
    essays::LIFECYCLE,
    essays::ORCHESTRATOR,
    essays::SPELLCHECKER,
];

/// Adds every flow's subscription and handlers to `worker`. Call
/// [`FlowBackend::prepare`] on the backend before running it.
pub fn register<B: FlowBackend>(worker: WorkerBuilder<B>, config: &FlowConfig) -> WorkerBuilder<B> {
    let config = Arc::new(config.clone());
    let worker = enrollment::register(worker, &config);
    let worker = comms::register(worker, &config);
    let worker = attendance::register(worker, &config);
    let worker = grading::register(worker, &config);
    let worker = access::register(worker, &config);
    essays::register(worker, &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_hash_is_spread_and_stable() {
        let rolls: Vec<f64> = (0..1000)
            .map(|n| unit_hash(&format!("event-{n}"), "sub"))
            .collect();
        assert!(rolls.iter().all(|r| (0.0..1.0).contains(r)));
        let low = rolls.iter().filter(|r| **r < 0.1).count();
        assert!((50..150).contains(&low), "{low} of 1000 below 0.1");
        assert_eq!(unit_hash("x", "s"), unit_hash("x", "s"));
        assert_ne!(unit_hash("x", "s"), unit_hash("x", "t"));
    }

    #[test]
    fn about_the_permanent_share_always_fails() {
        let faults = Faults {
            permanent: 0.01,
            transient: 0.0,
        };
        let failing = (0..100_000)
            .filter(|n| faults.always_fails(&format!("event-{n}"), "sub"))
            .count();
        assert!((800..1200).contains(&failing), "{failing}");
    }
}
