//! Commit notifications: the writer publishes the head position on a watch channel after each
//! commit; a watcher thread polls `PRAGMA data_version` every `poll_interval` while someone
//! waits, to see appends of other processes on the same file. Their other writes (a replay
//! queued by the CLI) reach waiting consumers at their idle timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use edubus_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::watch;

use crate::config::SqliteConfig;
use crate::error::Db;
use crate::schema::open_reader;
use crate::store::head_position;

/// How long the watcher sleeps when nobody waits (it is woken when someone starts waiting).
const IDLE_PARK: Duration = Duration::from_millis(500);

/// The log head, overall and per partition, as seen by this process.
///
/// The writer publishes the partitions its commits touched, so a consumer waiting on one
/// partition is not woken by appends to the others; commits of other processes, seen by the
/// watcher, wake every partition.
pub(crate) struct Heads {
    all: watch::Sender<u64>,
    parts: Vec<watch::Sender<u64>>,
}

impl Heads {
    fn new(head: u64, partitions: u32) -> Self {
        let parts = (0..partitions.max(1))
            .map(|_| watch::Sender::new(head))
            .collect();
        Self {
            all: watch::Sender::new(head),
            parts,
        }
    }

    /// After a commit: the new head and the highest position appended to each touched partition.
    pub(crate) fn publish(&self, head: u64, touched: &[(u32, u64)]) {
        raise(&self.all, head);
        for (partition, position) in touched {
            if let Some(part) = self.parts.get(*partition as usize) {
                raise(part, *position);
            }
        }
    }

    /// Appends of another process up to `head`: any partition may have changed.
    pub(crate) fn publish_all(&self, head: u64) {
        raise(&self.all, head);
        self.parts.iter().for_each(|p| raise(p, head));
    }

    fn channel(&self, partition: Option<u32>) -> &watch::Sender<u64> {
        partition
            .and_then(|p| self.parts.get(p as usize))
            .unwrap_or(&self.all)
    }
}

fn raise(channel: &watch::Sender<u64>, to: u64) {
    channel.send_if_modified(|h| (*h < to).then(|| *h = to).is_some());
}

/// The head channels and the thread that feeds them other processes' commits.
pub(crate) struct Notifier {
    head: Arc<Heads>,
    flags: Arc<Flags>,
    thread: Mutex<Option<JoinHandle<()>>>,
    waker: std::thread::Thread,
}

/// State shared with the watcher thread.
struct Flags {
    waiters: AtomicUsize,
    stop: AtomicBool,
}

impl Notifier {
    /// Starts the watcher with its own connection; `head` is the position at open.
    pub(crate) fn start(config: &SqliteConfig, head: u64) -> Result<Self> {
        let head = Arc::new(Heads::new(head, config.partitions));
        let flags = Arc::new(Flags {
            waiters: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let conn = open_reader(config)?;
        let (sender, shared, interval) =
            (Arc::clone(&head), Arc::clone(&flags), config.poll_interval);
        let thread = std::thread::Builder::new()
            .name("edubus-sqlite-watch".into())
            .spawn(move || watch_loop(&conn, &sender, &shared, interval))
            .map_err(|e| Error::internal("could not start the SQLite watcher thread", e))?;
        let waker = thread.thread().clone();
        Ok(Self {
            head,
            flags,
            thread: Mutex::new(Some(thread)),
            waker,
        })
    }

    /// The channels the writer publishes its commits on.
    pub(crate) fn sender(&self) -> Arc<Heads> {
        Arc::clone(&self.head)
    }

    /// Returns once the head of `partition` (of the log when `None`) is above `after`, or
    /// after `timeout`.
    pub(crate) async fn wait(&self, partition: Option<u32>, after: u64, timeout: Duration) {
        let mut rx = self.head.channel(partition).subscribe();
        if *rx.borrow_and_update() > after {
            return;
        }
        let _waiting = Waiting::new(&self.flags);
        self.waker.unpark();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|head| *head > after)).await;
    }

    /// Stops the watcher thread; idempotent.
    pub(crate) fn stop(&self) {
        self.flags.stop.store(true, Ordering::Release);
        self.waker.unpark();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a Flags);

impl<'a> Waiting<'a> {
    fn new(flags: &'a Flags) -> Self {
        flags.waiters.fetch_add(1, Ordering::AcqRel);
        Self(flags)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

fn watch_loop(conn: &Connection, head: &Heads, flags: &Flags, interval: Duration) {
    let mut seen = data_version(conn).unwrap_or(0);
    while !flags.stop.load(Ordering::Acquire) {
        if flags.waiters.load(Ordering::Acquire) == 0 {
            std::thread::park_timeout(IDLE_PARK);
            continue;
        }
        if let Ok(version) = data_version(conn)
            && version != seen
        {
            seen = version;
            // Most commits are this process's own, already published per partition by the
            // writer: only a head beyond what was published wakes every partition.
            if let Ok(now) = head_position(conn)
                && now > *head.all.borrow()
            {
                head.publish_all(now);
            }
        }
        std::thread::park_timeout(interval);
    }
}

/// Changes whenever another connection commits to the file.
fn data_version(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut st| st.query_row([], |row| row.get(0)))
        .db()
}
