//! The essay assessment pipeline (seed 004, HuleEdu) as three subscriptions sharing one read
//! model, the [`Batch`] document in [`Table::Batches`]:
//!
//! - [`LIFECYCLE`] (Essay Lifecycle Service): `batch.essays.registered` creates the batch with
//!   one slot per pre-allocated essay id; `essay.content.provisioned` fills the slot of its own
//!   essay id when that is free, else the first free slot (`essay.slot.assigned`), or reports
//!   `excess.content.provisioned` when none is free; `essay.validation.failed` counts the
//!   failed upload toward the expected essays. When filled slots and failed uploads reach the
//!   expected count, `batch.essays.ready` is published once and the batch takes no more
//!   content. `essay.spellcheck.completed` is recorded per ready essay; when every ready essay
//!   has a result, `spellcheck.phase.completed` is published once.
//! - [`ORCHESTRATOR`] (Batch Orchestrator Service): `batch.essays.ready` sends
//!   `batch.spellcheck.initiate.command` for the ready essays, or `batch.phase.skipped` when
//!   there are none.
//! - [`SPELLCHECKER`] (Spellchecker Service): the command yields one
//!   `essay.spellcheck.completed` per essay, from the reference [`reference_corrections`].
//!
//! Every event is keyed by batch id, so a subscription handles a batch's events in order.
//! Every handler is idempotent by the batch's state: an upload, result or command seen before
//! changes nothing, and each announcement is recorded on the batch so it is published once.
//! An event about a batch that is not registered fails and is retried, then dead-lettered.

mod batch;
mod lifecycle;
mod orchestrator;
mod spellchecker;

use std::sync::Arc;

use edubus_core::error::BoxError;
use edubus_core::{Append, Event};
use edubus_events::{
    BatchEssaysReady, BatchEssaysRegistered, BatchSpellcheckInitiateCommand,
    EssayContentProvisioned, EssaySpellcheckCompleted, EssayValidationFailed,
};
use edubus_runtime::{Caused, HandlerError, WorkerBuilder};
use uuid::Uuid;

pub use batch::{
    Batch, EssayResult, EssaySlot, PhaseSummary, Readiness, SlotContent, SpellcheckPhase,
    SpellcheckRequest,
};
pub use spellchecker::reference_corrections;

use crate::state::{DocRef, Docs, Effects, FlowBackend, Step, Table};
use crate::{FlowConfig, stage};

/// The essay lifecycle subscription (Essay Lifecycle Service).
pub const LIFECYCLE: &str = "essay-lifecycle";
/// The batch orchestrator subscription (Batch Orchestrator Service).
pub const ORCHESTRATOR: &str = "batch-orchestrator";
/// The spellchecker subscription: a reference stand-in for the Spellchecker Service, where a
/// deployment plugs in its real spellchecker (see [`reference_corrections`]).
pub const SPELLCHECKER: &str = "spellchecker";

/// Registers the three subscriptions and their handlers.
pub fn register<B: FlowBackend>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
) -> WorkerBuilder<B> {
    let worker = worker.subscription(LIFECYCLE, config.options.clone());
    let worker = on(worker, config, lifecycle::registered);
    let worker = on(worker, config, lifecycle::provisioned);
    let worker = on(worker, config, lifecycle::validation_failed);
    let worker = on(worker, config, lifecycle::spellcheck_completed);
    let worker = worker.subscription(ORCHESTRATOR, config.options.clone());
    let worker = on(worker, config, orchestrator::ready);
    let worker = worker.subscription(SPELLCHECKER, config.options.clone());
    on(worker, config, spellchecker::initiate)
}

/// What a handler does to a batch: changes the document (or creates it) and collects the
/// events it causes.
type Apply<E> = fn(&E, &Caused, &mut Option<Batch>, &mut Vec<Append>) -> Result<(), BoxError>;

/// An event of the pipeline: it names its batch, and may be refused outright as malformed.
trait OfBatch: Event {
    /// The batch the event is about (its partition key).
    fn batch_id(&self) -> Uuid;
    /// Why the event can never be handled, if it cannot (dead-lettered at once).
    fn malformed(&self) -> Option<String> {
        None
    }
}

macro_rules! of_batch {
    ($($event:ty),*) => {
        $(impl OfBatch for $event {
            fn batch_id(&self) -> Uuid {
                self.batch_id
            }
        })*
    };
}

of_batch!(
    EssayContentProvisioned,
    EssayValidationFailed,
    EssaySpellcheckCompleted,
    BatchEssaysReady,
    BatchSpellcheckInitiateCommand
);

impl OfBatch for BatchEssaysRegistered {
    fn batch_id(&self) -> Uuid {
        self.batch_id
    }

    fn malformed(&self) -> Option<String> {
        Batch::registered(self).err()
    }
}

/// The batch `event` is about, or the error naming the event, the batch and `why` no
/// document exists (retried, then dead-lettered).
fn existing<'a, E: OfBatch>(
    batch: &'a mut Option<Batch>,
    event: &E,
    why: &str,
) -> Result<&'a mut Batch, BoxError> {
    batch
        .as_mut()
        .ok_or_else(|| format!("{} for batch {}: {why}", E::NAME, event.batch_id()).into())
}

/// Adds the handler of `E` that runs `apply` on the event's batch, in the subscription
/// declared last.
fn on<B: FlowBackend, E: OfBatch>(
    worker: WorkerBuilder<B>,
    config: &Arc<FlowConfig>,
    apply: Apply<E>,
) -> WorkerBuilder<B> {
    let config = Arc::clone(config);
    worker.on::<E, _, _>(move |event, ctx| {
        let staged = match event.malformed() {
            Some(why) => Err(HandlerError::permanent(why)),
            None => {
                let step = OnBatch {
                    batch_id: event.batch_id(),
                    caused: ctx.caused(),
                    event,
                    apply,
                };
                stage(&ctx, &config, step)
            }
        };
        async move { staged }
    })
}

/// The step of every essay handler: reads the batch, applies the handler, and writes the
/// batch back only when it changed, so a handled-before event leaves it untouched.
struct OnBatch<E> {
    batch_id: Uuid,
    event: E,
    caused: Caused,
    apply: Apply<E>,
}

impl<E: OfBatch> Step for OnBatch<E> {
    fn reads(&self) -> Vec<DocRef> {
        vec![DocRef::new(Table::Batches, self.batch_id.to_string())]
    }

    fn decide(self: Box<Self>, docs: Docs) -> Result<Effects, BoxError> {
        let before: Option<Batch> = docs.get(0)?;
        let mut batch = before.clone();
        let mut events = Vec::new();
        (self.apply)(&self.event, &self.caused, &mut batch, &mut events)?;
        let mut effects = Effects::default();
        if let Some(after) = batch.filter(|b| before.as_ref() != Some(b)) {
            effects.write(
                DocRef::new(Table::Batches, self.batch_id.to_string()),
                &after,
            )?;
        }
        for event in events {
            effects.publish(event);
        }
        Ok(effects)
    }
}
