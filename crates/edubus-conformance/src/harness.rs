//! What a backend provides to run the suite: isolated storage, instances on it, and
//! transactional recording of handler effects.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;

use edubus_core::Transport;

pub use edubus_core::Backend;

/// A handler's transactional work on the harness's backend.
pub type Work<H> = <<H as Harness>::Backend as Transport>::Work;

/// One recorded handler effect: written in the same transaction as the event's settlement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Observation {
    /// Subscription that handled the event.
    pub subscription: String,
    /// The event's partition key.
    pub key: String,
    /// The event's sequence number (its publish order, from the payload).
    pub seq: u64,
    /// The event id.
    pub event_id: String,
}

/// One action of the audit trail (DLQ replay, purge, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Who did it.
    pub actor: String,
    /// What (`dlq.replay`, `dlq.purge`, ...).
    pub action: String,
    /// On what (a DLQ entry id, a subscription).
    pub subject: String,
}

/// A backend under test. Each case gets a new harness value from the `suite!` expression.
///
/// A *storage* is an isolated place (a file, a key prefix, a schema); several backend
/// instances may be opened on one storage, as several processes would.
pub trait Harness: Send + Sync + Sized + 'static {
    /// The backend type.
    type Backend: Backend;
    /// An isolated storage location; cheap to clone, valid while the harness lives.
    type Storage: Clone + Debug + Send + Sync + 'static;

    /// Creates a fresh, empty, isolated storage.
    fn storage(&self) -> impl Future<Output = anyhow::Result<Self::Storage>> + Send;

    /// Opens a backend instance on `storage` (call it again for a second "process").
    fn open(
        &self,
        storage: &Self::Storage,
    ) -> impl Future<Output = anyhow::Result<Self::Backend>> + Send;

    /// The spec a child process opens the same storage with (`sqlite:<path>`).
    fn spec(&self, storage: &Self::Storage) -> String;

    /// The storage named by a spec from [`Harness::spec`], if this harness understands it.
    fn parse_spec(&self, spec: &str) -> Option<Self::Storage>;

    /// The `edubus-conformance-worker` binary multi-process cases start.
    fn worker_binary(&self) -> Option<PathBuf>;

    /// Events the multi-process load case publishes (over 1,000 keys). A backend whose every
    /// settlement is a network transaction may ask for fewer, so the case fits its time limit
    /// on two cores; every key still sees many events in a row.
    fn load_events(&self) -> u64 {
        100_000
    }

    /// Work that inserts an observation in the settlement's transaction.
    fn record(&self, subscription: &str, key: &str, seq: u64, event_id: &str) -> Work<Self>;

    /// Work that inserts an observation and then fails, so its transaction must roll back.
    fn record_then_fail(
        &self,
        subscription: &str,
        key: &str,
        seq: u64,
        event_id: &str,
    ) -> Work<Self>;

    /// Every committed observation of `storage`, in commit (insertion) order.
    fn observations(
        &self,
        storage: &Self::Storage,
    ) -> impl Future<Output = anyhow::Result<Vec<Observation>>> + Send;

    /// How many distinct events of `storage` have an observation (a cheap progress probe).
    fn observed_events(
        &self,
        storage: &Self::Storage,
    ) -> impl Future<Output = anyhow::Result<u64>> + Send;

    /// The audit trail of `storage`, oldest first.
    fn audit(
        &self,
        storage: &Self::Storage,
    ) -> impl Future<Output = anyhow::Result<Vec<AuditRecord>>> + Send;

    /// A fresh storage and a backend instance on it.
    fn backend(
        &self,
    ) -> impl Future<Output = anyhow::Result<(Self::Storage, Self::Backend)>> + Send {
        async {
            let storage = self.storage().await?;
            let backend = self.open(&storage).await?;
            Ok((storage, backend))
        }
    }
}
