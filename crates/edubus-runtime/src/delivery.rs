//! One delivery: inbox check, validation, decoding, the handler with its retries, and the
//! dead letter when it gives up.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

use edubus_core::{
    Append, Attempt, DeadLetter, DeadReason, Delivery, EventStore, Lease, Transport,
};
use futures_util::FutureExt as _;
use jiff::Timestamp;
use metrics::{Counter, Histogram};
use tracing::Instrument as _;

use crate::handler::{HandlerContext, Staged};
use crate::partition::Busy;
use crate::worker::SubState;

/// A finished delivery, ready to settle.
pub(crate) struct Done<W> {
    pub(crate) delivery: Delivery,
    pub(crate) key: Arc<str>,
    pub(crate) finished: Finished<W>,
}

/// How a delivery finished.
pub(crate) enum Finished<W> {
    Handled {
        work: Option<W>,
        caused: Vec<Append>,
    },
    Duplicate,
    Dead(DeadLetter),
}

/// How a delivery task begins.
pub(crate) enum Start {
    /// Run the handler.
    Fresh,
    /// The inbox has it: settle as a duplicate without running the handler.
    Seen,
    /// Its previous attempt failed at settlement with this error: record it, back off, retry.
    Retry(String),
}

/// Why one attempt did not succeed.
enum Failure {
    /// Retry after a backoff.
    Transient(String),
    /// Dead-letter now, for this reason.
    Final(DeadReason, String),
}

/// Runs `delivery` to completion: handled, a duplicate, or dead.
pub(crate) async fn deliver<B: EventStore + Transport>(
    sub: Arc<SubState<B>>,
    lease: Lease,
    mut delivery: Delivery,
    key: Arc<str>,
    busy: Busy,
    token: u64,
    start: Start,
) -> Done<B::Work> {
    let Ok(_permit) = Arc::clone(&sub.permits).acquire_owned().await else {
        let finished = Finished::Dead(letter(
            &sub,
            &delivery,
            DeadReason::Exhausted,
            "worker closed".into(),
            Vec::new(),
        ));
        return Done {
            delivery,
            key,
            finished,
        };
    };
    let beat = Beat { busy: &busy, token };
    let env = &delivery.event.envelope;
    let span = tracing::info_span!(
        "handle_event",
        subscription = %sub.name,
        event_type = %env.event_type,
        event_id = %env.id,
        correlation_id = %env.correlation_id(),
        traceparent = %env.traceparent.as_deref().unwrap_or_default(),
        position = delivery.event.position,
    );
    let finished = attempts(&sub, &lease, &mut delivery, start, &beat)
        .instrument(span)
        .await;
    beat.done();
    Done {
        delivery,
        key,
        finished,
    }
}

/// Reports this delivery's progress to the partition: the start of its current attempt or
/// backoff, so a partition counts as stalled only when one step takes longer than
/// `claim_after`.
struct Beat<'a> {
    busy: &'a Busy,
    token: u64,
}

impl Beat<'_> {
    fn now(&self) {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.insert(self.token, Timestamp::now());
    }

    fn done(&self) {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.remove(&self.token);
    }
}

async fn attempts<B: EventStore + Transport>(
    sub: &SubState<B>,
    lease: &Lease,
    delivery: &mut Delivery,
    start: Start,
    beat: &Beat<'_>,
) -> Finished<B::Work> {
    let policy = sub.options.retry;
    beat.now();
    let mut attempt = delivery.delivery_count;
    if !subscribed(sub, &delivery.event.envelope.event_type) {
        // A transport that delivers whole streams (Redis) also hands over the other types
        // of a shared stream: they are not this subscription's business, only settled.
        return Finished::Duplicate;
    }
    match start {
        Start::Fresh => {}
        Start::Seen => {
            sub.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Finished::Duplicate;
        }
        Start::Retry(error) => {
            let failure = Failure::Transient(error);
            if let Some(dead) = failed(sub, lease, delivery, attempt - 1, failure).await {
                return dead;
            }
        }
    }
    loop {
        if attempt > policy.max_attempts {
            let error = format!(
                "delivered {} times, more than the {} attempts allowed",
                attempt - 1,
                policy.max_attempts
            );
            return dead(sub, delivery, DeadReason::Exhausted, error).await;
        }
        beat.now();
        let started = std::time::Instant::now();
        let result = run_once(sub, delivery, attempt).await;
        let metrics = metrics_of(sub, delivery);
        metrics.duration.record(started.elapsed().as_secs_f64());
        match result {
            Ok(staged) => {
                sub.stats.handled.fetch_add(1, Ordering::Relaxed);
                metrics.consumed.increment(1);
                return Finished::Handled {
                    work: staged.work,
                    caused: staged.caused,
                };
            }
            Err(failure) => {
                beat.now();
                if let Some(dead) = failed(sub, lease, delivery, attempt, failure).await {
                    return dead;
                }
            }
        }
        attempt += 1;
    }
}

/// Whether the subscription handles some version of `event_type` (a canonical name or an
/// alias of one).
fn subscribed<B: EventStore + Transport>(sub: &SubState<B>, event_type: &str) -> bool {
    let catalog = sub.bus.validator().catalog();
    let name = catalog
        .resolve(event_type)
        .map_or(event_type, |spec| spec.name.as_str());
    sub.handlers.keys().any(|(handled, _)| handled == name)
}

/// Records a failed attempt and waits out the backoff, or returns the dead letter.
async fn failed<B: EventStore + Transport>(
    sub: &SubState<B>,
    lease: &Lease,
    delivery: &Delivery,
    attempt: u32,
    failure: Failure,
) -> Option<Finished<B::Work>> {
    sub.stats.failed.fetch_add(1, Ordering::Relaxed);
    metrics_of(sub, delivery).failed.increment(1);
    let error = match failure {
        Failure::Final(reason, error) => return Some(dead(sub, delivery, reason, error).await),
        Failure::Transient(error) => error,
    };
    let record = Attempt {
        number: attempt,
        at: Timestamp::now(),
        consumer: sub.consumer.0.clone(),
        error: error.clone(),
    };
    if let Err(e) = sub
        .bus
        .backend()
        .record_failure(lease, delivery.event.position, record)
        .await
    {
        tracing::warn!(subscription = %sub.name, error = %e, "cannot record a failed attempt");
    }
    if attempt >= sub.options.retry.max_attempts {
        return Some(dead(sub, delivery, DeadReason::Exhausted, error).await);
    }
    sub.stats.retried.fetch_add(1, Ordering::Relaxed);
    metrics_of(sub, delivery).retried.increment(1);
    tracing::debug!(subscription = %sub.name, attempt, %error, "handler failed; retrying");
    tokio::time::sleep(sub.options.retry.delay(attempt)).await;
    None
}

/// One attempt: validate, decode, run the handler (a panic fails the attempt).
///
/// The handler's context shares the delivery's envelope: lent for the attempt (with its
/// `attempt` and `replay` set) and taken back after it, copied only if the handler kept it.
async fn run_once<B: EventStore + Transport>(
    sub: &SubState<B>,
    d: &mut Delivery,
    attempt: u32,
) -> Result<Staged<B::Work>, Failure> {
    let env = &d.event.envelope;
    let (name, version) = match sub.options.validate {
        true => match sub.bus.validator().validate(env) {
            Ok(v) => (v.event.name.clone(), v.event.version),
            Err(e) => return Err(Failure::Final(DeadReason::SchemaInvalid, e.to_string())),
        },
        false => (env.event_type.clone(), env.schemaversion.unwrap_or(1)),
    };
    let Some((_, handler)) = sub.handlers.get(&(name.clone(), version)) else {
        return Err(Failure::Final(
            DeadReason::Undecodable,
            format!("no handler for {name} v{version}"),
        ));
    };
    let (own_attempt, own_replay) = (env.attempt, env.replay);
    let mut lent = std::mem::take(&mut d.event.envelope);
    lent.attempt = Some(attempt);
    lent.replay = d.replay.then_some(true);
    let envelope = Arc::new(lent);
    let result = async {
        let ctx = HandlerContext::<B>::new(
            Arc::clone(&envelope),
            attempt,
            d.replay,
            Arc::clone(&sub.name),
            Arc::clone(&sub.source),
        );
        let staged = ctx.staged();
        let fut = handler
            .call(&envelope.data, ctx)
            .map_err(|e| Failure::Final(DeadReason::Undecodable, e))?;
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_permanent() => {
                return Err(Failure::Final(DeadReason::Rejected, e.to_string()));
            }
            Ok(Err(e)) => return Err(Failure::Transient(e.to_string())),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a panic without a message");
                return Err(Failure::Transient(format!("handler panicked: {message}")));
            }
        }
        let mut staged = staged.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Staged {
            caused: std::mem::take(&mut staged.caused),
            work: staged.work.take(),
        })
    }
    .await;
    let mut back = Arc::try_unwrap(envelope).unwrap_or_else(|kept| (*kept).clone());
    back.attempt = own_attempt;
    back.replay = own_replay;
    d.event.envelope = back;
    result
}

async fn dead<B: EventStore + Transport>(
    sub: &SubState<B>,
    d: &Delivery,
    reason: DeadReason,
    error: String,
) -> Finished<B::Work> {
    sub.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    metrics_of(sub, d).dead_lettered.increment(1);
    let attempts = sub
        .bus
        .backend()
        .failures(&sub.name, d.event.position)
        .await
        .unwrap_or_default();
    tracing::warn!(subscription = %sub.name, event = %d.event.envelope.id, ?reason, %error, "dead-lettered");
    Finished::Dead(letter(sub, d, reason, error, attempts))
}

fn letter<B: EventStore + Transport>(
    sub: &SubState<B>,
    d: &Delivery,
    reason: DeadReason,
    error: String,
    attempts: Vec<Attempt>,
) -> DeadLetter {
    let env = &d.event.envelope;
    let handler = sub
        .handlers
        .get(&(env.event_type.clone(), env.schemaversion.unwrap_or(1)))
        .map_or_else(|| format!("{}/-", sub.name), |(label, _)| label.clone());
    DeadLetter {
        subscription: sub.name.to_string(),
        handler,
        reason,
        error,
        attempts,
        stream: d.event.stream.clone(),
        partition: d.event.partition,
        position: d.event.position,
        event_id: env.id.clone(),
        event_type: env.event_type.clone(),
    }
}

/// The Prometheus handles of `d`'s event type in `sub`.
fn metrics_of<B: EventStore + Transport>(sub: &SubState<B>, d: &Delivery) -> Arc<Handles> {
    sub.metrics.of(&sub.name, &d.event.envelope.event_type)
}

/// One subscription's Prometheus handles by event type (seed 002's `eventbus_*` names).
///
/// A type's handles come from the global recorder at its first delivery and are kept, so a
/// delivery builds no label strings; install the recorder before running workers.
#[derive(Default)]
pub(crate) struct TypeMetrics(RwLock<HashMap<String, Arc<Handles>>>);

/// The handles of one subscription and event type.
pub(crate) struct Handles {
    consumed: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    duration: Histogram,
}

impl TypeMetrics {
    fn of(&self, subscription: &str, event_type: &str) -> Arc<Handles> {
        let known = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = known.get(event_type) {
            return Arc::clone(handles);
        }
        drop(known);
        let labels = [
            ("event_type", event_type.to_owned()),
            ("subscription", subscription.to_owned()),
        ];
        let handles = Arc::new(Handles {
            consumed: metrics::counter!("eventbus_consumed_total", &labels),
            failed: metrics::counter!("eventbus_failed_total", &labels),
            retried: metrics::counter!("eventbus_retry_total", &labels),
            dead_lettered: metrics::counter!("eventbus_dlq_total", &labels),
            duration: metrics::histogram!("eventbus_processing_duration_seconds", &labels),
        });
        let mut known = self.0.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(known.entry(event_type.to_owned()).or_insert(handles))
    }
}
