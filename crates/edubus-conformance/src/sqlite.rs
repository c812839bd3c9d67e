//! The harness of the embedded SQLite backend: one database file per storage, in a temporary
//! directory owned by the harness.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use edubus_sqlite::rusqlite::{Connection, OpenFlags, params};
use edubus_sqlite::{SqliteBackend, SqliteConfig, SqliteWork};
use tempfile::TempDir;

use crate::harness::{AuditRecord, Harness, Observation};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS conformance_observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conformance_observations_event ON conformance_observations (event_id)";

const INSERT: &str = "INSERT INTO conformance_observations (subscription, key, seq, event_id) VALUES (?1, ?2, ?3, ?4)";

/// Runs the suite on [`SqliteBackend`]; storages are files in a temporary directory.
#[derive(Debug, Default)]
pub struct SqliteHarness {
    root: OnceLock<TempDir>,
    next: AtomicU32,
    worker: Option<PathBuf>,
}

/// One SQLite database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteStorage {
    /// The database file.
    pub path: PathBuf,
}

impl SqliteHarness {
    /// A harness whose multi-process cases start `worker` (the `edubus-conformance-worker`).
    pub fn new(worker: impl Into<PathBuf>) -> Self {
        Self {
            worker: Some(worker.into()),
            ..Self::default()
        }
    }

    /// The configuration every instance opens with: short polls, patient locks.
    pub fn config(path: &Path) -> SqliteConfig {
        SqliteConfig::default()
            .with_path(path)
            .with_poll_interval(Duration::from_millis(2))
            .with_busy_timeout(Duration::from_secs(30))
    }

    fn root(&self) -> anyhow::Result<&Path> {
        if self.root.get().is_none() {
            let dir = tempfile::Builder::new()
                .prefix("edubus-conformance-")
                .tempdir()?;
            let _ = self.root.set(dir);
        }
        Ok(self.root.get().context("temporary directory")?.path())
    }
}

impl Harness for SqliteHarness {
    type Backend = SqliteBackend;
    type Storage = SqliteStorage;

    async fn storage(&self) -> anyhow::Result<SqliteStorage> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.root()?.join(format!("s{n}")).join("edubus.db");
        Ok(SqliteStorage { path })
    }

    async fn open(&self, storage: &SqliteStorage) -> anyhow::Result<SqliteBackend> {
        let backend = SqliteBackend::open(Self::config(&storage.path)).await?;
        let path = storage.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.execute_batch(CREATE)
        })
        .await??;
        Ok(backend)
    }

    fn spec(&self, storage: &SqliteStorage) -> String {
        format!("sqlite:{}", storage.path.display())
    }

    fn parse_spec(&self, spec: &str) -> Option<SqliteStorage> {
        let path = spec.strip_prefix("sqlite:")?;
        Some(SqliteStorage { path: path.into() })
    }

    fn worker_binary(&self) -> Option<PathBuf> {
        self.worker.clone()
    }

    fn record(&self, subscription: &str, key: &str, seq: u64, event_id: &str) -> SqliteWork {
        recorder(subscription, key, seq, event_id, false)
    }

    fn record_then_fail(
        &self,
        subscription: &str,
        key: &str,
        seq: u64,
        event_id: &str,
    ) -> SqliteWork {
        recorder(subscription, key, seq, event_id, true)
    }

    async fn observations(&self, storage: &SqliteStorage) -> anyhow::Result<Vec<Observation>> {
        let path = storage.path.clone();
        Ok(tokio::task::spawn_blocking(move || read_observations(&path)).await??)
    }

    async fn observed_events(&self, storage: &SqliteStorage) -> anyhow::Result<u64> {
        let path = storage.path.clone();
        let count = tokio::task::spawn_blocking(move || {
            reader(&path)?.query_row(
                "SELECT count(DISTINCT event_id) FROM conformance_observations",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await??;
        Ok(u64::try_from(count)?)
    }

    async fn audit(&self, storage: &SqliteStorage) -> anyhow::Result<Vec<AuditRecord>> {
        let path = storage.path.clone();
        Ok(tokio::task::spawn_blocking(move || read_audit(&path)).await??)
    }
}

fn recorder(subscription: &str, key: &str, seq: u64, event_id: &str, fail: bool) -> SqliteWork {
    let row = (
        subscription.to_owned(),
        key.to_owned(),
        i64::try_from(seq).unwrap_or(i64::MAX),
        event_id.to_owned(),
    );
    Box::new(move |tx| {
        tx.execute(INSERT, params![row.0, row.1, row.2, row.3])?;
        if fail {
            return Err("the handler's transactional work failed on purpose".into());
        }
        Ok(Vec::new())
    })
}

fn reader(path: &Path) -> edubus_sqlite::rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

fn read_observations(path: &Path) -> edubus_sqlite::rusqlite::Result<Vec<Observation>> {
    let conn = reader(path)?;
    let mut stmt = conn.prepare(
        "SELECT subscription, key, seq, event_id FROM conformance_observations ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Observation {
            subscription: row.get(0)?,
            key: row.get(1)?,
            seq: u64::try_from(row.get::<_, i64>(2)?).unwrap_or_default(),
            event_id: row.get(3)?,
        })
    })?;
    rows.collect()
}

fn read_audit(path: &Path) -> edubus_sqlite::rusqlite::Result<Vec<AuditRecord>> {
    let conn = reader(path)?;
    let mut stmt = conn.prepare("SELECT actor, action, subject FROM audit ORDER BY id")?;
    let rows = stmt.query_map([], |row| {
        Ok(AuditRecord {
            actor: row.get(0)?,
            action: row.get(1)?,
            subject: row.get(2)?,
        })
    })?;
    rows.collect()
}
