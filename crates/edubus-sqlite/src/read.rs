//! The reader pool: read-only connections used from `spawn_blocking`, so no SQLite call runs
//! on a tokio worker. In WAL mode readers never block the writer and see committed data only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use edubus_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::config::SqliteConfig;
use crate::error::closed;
use crate::schema::open_reader;
use crate::writer::exec;

/// A bounded pool of reader connections, opened lazily.
pub(crate) struct Readers {
    config: SqliteConfig,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    closed: AtomicBool,
}

impl Readers {
    /// A pool of at most `config.readers` connections.
    pub(crate) fn new(config: SqliteConfig) -> Self {
        let permits = Semaphore::new(config.readers);
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits,
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `read` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(&self, read: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| closed())?;
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let config = self.config.clone();
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&config)?,
            };
            let out = read(&conn);
            Ok::<_, Error>((conn, out))
        })
        .await
        .map_err(|e| Error::internal("a SQLite read task failed", e))??;
        if !self.closed.load(Ordering::Acquire)
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(conn);
        }
        out
    }

    /// Like [`Readers::run`], inside one read transaction: every query sees the same snapshot.
    pub(crate) async fn snapshot<T, F>(&self, read: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(|conn| {
            exec(conn, "BEGIN DEFERRED")?;
            let out = read(conn);
            // End the read transaction even when the read failed: the connection is reused.
            let ended = exec(conn, "COMMIT");
            let out = out?;
            ended.map(|()| out)
        })
        .await
    }

    /// Closes every pooled connection; later reads fail with `Unavailable`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
