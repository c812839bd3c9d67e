//! The scripted handler every case and the worker binary run: it logs each invocation,
//! decides what to do with it, and records its effect in the settlement's transaction.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edubus_events::AttendanceMarked;
use edubus_runtime::{HandlerContext, HandlerError, WorkerBuilder};
use tokio::sync::watch;

use crate::events::{breach_of, seq_of};
use crate::harness::Harness;

/// Exit code of a worker that crashed on purpose ([`Action::Exit`]).
pub const CRASH_EXIT_CODE: i32 = 86;

/// What the handler does with one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Record the effect transactionally and succeed.
    Record,
    /// Fail transiently (retried).
    Fail,
    /// Fail permanently (dead-lettered at once).
    Reject,
    /// Wait until the script is released, then record and succeed.
    Hang,
    /// Stage work that records the effect and then fails inside the transaction.
    FailWork,
    /// Exit the process at once, before the event is settled (a crash).
    Exit,
}

/// One call of the handler, as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Label of the worker that ran it.
    pub worker: String,
    /// Subscription.
    pub subscription: String,
    /// Partition key.
    pub key: String,
    /// Sequence number from the payload.
    pub seq: u64,
    /// Event id.
    pub event_id: String,
    /// `ctx.attempt()`: the delivery count, carried over across consumers.
    pub attempt: u32,
    /// `ctx.is_replay()`.
    pub replay: bool,
    /// The envelope's `replay` extension as the handler received it.
    pub envelope_replay: Option<bool>,
}

type Decide = Box<dyn Fn(&Invocation) -> Action + Send + Sync>;

/// A handler's behaviour and the log of its invocations.
pub struct Script {
    worker: String,
    decide: Decide,
    delay: Duration,
    cause: bool,
    log: Mutex<Vec<Invocation>>,
    release: watch::Sender<bool>,
}

impl Script {
    /// A script for worker `worker` choosing each invocation's action with `decide`.
    pub fn new(
        worker: impl Into<String>,
        decide: impl Fn(&Invocation) -> Action + Send + Sync + 'static,
    ) -> Self {
        Self {
            worker: worker.into(),
            decide: Box::new(decide),
            delay: Duration::ZERO,
            cause: false,
            log: Mutex::new(Vec::new()),
            release: watch::channel(false).0,
        }
    }

    /// A script that records every event.
    pub fn recording(worker: impl Into<String>) -> Self {
        Self::new(worker, |_| Action::Record)
    }

    /// Each invocation first takes `delay` (so handlers are in flight for a while).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Each invocation publishes an `attendance.threshold_breached` caused by its event.
    pub fn with_caused_events(mut self) -> Self {
        self.cause = true;
        self
    }

    /// Lets every [`Action::Hang`] invocation, present and future, go on.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// Every invocation so far, in call order.
    pub fn log(&self) -> Vec<Invocation> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Invocation>> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds this script's `attendance.marked` handler to the subscription declared last.
    pub fn attach<H: Harness>(
        self: &Arc<Self>,
        builder: WorkerBuilder<H::Backend>,
        harness: &Arc<H>,
    ) -> WorkerBuilder<H::Backend> {
        let (script, harness) = (Arc::clone(self), Arc::clone(harness));
        builder.on::<AttendanceMarked, _, _>(move |event, ctx| {
            let (script, harness) = (Arc::clone(&script), Arc::clone(&harness));
            async move { script.handle(&*harness, event, ctx).await }
        })
    }

    async fn handle<H: Harness>(
        &self,
        harness: &H,
        event: AttendanceMarked,
        ctx: HandlerContext<H::Backend>,
    ) -> Result<(), HandlerError> {
        let call = self.invocation(&event, &ctx);
        let action = (self.decide)(&call);
        self.lock().push(call.clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.cause {
            ctx.publish_caused(&breach_of(&event))?;
        }
        let (sub, key, seq, id) = (&call.subscription, &call.key, call.seq, &call.event_id);
        match action {
            Action::Record => ctx.transaction(harness.record(sub, key, seq, id)),
            Action::Fail => return Err(HandlerError::transient("scripted transient failure")),
            Action::Reject => return Err(HandlerError::permanent("scripted permanent failure")),
            Action::Hang => {
                let _ = self.release.subscribe().wait_for(|go| *go).await;
                ctx.transaction(harness.record(sub, key, seq, id));
            }
            Action::FailWork => ctx.transaction(harness.record_then_fail(sub, key, seq, id)),
            Action::Exit => std::process::exit(CRASH_EXIT_CODE),
        }
        Ok(())
    }

    fn invocation<B: edubus_core::Transport>(
        &self,
        event: &AttendanceMarked,
        ctx: &HandlerContext<B>,
    ) -> Invocation {
        Invocation {
            worker: self.worker.clone(),
            subscription: ctx.subscription().to_owned(),
            key: event.student_id.to_string(),
            seq: seq_of(event),
            event_id: ctx.envelope().id.clone(),
            attempt: ctx.attempt(),
            replay: ctx.is_replay(),
            envelope_replay: ctx.envelope().replay,
        }
    }
}
