//! WAL checkpoints off the writer's path. The writer connection runs with
//! `wal_autocheckpoint = 0`: copying WAL pages back into the database (and its fsync) would
//! otherwise stall a group commit every few megabytes. This thread checkpoints `PASSIVE`ly
//! (never blocking the writer) after commits. A busy writer keeps them from ever completing
//! (it appends while they copy), so the log would only grow: past `wal_restart_frames`
//! ([`SqliteConfig`]) this thread asks the writer to run a passive checkpoint itself between
//! two groups, which copies the few frames left and lets its next transaction start the log
//! over. (A `RESTART` checkpoint from this thread did the same by taking the writer lock, and
//! held it while it copied every frame since the last pass: 100-300 ms without a commit under
//! a publish burst.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use edubus_core::{Error, Result};
use rusqlite::Connection;

use crate::config::SqliteConfig;
use crate::error::Db;
use crate::schema::open_reader;

/// Time between checks for new commits.
const INTERVAL: Duration = Duration::from_millis(100);
/// Time between checks while the log is long: the writer's own pass, when the log is full,
/// copies and syncs what was appended since this thread's last pass.
const BUSY_INTERVAL: Duration = Duration::from_millis(20);
/// Set by the checkpoint thread when the WAL outgrew `wal_restart_frames`; the writer thread
/// takes it and runs a passive checkpoint between two groups.
pub(crate) type WalFull = Arc<AtomicBool>;

/// The checkpoint thread.
pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts the thread with its own connection.
    pub(crate) fn start(config: &SqliteConfig, wal_full: WalFull) -> Result<Self> {
        let conn = open_reader(config)?;
        // The reader settings make a connection query-only; a checkpoint is not a query.
        conn.execute_batch("PRAGMA query_only = OFF").db()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let restart = i64::from(config.wal_restart_frames);
        let db = std::fs::File::open(&config.path).map_err(|e| {
            let message = format!("cannot open {} to sync it", config.path.display());
            Error::unavailable(message, e)
        })?;
        let thread = std::thread::Builder::new()
            .name("edubus-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &db, &flag, &wal_full, restart))
            .map_err(|e| Error::internal("could not start the SQLite checkpoint thread", e))?;
        Ok(Self {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread after a last passive checkpoint; idempotent.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn checkpoint_loop(
    conn: &Connection,
    db: &std::fs::File,
    stop: &AtomicBool,
    wal_full: &AtomicBool,
    restart: i64,
) {
    let mut seen = data_version(conn).unwrap_or(0);
    let mut interval = INTERVAL;
    loop {
        std::thread::park_timeout(interval);
        let stopping = stop.load(Ordering::Acquire);
        if let Ok(version) = data_version(conn)
            && version != seen
        {
            seen = version;
            // Errors (a checkpoint of another process running) are retried next round.
            if let Ok(log) = checkpoint(conn, "PASSIVE") {
                // A pass overtaken by the writer's appends leaves the pages it copied unsynced
                // (SQLite syncs the database only after a complete pass), and the writer's
                // complete pass would then wait for all of them: once the log grows, sync them
                // here, off its path. A small log's passes complete and sync by themselves.
                let long = log >= restart / 8;
                if long {
                    let _ = db.sync_data();
                }
                interval = if long { BUSY_INTERVAL } else { INTERVAL };
                if log >= restart {
                    wal_full.store(true, Ordering::Release);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Runs a checkpoint; returns the frames in the WAL before it.
pub(crate) fn checkpoint(conn: &Connection, mode: &str) -> Result<i64> {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    conn.query_row(&sql, [], |row| row.get::<_, i64>(1)).db()
}

fn data_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
        .db()
}
