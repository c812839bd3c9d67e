#![doc = include_str!("../README.md")]

mod append;
mod audit;
mod checkpoint;
mod clock;
pub mod config;
mod counts;
mod deliver;
mod dlq;
pub mod error;
mod handoff;
mod inspect;
mod keys;
mod lease;
mod notify;
mod read;
pub mod schema;
mod settle;
mod store;
mod subs;
mod transport;
mod trim;
mod writer;

use std::sync::Arc;

use edubus_core::{Error, Result};
pub use rusqlite;

pub use config::{Durability, SqliteConfig};
pub use edubus_core::AuditEntry;
pub use store::DEFAULT_READ_LIMIT;
pub use transport::SqliteWork;
pub use writer::WriterStats;

use checkpoint::Checkpointer;
use handoff::Handoff;
use notify::Notifier;
use read::Readers;
use writer::{Writer, WriterState};

/// The embedded backend: event store, transport, dead-letter queue, inbox and audit trail in
/// one SQLite file. Cheap to clone; the last clone dropped stops the writer thread.
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: SqliteConfig,
    // Field order is drop order: the writer flushes before the other threads stop.
    writer: Writer,
    checkpointer: Checkpointer,
    notifier: Notifier,
    readers: Readers,
    handoff: Arc<Handoff>,
}

impl SqliteBackend {
    /// Opens (or creates) the database: creates its directory, sets WAL, applies migrations
    /// and starts the writer thread.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        config.check()?;
        let inner = tokio::task::spawn_blocking(move || Inner::open(config))
            .await
            .map_err(|e| Error::internal("opening the SQLite backend failed", e))??;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Flushes queued writes and stops the writer; later calls fail with `Unavailable`.
    /// Idempotent.
    pub async fn close(&self) {
        self.inner.writer.stop().await;
        self.inner.readers.close();
        let inner = Arc::clone(&self.inner);
        let _ = tokio::task::spawn_blocking(move || {
            inner.checkpointer.stop();
            inner.notifier.stop();
        })
        .await;
    }

    /// The configuration in force; `partitions` is the value stored in the file.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// Commands and transactions of the writer thread so far (commands > transactions when
    /// commits were grouped).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// The newest `limit` entries of the audit trail, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.readers()
            .run(move |conn| audit::latest(conn, limit))
            .await
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    pub(crate) fn readers(&self) -> &Readers {
        &self.inner.readers
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    pub(crate) fn handoff(&self) -> &Handoff {
        &self.inner.handoff
    }

    pub(crate) fn partitions_stored(&self) -> u32 {
        self.inner.config.partitions
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("config", &self.inner.config)
            .field("writer", &self.inner.writer.stats())
            .finish()
    }
}

impl Inner {
    /// Blocking part of [`SqliteBackend::open`].
    fn open(mut config: SqliteConfig) -> Result<Self> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                let message = format!("could not create the data directory {}", dir.display());
                Error::unavailable(message, e)
            })?;
        }
        let mut conn = schema::open_writer(&config)?;
        schema::migrate(&mut conn)?;
        config.partitions = schema::stored_partitions(&conn, config.partitions)?;
        let head = store::head_position(&conn)?;
        let notifier = Notifier::start(&config, head)?;
        let wal_full = checkpoint::WalFull::default();
        let checkpointer = Checkpointer::start(&config, Arc::clone(&wal_full))?;
        let state = WriterState {
            head,
            partitions: config.partitions,
            poisoned: false,
            keys_upto: keys::bounds(&conn, config.partitions)?,
            key_round: None,
            seen: keys::Seen::new(head),
            touched: Vec::new(),
            foreign: false,
            collecting: false,
            fresh: Vec::new(),
        };
        let handoff = Arc::new(Handoff::default());
        let writer = Writer::spawn(
            conn,
            state,
            config.group_commit_max,
            notifier.sender(),
            Arc::clone(&handoff),
            wal_full,
        )?;
        let readers = Readers::new(config.clone());
        Ok(Self {
            config,
            writer,
            checkpointer,
            notifier,
            readers,
            handoff,
        })
    }
}
