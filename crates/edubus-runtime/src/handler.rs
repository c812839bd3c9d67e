//! Typed and envelope handlers, their context and their errors.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use edubus_core::error::BoxError;
use edubus_core::{Append, Envelope, Event, Result, Transport};
use serde_json::Value;

/// Why a handler failed: transient failures are retried, permanent ones dead-lettered at once.
pub struct HandlerError {
    permanent: bool,
    error: BoxError,
}

impl HandlerError {
    /// A failure worth retrying (the default for `?` on any error).
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: false,
            error: error.into(),
        }
    }

    /// A failure no retry can fix: the event goes to the dead-letter queue at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: true,
            error: error.into(),
        }
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.permanent {
            "permanent"
        } else {
            "transient"
        };
        write!(f, "HandlerError({kind}: {})", self.error)
    }
}

/// Builds the envelopes of events caused by one event: same correlation id, causation id =
/// the cause's id. Cloneable into transactional work that decides what to publish.
#[derive(Clone)]
pub struct Caused {
    cause: Arc<Envelope>,
    source: Arc<str>,
}

impl Caused {
    /// The append of `event` caused by this context's event.
    pub fn append<E: Event>(&self, event: &E) -> Result<Append> {
        let envelope = Envelope::from_event(event, &*self.source)?.caused_by(&self.cause);
        Ok(Append {
            envelope,
            stream: E::TOPIC.to_owned(),
        })
    }
}

/// What a handler staged for its settlement.
pub(crate) struct Staged<W> {
    pub(crate) caused: Vec<Append>,
    pub(crate) work: Option<W>,
}

/// What a handler sees of the event being handled, and how it publishes consequences.
pub struct HandlerContext<B: Transport> {
    envelope: Arc<Envelope>,
    attempt: u32,
    replay: bool,
    subscription: Arc<str>,
    caused: Caused,
    staged: Arc<Mutex<Staged<B::Work>>>,
}

impl<B: Transport> HandlerContext<B> {
    pub(crate) fn new(
        envelope: Arc<Envelope>,
        attempt: u32,
        replay: bool,
        subscription: Arc<str>,
        source: Arc<str>,
    ) -> Self {
        let caused = Caused {
            cause: Arc::clone(&envelope),
            source,
        };
        let staged = Arc::new(Mutex::new(Staged {
            caused: Vec::new(),
            work: None,
        }));
        Self {
            envelope,
            attempt,
            replay,
            subscription,
            caused,
            staged,
        }
    }

    pub(crate) fn staged(&self) -> Arc<Mutex<Staged<B::Work>>> {
        Arc::clone(&self.staged)
    }

    /// The envelope of the event (with `attempt` and `replay` set for this delivery).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// This delivery's attempt number, from 1 (counts attempts of crashed workers too).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this is a replayed delivery.
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// The subscription name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// Publishes `event` as caused by this one. It is appended atomically with this event's
    /// settlement, so it exists if and only if the handling succeeded.
    pub fn publish_caused<E: Event>(&self, event: &E) -> Result<()> {
        let append = self.caused.append(event)?;
        self.lock().caused.push(append);
        Ok(())
    }

    /// A builder of caused events to move into transactional work.
    pub fn caused(&self) -> Caused {
        self.caused.clone()
    }

    /// Stages transactional work committed together with this event's settlement and inbox
    /// row (on SQLite, a closure run on the writer's transaction). Replaces earlier work.
    pub fn transaction(&self, work: B::Work) {
        self.lock().work = Some(work);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Staged<B::Work>> {
        self.staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = std::result::Result<(), HandlerError>> + Send>>;

/// A handler with its event type erased: decodes the payload, then runs.
pub(crate) trait ErasedHandler<B: Transport>: Send + Sync {
    fn call(
        &self,
        data: &Value,
        ctx: HandlerContext<B>,
    ) -> std::result::Result<HandlerFuture, String>;
}

pub(crate) struct Typed<E, F> {
    f: F,
    _event: PhantomData<fn(E)>,
}

impl<E, F> Typed<E, F> {
    pub(crate) fn new(f: F) -> Self {
        Self {
            f,
            _event: PhantomData,
        }
    }
}

impl<B, E, F, Fut> ErasedHandler<B> for Typed<E, F>
where
    B: Transport,
    E: Event,
    F: Fn(E, HandlerContext<B>) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
{
    fn call(
        &self,
        data: &Value,
        ctx: HandlerContext<B>,
    ) -> std::result::Result<HandlerFuture, String> {
        let event = E::deserialize(data)
            .map_err(|e| format!("cannot decode {} v{}: {e}", E::NAME, E::VERSION))?;
        Ok(Box::pin((self.f)(event, ctx)))
    }
}

/// A handler of raw envelopes, whatever their type: it decodes nothing.
pub(crate) struct Untyped<F>(pub(crate) F);

impl<B, F, Fut> ErasedHandler<B> for Untyped<F>
where
    B: Transport,
    F: Fn(Arc<Envelope>, HandlerContext<B>) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
{
    fn call(
        &self,
        _data: &Value,
        ctx: HandlerContext<B>,
    ) -> std::result::Result<HandlerFuture, String> {
        Ok(Box::pin((self.0)(Arc::clone(&ctx.envelope), ctx)))
    }
}
